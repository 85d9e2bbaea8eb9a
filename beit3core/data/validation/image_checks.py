"""Image checks: every referenced image exists, decodes fully and is within the size bounds.

Images are read in parallel (threads: decoding in Pillow and S3 reads release the GIL), each once per
dataset: a chunk checks only the images no earlier chunk did (their results are in the dataset's store).
Packing reads the good ones again, so no image bytes are held between chunks.
"""

from __future__ import annotations

import hashlib
import io as _pyio
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from beit3core import io
from beit3core.data import formats
from beit3core.data.names import LinkOutside, check_inside
from beit3core.data.reading import stable_message, upright
from beit3core.data.shards import IMAGE_EXTS, CompressedShard, ShardReader
from beit3core.data.validation.check import Check, flag, short
from beit3core.data.validation.table import Table
from beit3core.errors import UserError
from beit3core.progress import progress_bar

MEMORY_BUDGET = 512 << 20  # image bytes kept from the check for packing; beyond it images are read again


@dataclass
class ImageResult:
    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    ext: str = "jpg"
    md5: str = ""
    data: bytes | None = None


@dataclass
class ImageChecks:
    """One check per image field, the GX columns they read, and the result of every image by reference."""

    checks: list[Check]
    columns: dict[str, object]
    results: dict[str, ImageResult]


def _size_problem(w: int, h: int) -> str | None:
    if min(w, h) < formats.MIN_IMAGE_SIDE or max(w, h) > formats.MAX_IMAGE_SIDE or w * h > formats.MAX_IMAGE_PIXELS:
        return (f"image is {w}x{h} pixels, outside the bounds (sides {formats.MIN_IMAGE_SIDE}..{formats.MAX_IMAGE_SIDE}, "
                f"at most {formats.MAX_IMAGE_PIXELS} pixels)")
    return None


def check_image_bytes(data: bytes) -> ImageResult:
    """Decode fully (a truncated file fails) and check the size bounds."""
    try:
        with Image.open(_pyio.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            problem = _size_problem(w, h)
            if problem:
                return ImageResult(False, problem, w, h)
            img.verify()
        with Image.open(_pyio.BytesIO(data)) as img:
            img.load()
            upright(img)  # as every reader does: an unreadable orientation fails here, not in training
        if fmt == "PNG" and not data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"):
            raise OSError("PNG ends before its IEND chunk (truncated)")
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        return ImageResult(False, f"image does not decode ({type(e).__name__}: {stable_message(e)})")
    return ImageResult(True, "", w, h, IMAGE_EXTS.get(fmt, (fmt or "img").lower()), hashlib.md5(data).hexdigest())


def _read(root: str, ref: str, reader: ShardReader | None) -> bytes:
    """The bytes of image `ref` (a path under `root` or a shard reference); a link out of `root` is not read."""
    if formats.is_shard_ref(ref) and reader is not None:
        return reader.read(*formats.parse_shard_ref(ref))
    return io.read_bytes(check_inside(root, io.join(root, ref)))


def read_ref(root: str, ref: str, reader: ShardReader | None) -> bytes | None:
    """The bytes of image `ref` (a path under `root` or a shard reference), or None when it cannot be read."""
    try:
        return _read(root, ref, reader)
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def _check_one(root: str, ref: str, reader: ShardReader | None) -> ImageResult:
    try:
        data = _read(root, ref, reader)
    except (LinkOutside, CompressedShard) as e:  # named: "not found" would send the user looking for a file
        return ImageResult(False, f"image not read: {e}".replace(str(root), "<dataset>"))
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return ImageResult(False, f"image not found: {short(ref)}")
    res = check_image_bytes(data)
    res.data = data if res.ok else None
    return res


def _check_chunk(root: str, refs: list[str]) -> list[ImageResult]:
    """Process-pool task: check a chunk of images; bytes stay in the worker (read again when packing)."""
    reader = ShardReader(root)
    out = []
    for ref in refs:
        res = _check_one(root, ref, reader)
        res.data = None
        out.append(res)
    return out


def _check_in_processes(root: str, refs: list[str], workers: int, bar: tqdm) -> dict[str, ImageResult]:
    results: dict[str, ImageResult] = {}
    step = max(16, min(256, len(refs) // (workers * 8) or 1))
    chunks = [refs[i:i + step] for i in range(0, len(refs), step)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for chunk, res in zip(chunks, pool.map(_check_chunk, [root] * len(chunks), chunks), strict=True):
            results.update(zip(chunk, res, strict=True))
            bar.update(len(chunk))
    return results


def _check_in_threads(root: str, refs: list[str], workers: int, budget: int, bar: tqdm) -> dict[str, ImageResult]:
    results: dict[str, ImageResult] = {}
    reader = ShardReader(root)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ref, res in zip(refs, pool.map(lambda r: _check_one(root, r, reader), refs), strict=True):
            if res.data is not None:
                if budget >= len(res.data):
                    budget -= len(res.data)
                else:
                    res.data = None
            results[ref] = res
            bar.update()
    return results


def check_images(root: str, refs: list[str], workers: int, keep_bytes: bool = True, desc: str = "images",
                 processes: bool | None = None) -> dict[str, ImageResult]:
    """Check every referenced image in parallel; keep the bytes (up to a memory budget) for packing.

    Threads by default: reads wait on disk or network, Pillow's decoder releases the GIL, and the bytes stay
    at hand for packing. `processes=True` uses a process pool instead (bytes are then read again to pack).
    """
    workers = max(1, workers)
    with progress_bar(total=len(refs), desc=desc, unit="img", leave=False, mininterval=1.0) as bar:
        if processes and workers > 1:
            return _check_in_processes(root, refs, workers, bar)
        return _check_in_threads(root, refs, workers, MEMORY_BUDGET if keep_bytes else 0, bar)


def image_checks(t: Table, safe: dict[str, np.ndarray], workers: int, root: str, store) -> ImageChecks:
    """Check the images of the rows whose paths are safe to open (`safe`: image field -> rows), each image
    once per dataset (`store`, a DatasetStore, holds the results of earlier chunks and is given the new ones)."""
    refs: dict[str, None] = {}
    for f in t.spec.image_fields:
        for i in np.flatnonzero(safe[f]):
            refs.setdefault(t.rows[i][f])
    results = store.images(list(refs))
    new = [r for r in refs if r not in results]
    checked = check_images(root, new, workers, keep_bytes=False, desc=f"{t.prefix or 'dataset '}images")
    store.add_images(checked)
    results.update(checked)
    checks, columns = [], {}
    for f in t.spec.image_fields:
        ok = np.ones(len(t), bool)
        reasons = {}
        for i in np.flatnonzero(safe[f]):
            res = results[t.rows[i][f]]
            if not res.ok:
                ok[i] = False
                reasons[int(i)] = f"field {f!r}: {res.reason}"
        columns[f"{f}__image_ok"] = flag(ok, safe[f])
        checks.append(Check(f"{f}: image exists, decodes, within size bounds", "ExpectColumnValuesToBeInSet",
                            {"column": f"{f}__image_ok", "value_set": [True]}, safe[f] & ~ok, reasons))
    return ImageChecks(checks, columns, results)
