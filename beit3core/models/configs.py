"""The registered BEiT-3 sizes, as data. Each entry is a set of Beit3Config fields.

base/large follow the released unilm configs (layout "unilm", so the official checkpoints load);
giant is the paper's (never released) Multiway Transformer: shared attention, VL experts in the top 3 layers.
"""

MODEL_CONFIGS: dict[str, dict] = {
    # CPU tests and the demo.
    "beit3_tiny_patch16_224": dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768),
    "beit3_tiny_patch8_64": dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, img_size=64, patch_size=8),
    # The demo's model (params.yaml): tiny's depth at 2/3 of its width, 16-px patches (4x4 per 64-px image), about
    # 3x less compute a step than beit3_tiny_patch8_64 (docs/pretraining.md, "The demo's model").
    "beit3_mini_patch16_64": dict(depth=4, embed_dim=128, num_heads=2, mlp_dim=512, img_size=64, patch_size=16),
    # microsoft/unilm beit3 `_get_base_config` / `_get_large_config`.
    "beit3_base_patch16_224": dict(depth=12, embed_dim=768, num_heads=12, mlp_dim=3072),
    "beit3_large_patch16_224": dict(depth=24, embed_dim=1024, num_heads=16, mlp_dim=4096),
    # Paper, Table 1: 40 layers, hidden 1408, FFN 6144, 16 heads, patch 14; 1.9B parameters.
    "beit3_giant_patch14_224": dict(
        depth=40, embed_dim=1408, num_heads=16, mlp_dim=6144, patch_size=14, layout="paper", num_vl_layers=3
    ),
}

# Upper bounds for a config read from an untrusted folder, checked before any tensor is allocated: a hostile
# config.json (depth 10**6, embed_dim 10**9) must be refused, not exhaust memory. They admit every entry above
# (giant: 1.85B parameters) and the released checkpoints with room to spare.
LIMITS: dict[str, int] = {
    "depth": 256, "embed_dim": 16384, "num_heads": 1024, "mlp_dim": 65536, "vocab_size": 1 << 20,
    "text_positions": 65536, "img_size": 4096, "patch_size": 256, "in_chans": 64,
}
MAX_GRID = 256  # patches per image side: the vision position table has grid**2 rows
MAX_PARAMETERS = 4_000_000_000  # 16 GB of float32 weights; giant's upper estimate is 2.7B


def estimated_parameters(c) -> int:
    """An upper estimate of a Beit3Config's parameter count, from its fields alone (no module is built):
    per layer two attention experts and three FFN experts, the most either layout has, plus the embeddings."""
    d, m = c.embed_dim, c.mlp_dim
    per_layer = 2 * (4 * d * d + 4 * d) + 3 * (2 * d * m + m + d) + 16 * d
    grid = c.img_size // c.patch_size
    embeddings = (c.vocab_size + c.text_positions + grid * grid + 2 + c.in_chans * c.patch_size**2) * d
    return c.depth * per_layer + embeddings + 4 * d


def limit_error(c) -> str | None:
    """Why a config's fields or total size exceed the bounds above (one line naming the field), or None."""
    for name, limit in LIMITS.items():
        if getattr(c, name) > limit:
            return f"Beit3Config.{name}: {getattr(c, name)} is above the limit {limit}"
    if c.patch_size > 0 and c.img_size // c.patch_size > MAX_GRID:
        return f"Beit3Config.img_size: {c.img_size // c.patch_size} patches per side is above the limit {MAX_GRID}"
    total = estimated_parameters(c)
    if total > MAX_PARAMETERS:
        return (f"Beit3Config: about {total / 1e9:.1f}B parameters (depth {c.depth}, embed_dim {c.embed_dim}, "
                f"mlp_dim {c.mlp_dim}, vocab_size {c.vocab_size}) is above the limit {MAX_PARAMETERS / 1e9:.0f}B")
    return None
