"""imagefolder: the ImageNet layout, `SRC/<split>/<class>/<image>` or `SRC/<class>/<image>` (split train).

Becomes a `classification` dataset whose labels are the class folder names (sorted). Every file is a row;
one that is not an image is quarantined by validation, not skipped here.
"""

from __future__ import annotations

import posixpath
import re

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import ImageCopier, name_of, split_order, write_raw
from beit3core.errors import UserError

SURROGATE = re.compile("[\ud800-\udfff]")  # bytes that were not UTF-8, kept by surrogateescape

SPLITS = {"train", "val", "validation", "test", "dev"}


def _rel(base: str, uri: str) -> str:
    b = io.filesystem(base)[1]
    p = io.filesystem(uri)[1]
    return p[len(b.rstrip("/")) + 1:]


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder (expected class folders, or split folders of class folders)")
    tops = [posixpath.basename(u.rstrip("/")) for u in io.ls(src) if io.isdir(u)]
    split_dirs = [t for t in tops if t in SPLITS]
    layout = {s: io.join(src, s) for s in split_dirs} if split_dirs else {"train": src}
    copier = ImageCopier(src, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    labels = set()
    for split, root in layout.items():
        out = rows.setdefault(split, [])
        for cls in sorted(u for u in io.ls(root) if io.isdir(u)):
            label = posixpath.basename(cls.rstrip("/"))
            if label.startswith("."):
                continue
            if not label.isascii() and SURROGATE.search(label):
                # a label is vocabulary (dataset.json 'labels'), not a row value: refused, not quarantined
                raise UserError(f"{root}: class folder {label!a}: name is not valid UTF-8 (rename the folder)")
            labels.add(label)
            for f in io.ls(cls, recursive=True):
                rel = _rel(src, f)
                if posixpath.basename(rel).startswith("."):
                    continue
                out.append({"id": f"{split}/{_rel(root, f)}", "image": copier.ref(rel), "label": label})
    if not labels:
        raise UserError(f"{src}: no class folders found")
    copier.copy_all()
    order = split_order(rows)
    header = formats.make_header("classification", name_of(src, opts, "imagefolder"), order,
                                 {"format": "imagefolder"}, labels=sorted(labels))
    return write_raw(stage, header, {s: rows[s] for s in order})
