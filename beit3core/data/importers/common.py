"""Helpers shared by the importers: tolerant decoding, image copying, writing the raw dataset."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
from concurrent.futures import ThreadPoolExecutor

from beit3core import io
from beit3core.data import formats
from beit3core.data.names import check_inside, inside_tree, validate_name
from beit3core.errors import UserError
from beit3core.progress import progress_bar

log = logging.getLogger(__name__)


def decode(data: bytes) -> str:
    """Text from bytes; bytes that are not UTF-8 survive as lone surrogates for validation to name.

    A leading byte-order mark is dropped: it is an encoding marker, not text (a BOM elsewhere is kept, and
    validation quarantines text fields that hold one)."""
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def read_source(root: str, uri: str) -> bytes:
    """The bytes of a file found inside the source folder `root`; a link that leads out of it is refused."""
    return io.read_bytes(check_inside(root, uri))


def load_json(uri: str, root: str | None = None):
    """JSON that may hold non-UTF-8 bytes inside strings (`root`: the source folder it was found in)."""
    try:
        return json.loads(decode(read_source(root, uri) if root is not None else io.read_bytes(uri)))
    except json.JSONDecodeError as e:
        raise UserError(f"{uri}: line {e.lineno}: malformed JSON ({e.msg})") from None


def is_safe(path) -> bool:
    """A relative path that stays inside its root (anything else is kept verbatim for validation)."""
    if not isinstance(path, str) or not path.strip() or "://" in path:
        return False
    p = path.replace("\\", "/")
    return not (p.startswith("/") or (len(p) > 1 and p[1] == ":") or ".." in p.split("/"))


class ImageCopier:
    """Copies images referenced by rows from SRC into `<stage>/images/`, each once, in parallel.

    `ref(rel)` returns the row value: `images/<rel>` for a safe relative path (copied if it exists; a
    missing file keeps its path so validation reports it), or `rel` verbatim when unsafe.
    """

    def __init__(self, src_root: str, stage: str, prefix: str = "images", workers: int = 8):
        self.src_root, self.stage, self.prefix, self.workers = src_root, stage, prefix, workers
        self.pending: dict[str, str] = {}

    def ref(self, rel) -> object:
        if not is_safe(rel):
            return rel
        rel = rel.replace("\\", "/")
        while rel.startswith("./"):
            rel = rel[2:]
        dst = rel if rel.startswith(self.prefix + "/") else posixpath.join(self.prefix, rel)
        self.pending.setdefault(dst, rel)
        return dst

    def copy_all(self) -> int:
        outside = []

        def one(item) -> int:
            dst, rel = item
            src = io.join(self.src_root, rel)
            try:
                fs, path = io.filesystem(src)
                if not fs.isfile(path):
                    return 0
                if not inside_tree(self.src_root, src):
                    # a link out of SRC: not copied, so validation quarantines the row as a missing image
                    outside.append(rel)
                    return 0
                target = os.path.join(self.stage, *dst.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if io.is_remote(src):
                    fs.get_file(path, target)
                else:
                    shutil.copyfile(path, target)
                return 1
            except (OSError, UnicodeError):
                return 0

        items = sorted(self.pending.items())
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            copied = sum(progress_bar(pool.map(one, items), total=len(items), desc="copy images", unit="img",
                              leave=False, mininterval=1.0))
        if outside:
            log.warning("%s: %d image(s) are symbolic links to outside the source and were not copied (first: %s)",
                        self.src_root, len(outside), min(outside))
        return copied


def write_raw(stage: str, header: dict, rows: dict[str, list[dict]]) -> dict:
    """Write `<split>.jsonl` files and dataset.json (with row counts in source.rows)."""
    header.setdefault("source", {})["rows"] = {s: len(r) for s, r in rows.items()}
    for split, split_rows in rows.items():
        with open(os.path.join(stage, formats.split_file(split)), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n" for row in split_rows)
    with open(os.path.join(stage, formats.HEADER), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True, indent=2, ensure_ascii=True) + "\n")
    return header


def name_of(src: str, opts: dict, default: str) -> str:
    """The dataset name: --name, else SRC's base name; it names folders downstream, so it must be a safe name."""
    if opts.get("name") is not None:
        return validate_name(opts["name"], what="--name")
    name = posixpath.basename(str(src).rstrip("/").replace("\\", "/")) or default
    return validate_name(name, what=f"{src}: dataset name (set one with --name)")


def split_order(names) -> list[str]:
    order = {"train": 0, "restval": 1, "val": 2, "dev": 2, "test": 3}
    return sorted(set(names), key=lambda s: (order.get(s, 9), s))
