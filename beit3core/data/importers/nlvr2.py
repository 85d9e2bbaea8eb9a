"""nlvr2: the NLVR2 JSON-lines files with their image folders.

    SRC/train.json   {"identifier": "train-10171-0-0", "sentence": "...", "label": "True", "directory": "69", ...}
    SRC/images/train/69/train-10171-0-img0.png, ...img1.png   (dev and test1 images: images/dev/, images/test1/)

Splits: train, dev -> val, test1 -> test. The two image names come from the identifier (`<split>-<set>-<pair>`
+ `-img0.png` / `-img1.png`); labels "True"/"False" become booleans (anything else is kept for validation).
"""

from __future__ import annotations

import posixpath

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import (
    ImageCopier,
    decode,
    name_of,
    read_source,
    split_order,
    write_raw,
)
from beit3core.errors import UserError

SPLIT_NAMES = {"train": "train", "dev": "val", "test1": "test", "test2": "test2"}


def _image_dir(src: str, split: str) -> str:
    return "images/" + split if io.isdir(io.join(src, "images", split)) else split


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder (expected train.json, dev.json, test1.json)")
    files: dict[str, str] = {}
    for u in io.ls(src):
        stem, _, ext = posixpath.basename(u).rpartition(".")
        if ext in ("json", "jsonl") and stem in SPLIT_NAMES:
            if stem in files:  # train.json and train.jsonl: one would silently replace the other
                raise UserError(f"{src}: both {posixpath.basename(files[stem])} and {posixpath.basename(u)} "
                                f"hold split {stem!r}; keep one")
            files[stem] = u
    if not files:
        raise UserError(f"{src}: no train.json / dev.json / test1.json")
    copier = ImageCopier(src, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    for orig, uri in sorted(files.items()):
        split = SPLIT_NAMES[orig]
        out = rows.setdefault(split, [])
        for n, rec in io.parse_jsonl(decode(read_source(src, uri)), uri):
            if not isinstance(rec, dict):
                raise UserError(f"{uri}: row {n}: expected a JSON object, got {type(rec).__name__}")
            ident = rec.get("identifier", f"{orig}-{n}")
            if not isinstance(ident, str):
                # the image names are built from it: a number or a list would name images it never meant
                raise UserError(f"{uri}: row {n}: field 'identifier': expected a string, got {type(ident).__name__}")
            sub = rec.get("directory", "")
            if isinstance(sub, int) and not isinstance(sub, bool):
                sub = str(sub)  # the released files hold the folder number as a string or an integer
            if not isinstance(sub, str):
                raise UserError(f"{uri}: row {n}: field 'directory': expected a string, got {type(sub).__name__}")
            label = rec.get("label")
            label = {"true": True, "false": False}.get(label.lower(), label) if isinstance(label, str) else label
            base = ident.rsplit("-", 1)[0]
            folder = _image_dir(src, orig)
            left = posixpath.join(folder, sub, f"{base}-img0.png")
            right = posixpath.join(folder, sub, f"{base}-img1.png")
            out.append({"id": ident, "image_left": copier.ref(left), "image_right": copier.ref(right),
                        "sentence": rec.get("sentence"), "label": label})
    copier.copy_all()
    order = split_order(rows)
    header = formats.make_header("nlvr2", name_of(src, opts, "nlvr2"), order, {"format": "nlvr2"})
    return write_raw(stage, header, {s: rows[s] for s in order})
