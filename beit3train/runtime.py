"""What both trainers run a model with: the training wrapper (DDP, or FSDP2 chosen from the model's size),
bf16 autocast on CUDA, and batches moved to the device."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from beit3train.distributed import DistInfo

log = logging.getLogger(__name__)
FSDP_MIN_EMBED_DIM = 1024  # large (1024) and giant (1408): weights + AdamW state too big to replicate per GPU


def wrap_model(model: nn.Module, dist_info: DistInfo, *, fsdp: str = "off", find_unused_parameters: bool = False,
               static_graph: bool = False) -> tuple[nn.Module, bool]:
    """(the model to train, whether it is sharded). `model` (a backbone + heads, `model.backbone` a Beit3Model)
    moves to the device; under a process group it is wrapped in DDP, or sharded with FSDP2 (each block a unit,
    then the root) when `fsdp` is "on", or "auto" on GPU for a model as wide as large/giant (its config's
    embed_dim). FSDP2 shards in place: the module keeps its class and parameter names."""
    model = model.to(dist_info.device)
    if not dist_info.distributed:
        if fsdp == "on":
            log.warning("--fsdp on: a single process has nothing to shard; training unsharded")
        return model, False
    large = model.backbone.config.embed_dim >= FSDP_MIN_EMBED_DIM
    if fsdp == "on" or (fsdp == "auto" and dist_info.device.type == "cuda" and large):
        for block in model.backbone.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, True
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters, static_graph=static_graph)
    return ddp, False


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU (no fast bf16 there)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """The tensors of a (nested) batch dict on `device`; other values as they are."""
    return {k: batch_to_device(v, device) if isinstance(v, dict)
            else v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
