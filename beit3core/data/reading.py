"""Reading datasets: headers, rows, images, and sample streams sharded by rank and loader worker.

Works on raw datasets (image fields are relative file paths) and validated ones (image fields are
`shards/<file>.tar#<member>`), local or on S3.
"""

from __future__ import annotations

import io as _pyio
import json
import random
import re
import struct
import threading
from collections.abc import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from beit3core import io, publish
from beit3core.data import formats
from beit3core.data.names import check_inside
from beit3core.data.shards import ShardReader, iter_tar
from beit3core.errors import UserError

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_READERS: dict[str, ShardReader] = {}
_READERS_LOCK = threading.Lock()


def read_header(uri: str) -> dict:
    """The dataset's `dataset.json` (kind, name, splits, source, vocabularies, validation info)."""
    where = io.join(uri, formats.HEADER)
    if not io.exists(where):
        raise UserError(f"{where}: no such file (not a dataset folder)")
    publish.check_complete(uri, what="dataset")  # a stage output missing files is refused (once per process)
    return formats.check_header(io.read_json(check_inside(uri, where)), where)


def splits(uri: str) -> list[str]:
    return list(read_header(uri)["splits"])


def _split_uri(uri: str, split: str, header: dict | None = None) -> str:
    header = header or read_header(uri)
    if split not in header["splits"]:
        raise UserError(f"{io.join(uri, formats.HEADER)}: no split {split!r} (splits: {', '.join(header['splits'])})")
    return io.join(uri, formats.split_file(split))


def _read_split(where: str) -> list[dict]:
    try:
        return io.read_jsonl(where)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise UserError(f"{where}: cannot read the split file ({e.strerror or type(e).__name__})") from None


def read_rows(uri: str, split: str) -> list[dict]:
    """All rows of a split, as written (image fields are paths or shard references)."""
    return _read_split(check_inside(uri, _split_uri(uri, split)))


def shard_reader(uri: str) -> ShardReader:
    """The process-wide cached random-access reader for a dataset's shards."""
    with _READERS_LOCK:
        reader = _READERS.get(uri)
        if reader is None:
            reader = _READERS[uri] = ShardReader(uri)
        return reader


def clear_cache(prefix: str | None = None) -> None:
    """Forget cached shard indexes (all, or those of datasets under `prefix`): call after rewriting a dataset."""
    with _READERS_LOCK:
        for uri in [u for u in _READERS if prefix is None or str(u).startswith(str(prefix))]:
            del _READERS[uri]


def _check_relative(uri: str, ref: str) -> None:
    if not isinstance(ref, str) or not ref or ref.startswith(("/", "\\")) or "://" in ref or \
            ".." in ref.replace("\\", "/").split("/"):
        raise UserError(f"{uri}: image reference {ref!r} is not a path inside the dataset")


def image_bytes(uri: str, ref: str) -> bytes:
    """The encoded bytes of the image a row field refers to."""
    _check_relative(uri, ref)
    if formats.is_shard_ref(ref):
        shard, member = formats.parse_shard_ref(ref)
        return shard_reader(uri).read(shard, member)
    return io.read_bytes(check_inside(uri, io.join(uri, ref)))


def stable_message(e: BaseException) -> str:
    """An exception's text on one line, without memory addresses (Pillow names `<_io.BytesIO object at 0x...>`),
    so that the same input gives the same message (and quarantine reason) on every run."""
    return _ADDRESS.sub("", " ".join(str(e).split()))


