"""Build a whole output folder locally, then publish it in one step.

Datasets hold thousands of small files; writing each one atomically (fsync, rename) is slow and still
leaves a half-written folder if the stage dies. Instead a stage fills a local staging folder and
`publish` moves it into place: a local output is swapped in with one rename, a remote one is uploaded
file by file through `beit3core.io` with the marker files (`dataset.json`, `validation.json`) last, so a
reader never takes a partial upload as a complete dataset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from beit3core import io

LAST = ("dataset.json", "validation.json")


@contextlib.contextmanager
def staged_dir(uri: str) -> Iterator[str]:
    """Yield a local folder; when the block succeeds its content replaces `uri`."""
    uri = str(uri)
    if io.is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="beit3-stage-") as tmp:
            yield tmp
            publish_remote(tmp, uri)
        return
    parent = os.path.dirname(os.path.abspath(uri))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(uri))}{io.TMP_MARK}{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        old = None
        if os.path.exists(uri):
            old = f"{tmp}-old"
            os.replace(uri, old)
        os.replace(tmp, uri)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_remote(local_dir: str, uri: str) -> None:
    """Upload a folder: markers last, and the old copy's markers removed first."""
    fs, path = io.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    files = []
    for root, _, names in os.walk(local_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
    # data first; then markers, deepest first, so the top-level validation.json is the very last object
    files.sort(key=lambda rel: (0, 0, rel) if os.path.basename(rel) not in LAST else (1, -rel.count("/"), rel))
    for rel in files:
        with open(os.path.join(local_dir, rel), "rb") as f, io.atomic_write(io.join(uri, rel), "wb") as out:
            shutil.copyfileobj(f, out, length=8 << 20)
