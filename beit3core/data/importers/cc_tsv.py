"""cc-tsv: Conceptual-Captions style `caption<TAB>image` files (image = a path or a URL).

SRC is a .tsv file (split `train`) or a folder of them (`train.tsv`, `val.tsv`, ...: the stem names the
split). Local paths are relative to the file's folder and are copied; URLs are not downloaded (there is no
network at run time): their rows are kept with the URL so that validation quarantines them with the reason
"remote URL not fetched". A first line `caption<TAB>url` (or `image`, `path`) is a header and skipped.
"""

from __future__ import annotations

import os
import posixpath

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import (
    ImageCopier,
    decode,
    name_of,
    split_order,
    write_raw,
)
from beit3core.data.names import check_inside, validate_name
from beit3core.errors import UserError

HEADER_WORDS = {"url", "image", "path", "image_path", "image_url", "file"}


def _files(src: str) -> list[tuple[str, str]]:
    """(split, file): the stem of each file in a folder names its split; a lone file is split `train`."""
    if io.isdir(src):
        found = [(validate_name(posixpath.basename(u).rsplit(".", 1)[0], what=f"{u}: split name"),
                  check_inside(src, u)) for u in io.ls(src) if u.endswith((".tsv", ".txt"))]
        if not found:
            raise UserError(f"{src}: no .tsv files in this folder")
        splits = [s for s, _ in found]
        for split in splits:
            if splits.count(split) > 1:  # train.tsv and train.txt: their row ids would collide
                raise UserError(f"{src}: more than one file holds split {split!r} (train.tsv, train.txt); keep one")
        return found
    return [("train", src)]


def convert(src: str, stage: str, opts: dict) -> dict:
    rows: dict[str, list[dict]] = {}
    copiers = []
    for split, uri in _files(src):
        folder = posixpath.dirname(uri) if io.is_remote(uri) else os.path.dirname(uri) or "."
        copier = ImageCopier(folder, stage, prefix=f"images/{split}", workers=opts.get("workers", 8))
        copiers.append(copier)
        out = rows.setdefault(split, [])
        for n, line in enumerate(decode(io.read_bytes(uri)).splitlines(), 1):
            if not line.strip():
                continue
            caption, tab, image = line.partition("\t")
            if n == 1 and image.strip().lower() in HEADER_WORDS:
                continue
            image = image.strip() if tab else None
            ref = image if image is None or "://" in image else copier.ref(image)
            out.append({"id": f"{split}-{n:09d}", "image": ref, "caption": caption})
    for copier in copiers:
        copier.copy_all()
    order = split_order(rows)
    header = formats.make_header("pairs", name_of(src, opts, "cc").removesuffix(".tsv"), order,
                                 {"format": "cc-tsv"})
    return write_raw(stage, header, {s: rows[s] for s in order})
