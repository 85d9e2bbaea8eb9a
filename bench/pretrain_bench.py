"""Pretraining throughput: samples/s of one full training step (three forward passes -- image-only,
text-only, fused pairs -- summed loss, backward, grad clipping, AdamW) for the tiny and the base config,
side by side in one run.

Batches are synthetic tensors with the real shapes (uint8 images, 40% block masks, texts with 15% / 50% of
tokens masked), so the figure is the model + optimizer cost, not the data pipeline's. On CUDA the step runs
under bf16 autocast and the script also prints model-FLOPs utilisation (analytic FLOPs of the three passes,
x3 for forward + backward, against the card's dense bf16 peak).

    python bench/pretrain_bench.py                      # CPU: tiny (batch 16+16+16) and base (2+2+2)
    python bench/pretrain_bench.py --device cuda --base-batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from beit3core.factory import create_model
from beit3core.pretrain import Beit3ForPretraining
from beit3core.pretrain.text_masking import mask_text
from beit3core.tokenizers import BlockMaskGenerator
from beit3train.optim import build_optimizer, build_param_groups
from beit3train.runtime import autocast

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core bf16 FLOP/s
VOCAB, CODEBOOK, TEXT_LEN = 64010, 8192, 32


def make_batch(b: int, grid: int, img: int, device, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    masker = BlockMaskGenerator((grid, grid), round(0.4 * grid * grid), min_num=max(1, round(16 * grid * grid / 196)))

    def texts(ratio):
        ids = np.concatenate([np.zeros((b, 1)), rng.integers(4, VOCAB - 1, (b, TEXT_LEN - 2)), np.full((b, 1), 2)], 1)
        pairs = [mask_text(row, ratio, VOCAB - 1, rng) for row in ids.astype(np.int64)]
        return {"text_ids": torch.tensor(np.stack([p[0] for p in pairs])),
                "text_padding_mask": torch.zeros(b, TEXT_LEN, dtype=torch.bool),
                "text_labels": torch.tensor(np.stack([p[1] for p in pairs]))}

    def images():
        return {"image": torch.randint(0, 256, (b, 3, img, img), dtype=torch.uint8),
                "image_mask": torch.tensor(np.stack([masker(rng).reshape(-1) for _ in range(b)])),
                "image_labels": torch.randint(0, CODEBOOK, (b, grid * grid))}

    batch = {"images": images(), "texts": texts(0.15), "pairs": {**images(), **texts(0.5)}}
    return {k: {kk: v.to(device) for kk, v in part.items()} for k, part in batch.items()}


def step_flops(cfg, b: int) -> float:
    """Analytic training FLOPs of one step: 3 x forward (matmuls + attention scores), heads on masked tokens."""
    d, L, m = cfg.embed_dim, cfg.depth, cfg.mlp_dim
    nv, nt = cfg.num_patches + 1, TEXT_LEN

    def fwd(tokens):  # per sequence
        return L * tokens * (8 * d * d + 4 * d * m + 4 * tokens * d)

    heads = 2 * d * (CODEBOOK * round(0.4 * cfg.num_patches) * 2 + VOCAB * (0.15 + 0.5) * (nt - 2))
    return 3 * b * (fwd(nv) + fwd(nt) + fwd(nv + nt) + heads)


def bench(name: str, b: int, device, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    backbone = create_model(name, vocab_size=VOCAB, drop_path_rate=0.1)
    model = Beit3ForPretraining(backbone, VOCAB, CODEBOOK).to(device).train()
    opt = build_optimizer(build_param_groups(model, 0.05), 1e-3, (0.9, 0.98), 1e-6,
                          fused=True if device.type == "cuda" else None)
    cfg = backbone.config
    batch = make_batch(b, cfg.grid_size[0], cfg.img_size, device)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast(device):
            loss = model(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    out = {"model": name, "batch": f"{b}+{b}+{b}", "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "step_s": step, "samples_per_s": 3 * b / step, "tflops": step_flops(cfg, b) / step / 1e12}
    del model, opt
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny-batch", type=int, default=16)
    p.add_argument("--base-batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    device = torch.device(args.device)
    rows = [bench("beit3_tiny_patch8_64", args.tiny_batch, device, args.repeats, args.warmup),
            bench("beit3_base_patch16_224", args.base_batch, device, args.repeats, args.warmup)]
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads, fp32"
    print(f"pretraining step (3 passes + backward + AdamW) on {where}")
    print(f"{'model':<26}{'batch':>10}{'params M':>10}{'step s':>10}{'samples/s':>11}{'TFLOP/s':>9}")
    for r in rows:
        print(f"{r['model']:<26}{r['batch']:>10}{r['params_M']:>10.1f}{r['step_s']:>10.3f}"
              f"{r['samples_per_s']:>11.2f}{r['tflops']:>9.3f}")
    print(f"tiny / base samples/s ratio: {rows[0]['samples_per_s'] / rows[1]['samples_per_s']:.1f}x")
    if device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            mfu = rows[1]["tflops"] * 1e12 / peak
            print(f"base model-FLOPs utilisation (bf16): {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
