"""AdamW parameter groups and the warmup + cosine learning-rate schedule.

Rules (BEiT-3 paper and microsoft/unilm `beit3/optim_factory.py`):
- no weight decay on 1-d parameters (norm weights, biases), position tables, cls/mask tokens and `logit_scale`;
- optional layer-wise lr decay: a parameter's layer id is 0 for anything whose name contains `embed` and
  for the cls/mask tokens,
  i+1 for `layers.{i}.` / `blocks.{i}.`, and L+1 for the rest (final norms, heads); its lr is scaled by
  `layer_decay ** (L + 1 - id)`;
- optional head lr weight: parameters whose name starts with a head prefix get `head_lr_scale` on top.

Each group carries `lr_scale`; `build_scheduler` multiplies the scheduled lr by it, so one schedule drives
every group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from beit3core.checkpoint import strip_wrapper_prefixes

DEFAULT_NO_DECAY_NAMES = ("pos_embed", "embed_positions", "cls_token", "mask_token", "logit_scale")
DEFAULT_HEAD_PREFIXES = ("head.",)

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """0 for embeddings, i+1 for transformer layer i, num_layers+1 for everything after the layers."""
    match = _LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embed" in name or name.endswith(("cls_token", "mask_token")):
        return 0
    return num_layers + 1


def build_param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_layers: int | None = None,
    head_lr_scale: float = 1.0,
    no_decay_names: Iterable[str] = DEFAULT_NO_DECAY_NAMES,
    head_prefixes: Iterable[str] = DEFAULT_HEAD_PREFIXES,
) -> list[dict]:
    """AdamW param groups: [{"params", "weight_decay", "lr_scale", "name"}], frozen parameters skipped.

    `num_layers` is needed only when `layer_decay != 1`. `no_decay_names` are substrings; any parameter
    the model lists in `model.no_weight_decay()` (timm convention) is excluded from decay as well.
    """
    if layer_decay != 1.0 and not num_layers:
        raise ValueError("layer_decay != 1 needs num_layers")
    no_decay_names = tuple(no_decay_names)
    head_prefixes = tuple(head_prefixes)
    explicit = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, int, bool], dict] = {}
    for raw_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = strip_wrapper_prefixes(raw_name)
        no_decay = (
            param.ndim <= 1
            or name.endswith(".bias")
            or any(name == n or name.endswith("." + n) for n in explicit)
            or any(n in name for n in no_decay_names)
        )
        lid = layer_id(name, num_layers) if layer_decay != 1.0 else 0
        is_head = head_lr_scale != 1.0 and name.startswith(head_prefixes)
        key = (no_decay, lid, is_head)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay != 1.0 else 1.0
            if is_head:
                scale *= head_lr_scale
            groups[key] = {
                "name": f"layer{lid}{'_head' if is_head else ''}_{'no_decay' if no_decay else 'decay'}",
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    groups: list[dict], lr: float, betas=(0.9, 0.98), eps: float = 1e-6, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over `build_param_groups` output; each group's lr starts at lr * lr_scale."""
    torch_groups = []
    for g in groups:
        torch_groups.append({
            "params": g["params"],
            "weight_decay": g["weight_decay"],
            "lr": lr * g["lr_scale"],
            "lr_scale": g["lr_scale"],
            "name": g["name"],
        })
    return torch.optim.AdamW(torch_groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to base_lr over `warmup` steps, then
    cosine decay to `min_lr` at step `total`."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, base_lr: float, min_lr: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor is warmup_cosine / base_lr; groups keep their lr_scale (set at creation)."""
    if base_lr <= 0:
        raise ValueError("base_lr must be positive")

    def factor(step: int) -> float:
        return warmup_cosine(step, total, warmup, base_lr, min_lr) / base_lr

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
