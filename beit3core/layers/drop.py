"""Stochastic depth: drop a whole residual branch per sample (Huang et al., 2016)."""

import torch
from torch import nn


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-layer drop rates, linear from 0 to `rate` (as torchscale: linspace(0, rate, depth))."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


def drop_path(*xs: torch.Tensor | None, p: float, training: bool) -> tuple[torch.Tensor | None, ...]:
    """Zero each sample's branch with probability p and scale the kept ones by 1/(1-p).

    Several tensors (the vision and text parts of one sequence) share one draw per sample, so a sample's
    branch is dropped for all its tokens at once. None entries (an absent modality) pass through.
    """
    if p == 0.0 or not training:
        return xs
    keep = 1.0 - p
    ref = next(x for x in xs if x is not None)
    mask = torch.empty((ref.shape[0],) + (1,) * (ref.ndim - 1), dtype=ref.dtype, device=ref.device)
    mask.bernoulli_(keep).div_(keep)
    return tuple(None if x is None else x * mask for x in xs)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, *xs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return drop_path(*xs, p=self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"
