"""Modality experts: a Multiway module holds one expert per modality and routes each part to its own.

A sequence travels through the encoder as its two parts, `(vision, text)`, either of which may be None
(image-only or text-only input). The routing is therefore part of what `forward` receives, never module
state: expert `vision` sees only the vision tokens and expert `text` only the text tokens. `route()` gives
the same thing for a joint (B, T, D) tensor and a split position, as torchscale's MultiwayNetwork does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Parts = tuple[torch.Tensor | None, torch.Tensor | None]


class Multiway(nn.Module):
    """Two copies of a module: `vision` (released name A) and `text` (released name B)."""

    def __init__(self, make: Callable[[], nn.Module]):
        super().__init__()
        self.vision = make()
        self.text = make()

    def forward(self, vision: torch.Tensor | None, text: torch.Tensor | None) -> Parts:
        return (
            self.vision(vision) if vision is not None else None,
            self.text(text) if text is not None else None,
        )

    def route(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """Joint tensor form: tokens [:split] to vision, [split:] to text (split -1: all vision, 0: all text)."""
        if split == -1 or split == x.shape[1]:
            return self.vision(x)
        if split == 0:
            return self.text(x)
        return torch.cat([self.vision(x[:, :split]), self.text(x[:, split:])], dim=1)


class Shared(nn.Module):
    """One module for both parts: the same interface as Multiway, for the paper's shared attention."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.shared = module

    def forward(self, vision: torch.Tensor | None, text: torch.Tensor | None) -> Parts:
        return (
            self.shared(vision) if vision is not None else None,
            self.shared(text) if text is not None else None,
        )

    def route(self, x: torch.Tensor, split: int) -> torch.Tensor:
        return self.shared(x)
