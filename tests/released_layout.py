"""Synthetic state dicts in the released (microsoft/unilm + torchscale) key layout, for loader tests.

Keys, shapes and order follow the reference (beit3.md section 5); values are seeded random numbers.
"""

import torch


def released_backbone(*, dim: int, ffn: int, depth: int, vocab: int, grid: int, patch: int, final_norm: bool,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The `beit3.*` backbone keys of a released file for a small config."""
    def t(*shape):
        return torch.randn(*shape, generator=generator)

    sd = {
        "beit3.text_embed.weight": t(vocab, dim),
        "beit3.vision_embed.mask_token": t(1, 1, dim),
        "beit3.vision_embed.cls_token": t(1, 1, dim),
        "beit3.vision_embed.proj.weight": t(dim, 3, patch, patch),
        "beit3.vision_embed.proj.bias": t(dim),
        "beit3.encoder.embed_positions.A.weight": t(grid * grid + 3, dim),
        "beit3.encoder.embed_positions.B.weight": t(1024, dim),
    }
    for i in range(depth):
        p = f"beit3.encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            for e in "AB":
                sd[f"{p}self_attn.{proj}.{e}.weight"], sd[f"{p}self_attn.{proj}.{e}.bias"] = t(dim, dim), t(dim)
        for ln in ("self_attn.inner_attn_ln", "self_attn_layer_norm"):
            for e in "AB":
                sd[f"{p}{ln}.{e}.weight"], sd[f"{p}{ln}.{e}.bias"] = t(dim), t(dim)
        for e in "AB":
            sd[f"{p}ffn.{e}.fc1.weight"], sd[f"{p}ffn.{e}.fc1.bias"] = t(ffn, dim), t(ffn)
            sd[f"{p}ffn.{e}.fc2.weight"], sd[f"{p}ffn.{e}.fc2.bias"] = t(dim, ffn), t(dim)
            sd[f"{p}ffn.{e}.ffn_layernorm.weight"], sd[f"{p}ffn.{e}.ffn_layernorm.bias"] = t(ffn), t(ffn)
        for e in "AB":
            sd[f"{p}final_layer_norm.{e}.weight"], sd[f"{p}final_layer_norm.{e}.bias"] = t(dim), t(dim)
    if final_norm:
        for e in "AB":
            sd[f"beit3.encoder.layer_norm.{e}.weight"], sd[f"beit3.encoder.layer_norm.{e}.bias"] = t(dim), t(dim)
    return sd
