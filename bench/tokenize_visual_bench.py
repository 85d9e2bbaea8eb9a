"""Visual tokenizing throughput on this CPU: images/s of VisualTokenizer.encode.

    .venv/bin/python bench/tokenize_visual_bench.py [--images 1024] [--batch-size 64]

Measures the demo tokenizer (64 px, patch 8, tiny ViT, 512 x 32 codes) and, for scale, the released size
(224 px, ViT-B/16 encoder, 8192 x 32 codes) on a few images, side by side. Weights are random: the cost of
encoding does not depend on them. Also times JPEG decode + resize (the precomputed view, the other half of the
stage's work) and JPEG decode + `PretrainAugment` (the two views of on-the-fly targets, what a loader worker
does per image instead), per process.
"""

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from beit3core.pretrain.augment import PretrainAugment
from beit3core.tokenizers.visual import VisualTokenizer, image_to_uint8
from beit3core.tokenizers.vqkd import VQKD, vqkd_base_config, vqkd_tiny_config


def rate(vt: VisualTokenizer, n: int, batch: int) -> float:
    x = torch.rand(batch, 3, vt.img_size, vt.img_size)
    vt.encode(x[:2])  # warm-up
    done, start = 0, time.perf_counter()
    while done < n:
        vt.encode(x)
        done += batch
    return done / (time.perf_counter() - start)


def _jpeg(size: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def decode_rate(n: int, size: int = 64) -> float:
    data = _jpeg(size)
    start = time.perf_counter()
    for _ in range(n):
        image_to_uint8(Image.open(io.BytesIO(data)), 64)
    return n / (time.perf_counter() - start)


def augment_rate(n: int, size: int, out: int) -> float:
    """Decode + one jittered, flipped random resized crop resized to the model's and the tokenizer's size."""
    data, aug, rng = _jpeg(size), PretrainAugment(out, out), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n):
        aug(Image.open(io.BytesIO(data)), rng)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-images", type=int, default=32)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    tiny = VisualTokenizer(VQKD(vqkd_tiny_config()))
    base = VisualTokenizer(VQKD(vqkd_base_config()))
    rows = [("demo tiny 64px/p8, 512x32", rate(tiny, args.images, args.batch_size)),
            ("released ViT-B/16 224px, 8192x32", rate(base, args.base_images, 16))]
    print(f"{'tokenizer':<36} {'images/s':>10}")
    for name, r in rows:
        print(f"{name:<36} {r:>10,.1f}")
    print(f"{'jpeg decode + resize 64px':<36} {decode_rate(2000):>10,.1f}")
    print(f"{'jpeg 64px + PretrainAugment 64/64':<36} {augment_rate(1000, 64, 64):>10,.1f}")
    print(f"{'jpeg 384px + PretrainAugment 224/224':<36} {augment_rate(100, 384, 224):>10,.1f}")
    print(f"demo / released: {rows[0][1] / rows[1][1]:.0f}x")


if __name__ == "__main__":
    main()
