"""Checkpoint sizes and save times: a pretraining model plus its AdamW state, saved the way pretraining saves it.

    .venv/bin/python bench/checkpoint_bench.py                       # base and 12x384, local folder and S3 store
    .venv/bin/python bench/checkpoint_bench.py --sizes 12x384 --repeats 3 --targets local

Builds `Beit3ForPretraining` (backbone + MLM head over 64,010 pieces + MIM head over 8,192 codes, as the paper)
for each size, fills its AdamW moments with one optimizer step (random gradients, so nothing compresses), and
saves it through `beit3train.checkpointing.save_train_state`, the call both trainers make:
- `full`: the whole state gathered into one `checkpoint.pt` (torch.save to a temporary file, then published
  atomically), then the COMPLETE marker;
- `sharded`: torch.distributed.checkpoint (`beit3train.sharded_checkpoint`), one `.distcp` file per rank (one
  rank here) plus `.metadata`, then `train_state.pt` and COMPLETE.

Targets: a local folder (`--local-root`, default the temp dir) and the local S3 store (`beit3 store`, started
when it is not running). Formats alternate within every repeat, so drift on a shared machine hits both. Each
save is timed from the call to its return (marker written; old checkpoints are not pruned: keep-last 0) and
deleted afterwards, untimed. One JSON line per (format, size, target): bytes, seconds (median, min..max), MB/s
(bytes / median seconds / 1e6). At the defaults it makes 8 saves of base (about 3.3 GB each) and 8 of 12x384 (about
1.2 GB); the S3 target needs that much free room in the store (a full store is reported as an "error" line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

import torch
from torch.distributed.checkpoint.api import CheckpointException

from beit3core import io
from beit3core.errors import UserError

VOCAB, CODEBOOK = 64010, 8192  # BEiT-3's SentencePiece vocabulary and VQ-KD codebook
SIZES = {  # name -> (registered model, overrides)
    "base": ("beit3_base_patch16_224", {}),
    "12x384": ("beit3_base_patch16_224", {"embed_dim": 384, "num_heads": 6, "mlp_dim": 1536}),
}
FORMATS = ("full", "sharded")


@dataclasses.dataclass(frozen=True)
class _Config:
    """Stands in for a trainer's config in the checkpoint (saved as a dict; nothing reads it back here)."""

    model: str


def build_state(size: str):
    """A TrainState of the pretraining model of `size` with AdamW moments for every parameter."""
    from beit3core.factory import create_model
    from beit3core.pretrain import Beit3ForPretraining
    from beit3train.checkpointing import TrainState
    from beit3train.optim import build_optimizer, build_param_groups

    name, overrides = SIZES[size]
    torch.manual_seed(0)
    model = Beit3ForPretraining(create_model(name, vocab_size=VOCAB, **overrides), VOCAB, CODEBOOK)
    optimizer = build_optimizer(build_param_groups(model, 0.05), 1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    for p in model.parameters():
        p.grad = None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    described = " ".join([name, *(f"{k}={v}" for k, v in overrides.items())])
    return TrainState(model, optimizer, scheduler, progress={"samples_seen": 0, "data_position": 0}), described


def save_once(run_uri: str, state, config, fmt: str, step: int) -> tuple[float, int]:
    """(seconds, bytes) of one save of `state` under `run_uri` in format `fmt`."""
    from beit3train.checkpointing import checkpoint_uri, save_train_state

    state.step = step
    started = time.perf_counter()
    save_train_state(run_uri, state, config, world_size=1, keep_last=0, sharded=fmt == "sharded")
    seconds = time.perf_counter() - started
    return seconds, sum(io.sizes(checkpoint_uri(run_uri, step)).values())


def _s3_root() -> str:
    from beit3ops import store

    info = store.status() or store.up()
    os.environ.update(info.env())
    return f"s3://{store.DEFAULT_BUCKET}/bench/checkpoint_bench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="base,12x384", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--targets", default="local,s3", help="comma-separated, of local, s3")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--local-root", default=None, help="where local saves go (default: the temp dir)")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    targets = [t for t in args.targets.split(",") if t]
    if unknown := [s for s in sizes if s not in SIZES] + [t for t in targets if t not in ("local", "s3")]:
        ap.error(f"unknown size or target: {', '.join(unknown)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    roots = {"local": args.local_root or tempfile.gettempdir()}
    if "s3" in targets:
        roots["s3"] = _s3_root()
    run_id = uuid.uuid4().hex[:8]

    for size in sizes:
        state, name = build_state(size)
        params = sum(p.numel() for p in state.model.parameters())
        results: dict[tuple[str, str], list[tuple[float, int]]] = {}
        failed: dict[tuple[str, str], str] = {}
        for repeat in range(args.repeats):
            for target in targets:
                for fmt in FORMATS if repeat % 2 == 0 else FORMATS[::-1]:  # alternate which goes first
                    if (fmt, target) in failed:
                        continue
                    run_uri = io.join(roots[target], f"ckpt-bench-{run_id}-{size}-{fmt}-{repeat}")
                    try:
                        results.setdefault((fmt, target), []).append(
                            save_once(run_uri, state, _Config(name), fmt, step=repeat + 1))
                    except (UserError, OSError, CheckpointException) as e:  # a full store: say so, measure the rest
                        failed[(fmt, target)] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                    finally:
                        if io.exists(run_uri):
                            io.remove(run_uri, recursive=True)
        for (fmt, target), error in failed.items():
            print(json.dumps({"format": fmt, "size": size, "model": name, "target": target, "error": error}),
                  flush=True)
        for (fmt, target), runs in results.items():
            if (fmt, target) in failed or not runs:
                continue
            seconds = [s for s, _ in runs]
            size_bytes = runs[-1][1]
            median = statistics.median(seconds)
            print(json.dumps({"format": fmt, "size": size, "model": name, "params_M": round(params / 1e6, 1),
                              "target": target, "bytes": size_bytes, "seconds": round(median, 2),
                              "seconds_range": [round(min(seconds), 2), round(max(seconds), 2)],
                              "mb_per_s": round(size_bytes / median / 1e6, 1), "repeats": len(runs)}), flush=True)
        del state
    return 0


if __name__ == "__main__":
    sys.exit(main())
