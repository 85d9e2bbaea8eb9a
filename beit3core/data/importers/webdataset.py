"""webdataset: img2dataset output (`00000.tar`, ... with `<key>.jpg`, `<key>.txt`, `<key>.json`) as it is.

The tar files are copied unchanged into `OUT/shards/` and a `pairs` dataset (split `train`, or the folder's
`<split>/` subfolders) points into them (`shards/00000.tar#<key>.jpg`); validation reads the images
straight from the shards. A sample without an image or a caption is kept (with a null field) for
validation to quarantine.
"""

from __future__ import annotations

import json
import os
import posixpath

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import decode, name_of, split_order, write_raw
from beit3core.data.names import check_inside, validate_name
from beit3core.data.shards import group_samples, iter_tar
from beit3core.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder of .tar shards")
    subdirs = [u for u in io.ls(src) if io.isdir(u) and any(x.endswith(".tar") for x in io.ls(u))]
    layout = {validate_name(posixpath.basename(u.rstrip("/")), what=f"{u}: split name"): u for u in subdirs} \
        or {"train": src}
    rows: dict[str, list[dict]] = {}
    os.makedirs(os.path.join(stage, formats.SHARD_DIR), exist_ok=True)
    for split, folder in layout.items():
        tars = [u for u in io.ls(folder) if u.endswith(".tar")]
        if not tars:
            raise UserError(f"{folder}: no .tar shards")
        out = rows.setdefault(split, [])
        for uri in tars:
            check_inside(src, uri)  # never copy a shard that a link brings in from outside SRC
            shard = posixpath.basename(uri) if len(layout) == 1 else f"{split}-{posixpath.basename(uri)}"
            fs, path = io.filesystem(uri)
            fs.get_file(path, os.path.join(stage, formats.SHARD_DIR, shard))  # streamed, unchanged
            for key, sample in group_samples(iter_tar(uri)):
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                meta = {}
                if "json" in sample:
                    try:
                        meta = json.loads(decode(sample["json"]))
                    except ValueError:
                        meta = {}
                out.append({
                    "id": meta.get("key", key) if isinstance(meta, dict) else key,
                    "image": formats.shard_ref(f"{formats.SHARD_DIR}/{shard}", f"{key}.{ext}") if ext else None,
                    "caption": decode(sample["txt"]) if "txt" in sample else None,
                })
    order = split_order(rows)
    header = formats.make_header("pairs", name_of(src, opts, "webdataset"), order, {"format": "webdataset"})
    return write_raw(stage, header, {s: rows[s] for s in order})
