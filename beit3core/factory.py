"""`create_model`: a registered model by name, optionally on the meta device, optionally with weights.

The factory sits above the model registry and the checkpoint code (as open_clip's `factory.py` and timm's
`_builder.py` do): the registry maps names to builders, `beit3core.checkpoint` reads weights into a built model,
and only this file knows both.
"""

from __future__ import annotations

import torch
from torch import nn

from beit3core.checkpoint import load_pretrained
from beit3core.models import list_models
from beit3core.models.registry import get_builder


def create_model(name: str, *, pretrained: str | None = None, device=None, **overrides) -> nn.Module:
    """Build a registered model; `overrides` replace config fields (unknown or inconsistent ones raise).

    `pretrained` is a checkpoint URI (official .pth or a native safetensors folder) loaded non-strictly;
    `device="meta"` builds the model without allocating its weights (for counting).
    """
    builder = get_builder(name)
    if device is not None:
        with torch.device(device):
            model = builder(**overrides)
    else:
        model = builder(**overrides)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


__all__ = ["create_model", "list_models"]
