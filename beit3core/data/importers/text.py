"""text: plain text files -> a `text` dataset, one row per non-empty line (or paragraph with --paragraphs).

SRC is a file (split `train`) or a folder of `.txt` files; a file named after a split (`val.txt`) goes to
that split, every other file to `train`. Bytes that are not UTF-8 are kept for validation to reject.
"""

from __future__ import annotations

import posixpath
import re

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import decode, name_of, split_order, write_raw
from beit3core.data.names import check_inside
from beit3core.errors import UserError

SPLITS = {"train", "val", "validation", "test", "dev"}


def convert(src: str, stage: str, opts: dict) -> dict:
    files = [u for u in io.ls(src, recursive=True) if not posixpath.basename(u).startswith(".")] \
        if io.isdir(src) else [src]
    if not files:
        raise UserError(f"{src}: no text files")
    rows: dict[str, list[dict]] = {}
    for uri in files:
        if uri != src:
            check_inside(src, uri)  # a file found in SRC's folder must not lead out of it
        stem = posixpath.basename(uri.replace("\\", "/")).rsplit(".", 1)[0]
        split = stem if stem in SPLITS else "train"
        text = decode(io.read_bytes(uri))
        if opts.get("paragraphs"):
            chunks = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        else:
            chunks = [line.strip() for line in text.splitlines()]
        out = rows.setdefault(split, [])
        for chunk in chunks:
            if chunk:
                out.append({"id": f"{stem}-{len(out) + 1:09d}", "text": chunk})
    order = split_order(rows)
    header = formats.make_header("text", name_of(src, opts, "text").rsplit(".", 1)[0], order, {"format": "text"})
    return write_raw(stage, header, {s: rows[s] for s in order})
