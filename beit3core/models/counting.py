"""Parameter counts of a BEiT-3 model by part (vision / language / vision-language FFN experts, attention,
embeddings, norms), as the paper's Table 1 counts them."""

from __future__ import annotations

from torch import nn

from beit3core.factory import create_model

PARTS = ("vision_ffn", "language_ffn", "vl_ffn", "attention", "embeddings", "norms", "other", "total")


def count_parameters(model_or_name: nn.Module | str, **overrides) -> dict[str, int]:
    """Parameters by part. A name is built on the meta device, so even giant allocates no weights.

    LayerNorms (pre-LN, sub-LN, final) are counted under `norms`, so the FFN and attention figures are the
    projection weights and biases, as the paper counts them.
    """
    model = create_model(model_or_name, device="meta", **overrides) if isinstance(model_or_name, str) else model_or_name
    counts = dict.fromkeys(PARTS, 0)
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = (f"{mod_name}.{p_name}" if mod_name else p_name).removeprefix("backbone.")
            if isinstance(module, nn.LayerNorm):
                part = "norms"
            elif ".mlp.vision." in name:
                part = "vision_ffn"
            elif ".mlp.text." in name:
                part = "language_ffn"
            elif ".vl_mlp." in name:
                part = "vl_ffn"
            elif ".attn." in name:
                part = "attention"
            elif name.split(".")[0] in ("patch_embed", "cls_token", "mask_token", "text_embed",
                                        "vision_pos_embed", "text_pos_embed"):
                part = "embeddings"
            else:
                part = "other"
            counts[part] += p.numel()
            counts["total"] += p.numel()
    return counts


__all__ = ["PARTS", "count_parameters"]
