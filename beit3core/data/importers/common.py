"""Helpers shared by the importers: tolerant decoding, image copying, writing the raw dataset."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from beit3core import io
from beit3core.data import formats
from beit3core.errors import UserError


def decode(data: bytes) -> str:
    """Text from bytes; bytes that are not UTF-8 survive as lone surrogates for validation to name."""
    return data.decode("utf-8", "surrogateescape")


def load_json(uri: str):
    """JSON that may hold non-UTF-8 bytes inside strings."""
    try:
        return json.loads(decode(io.read_bytes(uri)))
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
        def one(item) -> int:
            dst, rel = item
            src = io.join(self.src_root, rel)
            try:
                fs, path = io.filesystem(src)
                if not fs.isfile(path):
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
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            copied = sum(tqdm(pool.map(one, items), total=len(items), desc="copy images", unit="img",
                              leave=False, mininterval=1.0))
        return copied


def write_raw(stage: str, header: dict, rows: dict[str, list[dict]]) -> dict:
    """Write `<split>.jsonl` files and dataset.json (with row counts in source.rows)."""
    header.setdefault("source", {})["rows"] = {s: len(r) for s, r in rows.items()}
    for split, split_rows in rows.items():
        with open(os.path.join(stage, formats.split_file(split)), "w", encoding="utf-8") as f:
            for row in split_rows:
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n")
    with open(os.path.join(stage, formats.HEADER), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True, indent=2, ensure_ascii=True) + "\n")
    return header


def name_of(src: str, opts: dict, default: str) -> str:
    return opts.get("name") or posixpath.basename(str(src).rstrip("/").replace("\\", "/")) or default


def split_order(names) -> list[str]:
    order = {"train": 0, "restval": 1, "val": 2, "dev": 2, "test": 3}
    return sorted(set(names), key=lambda s: (order.get(s, 9), s))
