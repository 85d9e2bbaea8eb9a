"""Self-attention over the joint (vision ‖ text) sequence, with per-modality or shared projections.

The released BEiT-3 gives each modality its own q/k/v/out projections and sub-LayerNorm (`multiway=True`);
the paper shares them (`multiway=False`). Either way every token attends over the whole sequence, which is
what mixes the modalities. q, k and v come from one fused (3D, D) projection per expert.

Two numerically equal paths: `scaled_dot_product_attention` (fused, the default) and the plain
softmax(q kᵀ / sqrt(d)) v reference, chosen once per module from `beit3core.layers.config`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.layers.config import use_fused_attn
from beit3core.layers.multiway import Multiway, Parts, Shared


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ · d^-0.5 + mask) v; `mask` is boolean, True = may attend."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, multiway: bool, inner_norm: bool = True, eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.fused_attn = use_fused_attn()

        def experts(make):
            return Multiway(make) if multiway else Shared(make())

        self.qkv = experts(lambda: nn.Linear(dim, 3 * dim))
        # Sub-LN before the output projection (Magneto; released name `inner_attn_ln`).
        self.norm = experts(lambda: nn.LayerNorm(dim, eps=eps) if inner_norm else nn.Identity())
        self.proj = experts(lambda: nn.Linear(dim, dim))

    def forward(
        self,
        vision: torch.Tensor | None,
        text: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """Attend over [past keys ‖ vision ‖ text]; returns the two output parts and this call's full (k, v).

        `mask` is boolean, broadcastable to (B, heads, queries, keys), True = may attend; None = all.
        """
        qv, qt = self.qkv(vision, text)
        qkv = qv if qt is None else qt if qv is None else torch.cat([qv, qt], dim=1)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if self.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            o = reference_attention(q, k, v, mask)
        o = o.transpose(1, 2)  # (B, T, H, hd): each part is copied out once, straight into (B, n, D)
        nv = 0 if vision is None else vision.shape[1]
        ov = None if vision is None else o[:, :nv].reshape(B, nv, -1)
        ot = None if text is None else o[:, nv:].reshape(B, T - nv, -1)
        ov, ot = self.proj(*self.norm(ov, ot))
        return ov, ot, (k, v)


__all__ = ["Attention", "Parts", "reference_attention"]
