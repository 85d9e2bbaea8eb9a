"""Writing a validated dataset: the clean rows, their images packed into WebDataset shards, dataset.json."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from beit3core import io
from beit3core.data import formats
from beit3core.data.shards import ShardReader, ShardWriter
from beit3core.data.validation.check import gx_value
from beit3core.data.validation.image_checks import ImageResult, read_ref
from beit3core.data.validation.report import DatasetReport
from beit3core.errors import UserError


def write_dataset(src: str, dst: str, rep: DatasetReport, *, shard_size: int, max_reject_fraction: float) -> None:
    """The validated copy of the dataset at `src` in the local folder `dst`."""
    os.makedirs(dst, exist_ok=True)
    packed = _pack(src, dst, rep, shard_size)
    header = dict(rep.table.header)
    header["validation"] = {"rows": len(rep.table), "clean": int(rep.clean.sum()),
                            "quarantined": int((~rep.clean).sum()),
                            "max_reject_fraction": max_reject_fraction, "shard_size": shard_size,
                            "shards": packed["shards"], "images": packed["images"],
                            "gx_success": rep.gx["success"] if rep.gx else None}
    header["validated"] = True
    header["source_fingerprint"] = _source_fingerprint(src, rep.table.header, rep.images)
    with open(os.path.join(dst, formats.HEADER), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True, indent=2) + "\n")


def _source_fingerprint(uri: str, header: dict, images: dict[str, ImageResult]) -> str:
    """md5 over the source metadata files and the bytes of every image checked."""
    digest = hashlib.md5()
    for name in [formats.HEADER] + [formats.split_file(s) for s in header["splits"]]:
        digest.update(name.encode() + b"\0" + hashlib.md5(io.read_bytes(io.join(uri, name))).hexdigest().encode())
    for ref in sorted(images):
        digest.update(ref.encode("utf-8", "surrogateescape") + b"\0" + images[ref].md5.encode())
    return digest.hexdigest()


def _pack(src: str, dst: str, rep: DatasetReport, shard_size: int) -> dict:
    """Write the clean rows with shard references and their images in shards; shards never span two splits."""
    t, spec = rep.table, rep.table.spec
    reader = ShardReader(src)
    writer = ShardWriter(os.path.join(dst, formats.SHARD_DIR), shard_size) if spec.image_fields else None
    packed: dict[str, str] = {}  # source ref -> shard ref: an image shared by rows is packed once
    counts = {}
    caption_field = next((tf.name for tf in spec.text_fields if tf.name == "caption"), None)
    for split in t.header["splits"]:
        out_rows = []
        for i in np.flatnonzero((t.split == split) & rep.clean):
            row = dict(t.rows[i])
            for f in spec.image_fields:
                if row[f] not in packed:
                    packed[row[f]] = _add_image(writer, src, reader, rep.images[row[f]], row[f], len(packed) + 1,
                                                row.get(caption_field, "") if caption_field else "", split)
                row[f] = packed[row[f]]
            out_rows.append(row)
        if writer:
            writer.flush()
        with open(os.path.join(dst, formats.split_file(split)), "w", encoding="utf-8") as f:
            for row in out_rows:
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n")
        counts[split] = len(out_rows)
    shards = writer.close() if writer else []
    return {"rows": counts, "shards": len(shards), "images": len(packed)}


def _add_image(writer: ShardWriter, src: str, reader: ShardReader, res: ImageResult, ref: str, key: int,
               caption: str, split: str) -> str:
    """Put one image into the current shard (its bytes from the check, else read again); its shard ref."""
    data = res.data if res.data is not None else read_ref(src, ref, reader)
    if data is None:
        raise UserError(f"{io.join(src, ref)}: disappeared during validation")
    member = writer.add(f"{key:09d}", data, res.ext, caption,
                        {"source": gx_value(ref), "width": res.width, "height": res.height, "split": split})
    res.data = None  # packed: free the bytes
    return formats.shard_ref(f"{formats.SHARD_DIR}/{writer.current}", member)
