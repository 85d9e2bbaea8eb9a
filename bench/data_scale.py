"""The pretraining loader at scale: memory, time to first batch and throughput against the CPU's decode limit.

    .venv/bin/python bench/data_scale.py --rows 400000      # builds the data once (cached by N), then measures
    .venv/bin/python bench/data_scale.py --rows 20000 --repeats 3
    .venv/bin/python bench/data_scale.py --rows 20000 --seconds 10 --profile /tmp/loader.pstats   # where CPU goes

Builds (or reuses) a synthetic *validated* pairs collection of N rows on the local S3 store (`beit3 store`,
started when it is not running): format-2 tar shards (`docs/data.md`), precomputed visual-token shards, a
SentencePiece tokenizer fitted on the captions. It is written directly in the validated layout, not through
`beit3 data validate` (that stage has its own benchmark, bench/validate_bench.py).

Then, alternating in one run (`--repeats` times each), it measures:
- the pretraining loader (`beit3core.pretrain.data.open_loader`, the one the trainer uses, pairs stream only)
  with `--workers` processes: time to the first batch, then samples/s over `--seconds`;
- the decode limit: the same number of processes doing nothing but JPEG decode + bicubic resize + centre crop
  to the model's size on the same images (already in memory): the most any loader could deliver on this CPU.

Peak memory is sampled from /proc (VmRSS of the bench process and every loader worker, every 50 ms; the
largest single process is reported). One JSON line: rows, shards, peak_rss_mib, first_batch_s,
samples_per_s, decode_limit_samples_per_s, ratio, and the spread (min..max) of the repeats.
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

import numpy as np
from PIL import Image, ImageDraw

from beit3core import io

IMG_POOL = 256  # distinct JPEGs; rows reuse them (decode cost depends on size and content, not identity)
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


# -- data ---------------------------------------------------------------------------------------------------------
def _jpeg(rng: np.random.Generator, side: int) -> bytes:
    """A photo-like JPEG: a smooth gradient background plus noise and a few shapes (compresses like a photo)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([x * rng.uniform(80, 255), y * rng.uniform(80, 255), (x + y) * rng.uniform(40, 120)], -1)
    arr = np.clip(base + rng.normal(0, 18, (side, side, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, side * 3 // 4, 2)
        s = int(rng.integers(side // 8, side // 3))
        draw.ellipse([x0, y0, x0 + s, y0 + s], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = pyio.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_pool(side: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_jpeg(rng, side) for _ in range(IMG_POOL)]


def _caption(i: int) -> str:
    a, b = COLOURS[i % 6], SHAPES[(i // 6) % 3]
    c, d = COLOURS[(i // 18) % 6], SHAPES[(i // 108) % 3]
    return f"a {a} {b} to the left of a {c} {d}"


def build(root: str, rows: int, *, side: int, shard_size: int, grid: int, codebook: int) -> dict:
    """Write the collection under `root` (skipped when its marker says it is there with these settings)."""
    settings = {"rows": rows, "side": side, "shard_size": shard_size, "grid": grid, "codebook": codebook, "v": 1}
    marker = io.join(root, "built.json")
    if io.exists(marker) and io.read_json(marker) == settings:
        return settings
    from beit3core.tokenizers.text import TextTokenizer

    started = time.perf_counter()
    pool = image_pool(side)
    ds = io.join(root, "data", "pairs")
    tokens = io.join(root, "tokens_visual")
    from beit3core.data.shards import ShardWriter

    shards, rng = [], np.random.default_rng(1)
    writer = ShardWriter(io.join(ds, "shards"), shard_size)
    for first in range(0, rows, shard_size):
        count, name = min(shard_size, rows - first), writer.ahead(0)
        for i in range(first, first + count):
            key, caption = f"{i:09d}", _caption(i)
            row = {"id": f"r{i}", "image": f"shards/{name}#{key}.jpg", "caption": caption}
            writer.add(key, pool[i % len(pool)], "jpg", caption,
                       {"split": "train", "source": f"images/{i}.jpg", "width": side, "height": side, "rows": [row]})
        writer.flush()
        keys = np.asarray([f"{i:09d}" for i in range(first, first + count)], dtype=str)
        ids = rng.integers(0, codebook, (count, grid * grid), dtype=np.uint16)
        buf = pyio.BytesIO()
        np.savez(buf, keys=keys, ids=ids)
        io.write_bytes(io.join(tokens, "tokens", "pairs", name.replace(".tar", ".npz")), buf.getvalue())
        shards.append({"name": f"shards/{name}", "samples": count, "rows": count})
        if len(shards) % 50 == 0:
            print(f"built {first + count} of {rows} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    writer.close()
    header = {"format_version": 2, "kind": "pairs", "name": "pairs", "splits": ["train"], "validated": True,
              "validation": {"rows": rows, "clean": rows, "quarantined": 0, "shard_size": shard_size,
                             "shards": {"train": shards}, "images": rows}}
    io.write_json(io.join(ds, "dataset.json"), header)
    # the loader never reads the jsonl; it is written (streamed, in parts) because the layout has it
    with io.open(io.join(ds, "train.jsonl"), "w") as f:
        for i in range(rows):
            key = f"{i:09d}"
            f.write(json.dumps({"caption": _caption(i), "id": f"r{i}",
                                "image": f"shards/{i // shard_size:05d}.tar#{key}.jpg"}) + "\n")
    tok = TextTokenizer.train((_caption(i) for i in range(2000)), vocab_size=24)
    tok.save(io.join(root, "tokens_text", "tokenizer"))
    _visual_tokenizer(io.join(tokens, "tokenizer"), grid=grid, codebook=codebook)
    io.write_json(marker, settings)
    print(f"built {rows} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return settings


def _visual_tokenizer(uri: str, *, grid: int, codebook: int) -> None:
    """A small untrained VQ-KD at the model's resolution: the loader only reads its config (img size, grid)."""
    from beit3core.tokenizers.visual import VisualTokenizer
    from beit3core.tokenizers.vqkd import VQKD, vqkd_tiny_config

    cfg = vqkd_tiny_config(img_size=grid * 16, patch_size=16, codebook_size=codebook)
    VisualTokenizer(VQKD(cfg)).save(uri)


# -- measurement --------------------------------------------------------------------------------------------------
class PeakRSS:
    """Largest VmRSS of this process or any descendant, sampled every 50 ms in a thread."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_kib(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                kids = []
            out.extend(kids)
            todo.extend(kids)
        return out

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            for pid in [me, *self._descendants(me)]:
                self.peak_kib = max(self.peak_kib, self._rss_kib(pid))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _decode_worker(args) -> int:
    pool, size, seconds = args
    from torchvision.transforms import functional as F  # noqa: F401  (same imports cost as a loader worker)

    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        img = Image.open(pyio.BytesIO(pool[n % len(pool)])).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        np.asarray(img.crop((left, top, left + size, top + size)))
        n += 1
    return n


def decode_limit(pool: list[bytes], size: int, processes: int, seconds: float) -> float:
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as p:
        p.map(_decode_worker, [(pool, size, 0.5)] * processes)  # warm up: imports, first decodes
        started = time.perf_counter()
        done = sum(p.map(_decode_worker, [(pool, size, seconds)] * processes))
        return done / (time.perf_counter() - started)


def _batches(root: str, *, batch: int, workers: int, img_size: int, targets: str):
    """The trainer's loader (pairs stream only) over the collection at `root`, as an endless batch iterator."""
    from beit3core.pretrain.data import open_loader

    return iter(open_loader(data=io.join(root, "data"), text_tokenizer=io.join(root, "tokens_text"),
                            visual_tokens=io.join(root, "tokens_visual"), batch_sizes={"pairs": batch},
                            num_workers=workers, img_size=img_size, total_steps=10**9, visual_targets=targets))


def loader_rate(root: str, *, batch: int, workers: int, seconds: float, img_size: int, targets: str) -> dict:
    started = time.perf_counter()
    batches = _batches(root, batch=batch, workers=workers, img_size=img_size, targets=targets)
    next(batches)
    first = time.perf_counter() - started
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, b = next(batches)
        n += len(b["pairs"]["image"])
    rate = n / (time.perf_counter() - t0)
    del batches
    return {"first_batch_s": first, "samples_per_s": rate}


def profile_loader(root: str, path: str, *, batch: int, seconds: float, img_size: int, targets: str) -> None:
    """cProfile of the loader in this one process (num_workers=0: the workers' work, in the main thread; the
    shard reads run in threads cProfile does not see) over `seconds` after the first batch: pstats to `path`,
    the top functions by own time to stderr. For where the loader's CPU goes, not for its rate."""
    import cProfile
    import pstats

    batches = _batches(root, batch=batch, workers=0, img_size=img_size, targets=targets)
    next(batches)
    profiler, n, t0 = cProfile.Profile(), 0, time.perf_counter()
    profiler.enable()
    while time.perf_counter() - t0 < seconds:
        n += len(next(batches)[1]["pairs"]["image"])
    profiler.disable()
    profiler.dump_stats(path)
    print(f"profiled {n} samples in one process -> {path}", file=sys.stderr)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--image-side", type=int, default=256, help="stored JPEG side (img2dataset's usual 256)")
    ap.add_argument("--img-size", type=int, default=224, help="model input side")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="pairs per step")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--visual-targets", choices=("precomputed", "on-the-fly"), default="precomputed",
                    help="on-the-fly: the loader makes the augmented model and tokenizer views (BEiT v2) instead")
    ap.add_argument("--root", default=None, help="where the data lives (default: the local store, s3://beit3/bench/)")
    ap.add_argument("--profile", metavar="PSTATS", default=None,
                    help="instead of measuring: cProfile the loader in one process for --seconds, stats to this file")
    args = ap.parse_args(argv)

    if args.root is None:
        from beit3ops import store
        info = store.status() or store.up()
        os.environ.update(info.env())
        args.root = f"s3://{store.DEFAULT_BUCKET}/bench/data_scale/rows-{args.rows}"
    grid = args.img_size // 16
    build(args.root, args.rows, side=args.image_side, shard_size=args.shard_size, grid=grid, codebook=8192)
    if args.profile:
        profile_loader(args.root, args.profile, batch=args.batch, seconds=args.seconds, img_size=args.img_size,
                       targets=args.visual_targets)
        return 0
    pool = image_pool(args.image_side)

    loads, limits, peaks = [], [], []
    for _ in range(args.repeats):  # alternated: loader, decode limit, loader, ...
        with PeakRSS() as rss:  # the loader's processes only
            loads.append(loader_rate(args.root, batch=args.batch, workers=args.workers, seconds=args.seconds,
                                     img_size=args.img_size, targets=args.visual_targets))
        peaks.append(rss.peak_kib)
        limits.append(decode_limit(pool, args.img_size, max(1, args.workers), args.seconds))
    rates = [x["samples_per_s"] for x in loads]
    firsts = [x["first_batch_s"] for x in loads]
    out = {"rows": args.rows, "visual_targets": args.visual_targets, "shards": -(-args.rows // args.shard_size),
           "workers": args.workers,
           "image_side": args.image_side, "img_size": args.img_size, "batch": args.batch,
           "peak_rss_mib": round(max(peaks) / 1024, 1),
           "first_batch_s": round(statistics.median(firsts), 2),
           "first_batch_s_range": [round(min(firsts), 2), round(max(firsts), 2)],
           "samples_per_s": round(statistics.median(rates), 1),
           "samples_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
           "decode_limit_samples_per_s": round(statistics.median(limits), 1),
           "decode_limit_range": [round(min(limits), 1), round(max(limits), 1)],
           "ratio": round(statistics.median(rates) / statistics.median(limits), 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
