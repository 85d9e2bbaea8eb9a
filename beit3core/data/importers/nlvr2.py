"""nlvr2: the NLVR2 JSON-lines files with their image folders.

    SRC/train.json   {"identifier": "train-10171-0-0", "sentence": "...", "label": "True", "directory": "69", ...}
    SRC/images/train/69/train-10171-0-img0.png, ...img1.png   (dev and test1 images: images/dev/, images/test1/)

Splits: train, dev -> val, test1 -> test. The two image names come from the identifier (`<split>-<set>-<pair>`
+ `-img0.png` / `-img1.png`); labels "True"/"False" become booleans (anything else is kept for validation).
"""

from __future__ import annotations

import json
import posixpath

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import ImageCopier, decode, name_of, split_order, write_raw
from beit3core.errors import UserError

SPLIT_NAMES = {"train": "train", "dev": "val", "test1": "test", "test2": "test2"}


def _image_dir(src: str, split: str) -> str:
    return "images/" + split if io.isdir(io.join(src, "images", split)) else split


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder (expected train.json, dev.json, test1.json)")
    files = {posixpath.basename(u)[:-5]: u for u in io.ls(src) if u.endswith((".json", ".jsonl"))
             and posixpath.basename(u).rsplit(".", 1)[0] in SPLIT_NAMES}
    files = {k.rsplit(".", 1)[0] if k.endswith(".") else k: v for k, v in files.items()}
    if not files:
        raise UserError(f"{src}: no train.json / dev.json / test1.json")
    copier = ImageCopier(src, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    for orig, uri in sorted(files.items()):
        orig = orig.rsplit(".", 1)[0]
        split = SPLIT_NAMES[orig]
        out = rows.setdefault(split, [])
        for n, line in enumerate(decode(io.read_bytes(uri)).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{uri}: row {n}: malformed JSON ({e.msg})") from None
            ident = rec.get("identifier", f"{orig}-{n}")
            label = rec.get("label")
            label = {"true": True, "false": False}.get(label.lower(), label) if isinstance(label, str) else label
            base = ident.rsplit("-", 1)[0] if isinstance(ident, str) else str(ident)
            folder = _image_dir(src, orig)
            sub = str(rec["directory"]) if "directory" in rec else ""
            left = posixpath.join(folder, sub, f"{base}-img0.png")
            right = posixpath.join(folder, sub, f"{base}-img1.png")
            out.append({"id": ident, "image_left": copier.ref(left), "image_right": copier.ref(right),
                        "sentence": rec.get("sentence"), "label": label})
    copier.copy_all()
    order = split_order(rows)
    header = formats.make_header("nlvr2", name_of(src, opts, "nlvr2"), order, {"format": "nlvr2"})
    return write_raw(stage, header, {s: rows[s] for s in order})
