"""Validation at scale: time and peak memory of `beit3 data validate` over pairs manifests of growing size,
and image-check throughput.

    .venv/bin/python bench/validate_bench.py [--rows 400000 4000000] [--chunk-rows 100000] [--images 400]

Each size is validated end to end (chunked checks, Great Expectations per chunk and its Data Docs, packing
into shards) in a fresh child process, which prints one JSON line: rows, seconds, rows per second and its
peak RSS (ru_maxrss). The rows point into a pool of small real images (one image per 100 rows), so the
metadata path dominates as for a large manifest. The target: the largest size peaks within 1.3x of the
smallest (sizes of at least two chunks each: memory is bounded by the chunk). Then image checks per second
with 1 and 2 worker threads and 2 processes side by side.
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

TARGET_RATIO = 1.3
ROWS_PER_IMAGE = 100
WORDS = ["a", "the", "red", "green", "blue", "small", "large", "circle", "square", "dog", "cat", "man", "woman",
         "on", "of", "with", "near"]


def _jpeg(rng: random.Random, side: int) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3))).save(buf, format="JPEG")
    return buf.getvalue()


def make_manifest(root: Path, rows: int, seed: int = 0) -> int:
    """A pairs dataset with `rows` rows, 0.1% of them bad in assorted ways; returns the number of bad rows."""
    rng = random.Random(seed)
    pool = max(1, rows // ROWS_PER_IMAGE)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(pool):
        (root / "images" / f"{k:06d}.jpg").write_bytes(_jpeg(rng, 16))
    (root / "dataset.json").write_text(json.dumps({"kind": "pairs", "name": "bench", "splits": ["train"]}))
    bad = 0
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"id": f"{i:09d}", "image": f"images/{i % pool:06d}.jpg",
                   "caption": " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))}
            if i % 1000 == 999:
                bad += 1
                k = (i // 1000) % 4
                if k == 0:
                    row["caption"] = ""
                elif k == 1:
                    row["image"] = "../" + row["image"]
                elif k == 2:
                    row["id"] = f"{i - 1:09d}"
                else:
                    row["caption"] = "caf\udce9"
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
    return bad


def child(src: str, out: str, bad: int, chunk_rows: int) -> None:
    """Validate `src` into `out` and print the measurements (run in its own process: ru_maxrss is per process)."""
    from beit3core.data.validation import validate

    t0 = time.perf_counter()
    summary = validate(src, out, workers=2, max_reject_fraction=0.01, chunk_rows=chunk_rows)
    dt = time.perf_counter() - t0
    d = summary["datasets"]["."]
    assert d["quarantined"] == bad, (d["quarantined"], bad)
    print(json.dumps({"rows": d["rows"], "chunk_rows": chunk_rows, "quarantined": d["quarantined"], "seconds": round(dt, 1),
                      "rows_per_s": round(d["rows"] / dt), "gx_success": d["gx_success"],
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def bench_sizes(sizes: list[int], chunk_rows: int) -> None:
    results = []
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="beit3-bench-") as tmp:
            t0 = time.perf_counter()
            bad = make_manifest(Path(tmp) / "pairs", rows)
            print(f"generated {rows:,} rows ({bad:,} bad) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            r = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / "pairs"), str(Path(tmp) / "v"),
                                str(bad), str(chunk_rows)], check=True, capture_output=True, text=True)
            line = r.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            results.append(json.loads(line))
    if len(results) > 1:
        ratio = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
        print(f"peak RSS at {results[-1]['rows']:,} rows is {ratio:.2f}x that at {results[0]['rows']:,} rows "
              f"(target <= {TARGET_RATIO}x): {'met' if ratio <= TARGET_RATIO else 'NOT met'}")


def bench_images(n: int, side: int) -> None:
    from beit3core.data.validation import check_images

    with tempfile.TemporaryDirectory(prefix="beit3-bench-img-") as tmp:
        rng = random.Random(0)
        refs = []
        for i in range(n):
            img = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
            for _ in range(20):  # some structure so the JPEG is not trivially small
                x, y = rng.randrange(side), rng.randrange(side)
                img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(side, x + side // 4), min(side, y + side // 4)))
            buf = pyio.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            os.makedirs(os.path.join(tmp, "images"), exist_ok=True)
            with open(os.path.join(tmp, "images", f"{i}.jpg"), "wb") as f:
                f.write(buf.getvalue())
            refs.append(f"images/{i}.jpg")
        print(f"\nimage checks (read + verify + full decode + bounds) of {n} JPEGs {side}x{side}:")
        rates = {}
        for label, workers, processes in (("1 worker", 1, False), ("2 threads", 2, False), ("2 processes", 2, True)):
            t0 = time.perf_counter()
            res = check_images(tmp, refs, workers, keep_bytes=False, processes=processes)
            dt = time.perf_counter() - t0
            assert all(r.ok for r in res.values())
            rates[label] = n / dt
            print(f"  {label:12s} {dt:6.2f} s  {rates[label]:8.0f} images/s  "
                  f"{rates[label] / rates['1 worker']:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[400_000, 4_000_000], help="manifest sizes, smallest first")
    p.add_argument("--images", type=int, default=400, help="images for the image-check throughput (0: skip)")
    p.add_argument("--image-side", type=int, default=512)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows validated at a time (default: the command's)")
    p.add_argument("--child", nargs=4, metavar=("SRC", "OUT", "BAD", "CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return 0
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (figures scale with what else runs)")
    from beit3core.data.validation import CHUNK_ROWS

    bench_sizes(sorted(args.rows), args.chunk_rows or CHUNK_ROWS)
    if args.images:
        bench_images(args.images, args.image_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