def upright(img) -> None:
    """Apply the EXIF orientation (a phone photo's rotation) in place, as every viewer does, so training and
    evaluation see what the annotators saw. Corrupt EXIF raises ValueError (validation quarantines such images)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except (struct.error, TypeError, KeyError, IndexError) as e:  # what Pillow's EXIF parser raises on bad tags
        raise ValueError(f"unreadable EXIF orientation ({type(e).__name__}: {stable_message(e)})") from None


# Where Pillow's Image.getexif finds an orientation (EXIF as read, PNG's hex text chunk, XMP); TIFF-like images
# carry theirs in tag_v2.
_ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _may_hold_orientation(img) -> bool:
    """False when the decoded image has nowhere to hold an orientation: exif_transpose would then leave it as it is,
    and skipping it saves parsing per image in the training loader."""
    return hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_INFO)


def decode_image(data: bytes, where: str = "image"):
    """Decode image bytes into an upright (EXIF orientation applied) RGB PIL image."""
    try:
        img = Image.open(_pyio.BytesIO(data))
        img.load()
        if _may_hold_orientation(img):
            upright(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{where}: cannot decode image ({stable_message(e)})") from None
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(uri: str, ref: str):
    """The image a row field refers to, as an RGB PIL image."""
    return decode_image(image_bytes(uri, ref), f"{uri}#{ref}" if not formats.is_shard_ref(ref) else f"{uri}/{ref}")


def image_fields(header: dict) -> tuple[str, ...]:
    return formats.kind_spec(header["kind"]).image_fields


def _block(n: int, part: int, parts: int) -> tuple[int, int]:
    return n * part // parts, n * (part + 1) // parts


def iter_samples(uri: str, split: str, *, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, seed: int | None = None) -> Iterator[dict]:
    """Rows of one split plus `"images": {field: bytes}`, for this (rank, worker) only.

    The split is cut into `world_size * num_workers` contiguous blocks (sizes differ by at most one row), so
    together the consumers see every row exactly once. A validated dataset is streamed shard by shard (one
    sequential read per shard); a raw one reads image files. `seed` shuffles the order of shards and of rows
    within each shard (pass seed + epoch for a new order each epoch).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"iter_samples: rank {rank} is outside world size {world_size}")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise UserError(f"iter_samples: worker {worker} is outside {num_workers} workers")
    header = read_header(uri)
    rows = _read_split(check_inside(uri, _split_uri(uri, split, header)))
    start, end = _block(len(rows), rank * num_workers + worker, world_size * num_workers)
    rows = rows[start:end]
    fields = image_fields(header)
    rng = random.Random(seed) if seed is not None else None
    if not fields:
        if rng:
            rng.shuffle(rows)
        for row in rows:
            yield {**row, "images": {}}
        return

    groups: dict[str | None, list[dict]] = {}
    for row in rows:
        ref = row.get(fields[0])
        groups.setdefault(formats.parse_shard_ref(ref)[0] if formats.is_shard_ref(ref) else None, []).append(row)
    order = list(groups)
    if rng:
        rng.shuffle(order)
    reader = shard_reader(uri)
    for shard in order:
        group = groups[shard]
        if rng:
            rng.shuffle(group)
        members: dict[str, bytes] = {}
        if shard is not None:
            wanted = {formats.parse_shard_ref(r[f])[1] for r in group for f in fields
                      if formats.is_shard_ref(r.get(f)) and formats.parse_shard_ref(r[f])[0] == shard}
            total = len(reader.index(shard)) // 3 or 1
            if len(wanted) * 4 >= total:  # worth one sequential read of the whole shard
                members = {name: data for name, data in iter_tar(check_inside(uri, io.join(uri, shard)))
                           if name in wanted}
        for row in group:
            images = {}
            for f in fields:
                ref = row.get(f)
                if formats.is_shard_ref(ref) and formats.parse_shard_ref(ref)[0] == shard \
                        and formats.parse_shard_ref(ref)[1] in members:
                    images[f] = members[formats.parse_shard_ref(ref)[1]]
                else:
                    images[f] = image_bytes(uri, ref)
            yield {**row, "images": images}


def load_split(uri: str, split: str, *, decode: bool = False) -> list[dict]:
    """A whole (small) split in memory: rows plus `"images"` as bytes, or as RGB PIL images with decode=True."""
    out = list(iter_samples(uri, split))
    if decode:
        for row in out:
            row["images"] = {f: decode_image(b, f"{uri}: row {row.get('id')!r}") for f, b in row["images"].items()}
    return out


def vocabulary(uri: str, key: str) -> list[str]:
    """A vocabulary list from dataset.json (`labels`, `answers`)."""
    header = read_header(uri)
    if key not in header:
        raise UserError(f"{io.join(uri, formats.HEADER)}: missing field {key!r}")
    return list(header[key])


def dumps_row(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=True)
