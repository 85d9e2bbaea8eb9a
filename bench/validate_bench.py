"""Validation speed: metadata of a 1M-row pairs manifest, and image-check throughput.

    .venv/bin/python bench/validate_bench.py [--rows 1000000] [--images 400] [--image-side 256]

Prints each phase of the metadata validation (parse, vectorised pandas checks, Great Expectations) against
the one-minute target, then image checks per second with 1 and with 2 worker threads side by side.
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from beit3core.data.validation import GXRunner, check_images, read_table, validate_table

TARGET_S = 60.0


def make_manifest(root: Path, rows: int, seed: int = 0) -> int:
    """A pairs dataset with `rows` rows, 0.1% of them bad in assorted ways; returns the number of bad rows."""
    rng = random.Random(seed)
    words = "a the red green blue small large circle square dog cat man woman on of with near".split()
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"kind": "pairs", "name": "bench", "splits": ["train"]}))
    bad = 0
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"id": f"{i:09d}", "image": f"images/{i // 1000:05d}/{i:09d}.jpg",
                   "caption": " ".join(rng.choices(words, k=rng.randint(4, 14)))}
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


def bench_metadata(rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="beit3-bench-") as tmp:
        root = Path(tmp) / "pairs"
        t0 = time.perf_counter()
        bad = make_manifest(root, rows)
        print(f"generated {rows:,} rows ({bad:,} bad) in {time.perf_counter() - t0:.1f} s; "
              f"{(root / 'train.jsonl').stat().st_size / 2**20:.0f} MiB")

        t0 = time.perf_counter()
        table = read_table(str(root))
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = validate_table(table, str(root), with_images=False)
        t_checks = time.perf_counter() - t0
        t0 = time.perf_counter()
        import great_expectations  # noqa: F401
        t_import = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as docs:
            runner = GXRunner(docs)
            t0 = time.perf_counter()
            result = runner.run("bench", "pairs", report.frame, report.checks)
            t_gx = time.perf_counter() - t0
            t0 = time.perf_counter()
            runner.build_docs()
            t_docs = time.perf_counter() - t0
        total = t_read + t_checks + t_gx + t_docs
        quarantined = int((~report.clean).sum())
        assert quarantined == bad, (quarantined, bad)
        print(f"\nmetadata validation of {rows:,} pairs rows ({len(report.checks)} checks + GX suite of "
              f"{len(result['results'])} expectations):")
        print(f"  {'parse JSON lines':32s} {t_read:7.2f} s")
        print(f"  {'vectorised checks + reasons':32s} {t_checks:7.2f} s")
        print(f"  {'Great Expectations suite run':32s} {t_gx:7.2f} s   (import, once: {t_import:.1f} s)")
        print(f"  {'GX Data Docs build':32s} {t_docs:7.2f} s")
        print(f"  {'total':32s} {total:7.2f} s   target {TARGET_S:.0f} s -> {total / TARGET_S:.2f}x of the budget, "
              f"{rows / total / 1e3:,.0f}k rows/s; quarantined {quarantined:,} of {rows:,} "
              f"(GX success={result['success']})")


def bench_images(n: int, side: int) -> None:
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
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--image-side", type=int, default=512)
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (figures scale with what else runs)")
    bench_metadata(args.rows)
    bench_images(args.images, args.image_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
