"""coco-karpathy and flickr30k: Karpathy-split caption files (dataset_coco.json / dataset_flickr30k.json).

    {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
      "imgid": 0, "cocoid": 391895, "split": "test", "sentences": [{"raw": "A man ...", "sentid": 770337}]}]}

Images are looked up at `<images>/<filepath>/<filename>` (`--images`, default SRC's folder; Flickr30k
entries have no filepath). One row per sentence; the `restval` split joins `train` (the Karpathy
convention). Kind `captioning` by default (`--kind retrieval` or `pairs` for the same rows).
"""

from __future__ import annotations

import posixpath

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import (
    ImageCopier,
    load_json,
    name_of,
    split_order,
    write_raw,
)
from beit3core.data.names import validate_name
from beit3core.errors import UserError

FILES = {"coco-karpathy": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}


def _locate(src: str, fmt: str) -> tuple[str, str]:
    """(the JSON file, its folder)."""
    if io.isdir(src):
        for name in (FILES[fmt], *FILES.values()):
            if io.exists(io.join(src, name)):
                return io.join(src, name), src
        raise UserError(f"{src}: no {FILES[fmt]} in this folder")
    parent = posixpath.dirname(str(src).rstrip("/")) if io.is_remote(src) else __import__("os").path.dirname(src)
    return src, parent or "."


def _image_path(filepath, filename) -> object:
    """`<filepath>/<filename>`; a value of the wrong type is kept as it is for validation to quarantine the rows."""
    if filepath in (None, ""):
        return filename
    if not isinstance(filepath, str):
        return filepath
    return posixpath.join(filepath, filename) if isinstance(filename, str) else filename


def convert(src: str, stage: str, opts: dict) -> dict:
    fmt = opts["format"]
    path, folder = _locate(src, fmt)
    doc = load_json(path, root=src if path != src else None)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise UserError(f"{path}: expected an object with an 'images' list (Karpathy split format)")
    kind = opts.get("kind") or "captioning"
    images_root = opts.get("images") or folder
    if fmt == "flickr30k" and not opts.get("images") and io.isdir(io.join(folder, "flickr30k-images")):
        images_root = io.join(folder, "flickr30k-images")
    copier = ImageCopier(images_root, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    for n, entry in enumerate(doc["images"]):
        where = f"{path}: images[{n}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object, got {type(entry).__name__}")
        split = entry.get("split", "train")
        split = "train" if split == "restval" else validate_name(split, what=f"{where}: field 'split'")
        sentences = entry.get("sentences", [])
        if not isinstance(sentences, list):
            # a string here would otherwise become one caption per character
            raise UserError(f"{where}: field 'sentences': expected a list, got {type(sentences).__name__}")
        image = copier.ref(_image_path(entry.get("filepath"), entry.get("filename")))
        image_id = entry.get("cocoid", entry.get("imgid", n))
        for k, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise UserError(f"{where}: sentences[{k}]: expected an object, got {type(sent).__name__}")
            row = {"id": sent.get("sentid", f"{image_id}-{k}"), "image": image, "caption": sent.get("raw")}
            if kind != "pairs":
                row["image_id"] = image_id
            rows.setdefault(split, []).append(row)
    copier.copy_all()
    order = split_order(rows) or ["train"]
    rows = {s: rows.get(s, []) for s in order}
    header = formats.make_header(kind, name_of(folder, opts, fmt), order,
                                 {"format": fmt, "file": posixpath.basename(str(path))})
    return write_raw(stage, header, rows)
