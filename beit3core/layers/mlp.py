"""The feed-forward expert: fc1 -> GELU -> sub-LayerNorm (Magneto) -> fc2."""

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, *, inner_norm: bool = True, eps: float = 1e-5):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        # Sub-LN on the hidden activations, as in the released model (`ffn_layernorm`).
        self.norm = nn.LayerNorm(hidden_dim, eps=eps) if inner_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU like the reference; in fp32 no cast is needed.
        return self.fc2(self.norm(F.gelu(self.fc1(x))))
