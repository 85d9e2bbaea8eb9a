"""Process-group setup and the few collectives the trainers need.

`init_distributed()` reads the variables that torchrun and the Kubeflow Training Operator (PyTorchJob,
TrainJob) set: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. A PyTorchJob that starts
`python -m beit3train.pretrain` directly in each pod sets RANK/WORLD_SIZE but no LOCAL_RANK (one process per
pod), so LOCAL_RANK defaults to 0. Without WORLD_SIZE > 1 nothing is initialised and every helper here
degrades to the single-process identity, so the same trainer code runs on a laptop and on a cluster.

Backend: nccl when the process drives a CUDA device, gloo on CPU. `run_distributed` runs a trainer's `train`
inside the process group.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from beit3core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Runtime facts about this process's place in the job (never part of the frozen training config)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None when no process group was initialised

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_info_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / PyTorchJob variables; (0, 1, 0) when absent."""
    env = os.environ if env is None else env

    def _int(name: str, default: int) -> int:
        value = env.get(name, "")
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise UserError(f"environment variable {name}={value!r}: not an integer") from None

    world_size = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    local_rank = _int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    return rank, world_size, local_rank


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu; 'cpu' / 'cuda' as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {device!r}: expected auto, cpu or cuda")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group if the environment describes a multi-process job."""
    rank, world_size, local_rank = world_info_from_env()
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        # env:// reads MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE itself.
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    log.info("process group: backend=%s rank=%d/%d local_rank=%d device=%s", backend, rank, world_size,
             local_rank, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_distributed(train: Callable[..., Any], cfg, *args) -> Any:
    """`train(cfg, dist_info, *args)` in this process's place in the job: the process group is set up for
    `cfg.device` and torn down afterwards; ranks other than 0 log warnings only."""
    dist_info = init_distributed(cfg.device)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return train(cfg, dist_info, *args)
    finally:
        cleanup_distributed()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (picklable objects: paths, dicts of numbers)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank `dst`; None on the other ranks."""
    if not _active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor; the input is left untouched)."""
    out = tensor.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; the backward pass hands each rank the summed gradient
    of its own slice (each rank's loss depends on every slice, so the contributions of all ranks add up)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
        sizes_list = [int(s.item()) for s in sizes]
        if len(set(sizes_list)) != 1:
            raise ValueError(f"all_gather_with_grad needs equal batch sizes on every rank, got {sizes_list}")
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(world*B, ...) concatenation of every rank's (B, ...) tensor, differentiable (for retrieval losses)."""
    if not _active():
        return tensor
    return _AllGatherWithGrad.apply(tensor)
