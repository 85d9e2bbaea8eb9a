"""Resampling a learned absolute position table to another image grid."""

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(table: torch.Tensor, new_grid: tuple[int, int], *, num_prefix: int) -> torch.Tensor:
    """Bicubically resample the grid rows of a (prefix + h*w, D) position table to `new_grid`.

    The first `num_prefix` rows (BEiT-3 unilm layout: 2 fairseq offset rows and the CLS row, so 3) are kept
    unchanged. Interpolation runs in float32 (align_corners=False, no antialias, as the released loader)
    and the result has the input dtype. A pure function: the input is never modified.
    """
    prefix, grid = table[:num_prefix], table[num_prefix:]
    old = int(math.isqrt(grid.shape[0]))
    if old * old != grid.shape[0]:
        raise ValueError(f"position table: {grid.shape[0]} grid rows is not a square grid")
    if (old, old) == tuple(new_grid):
        return table.clone()
    dim = grid.shape[1]
    x = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(-1, dim).to(table.dtype)
    return torch.cat([prefix, x], dim=0)
