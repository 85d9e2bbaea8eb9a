"""The registered BEiT-3 sizes, as data. Each entry is a set of Beit3Config fields.

base/large follow the released unilm configs (layout "unilm", so the official checkpoints load);
giant is the paper's (never released) Multiway Transformer: shared attention, VL experts in the top 3 layers.
"""

MODEL_CONFIGS: dict[str, dict] = {
    # CPU tests and the demo.
    "beit3_tiny_patch16_224": dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768),
    "beit3_tiny_patch8_64": dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, img_size=64, patch_size=8),
    # microsoft/unilm beit3 `_get_base_config` / `_get_large_config`.
    "beit3_base_patch16_224": dict(depth=12, embed_dim=768, num_heads=12, mlp_dim=3072),
    "beit3_large_patch16_224": dict(depth=24, embed_dim=1024, num_heads=16, mlp_dim=4096),
    # Paper, Table 1: 40 layers, hidden 1408, FFN 6144, 16 heads, patch 14; 1.9B parameters.
    "beit3_giant_patch14_224": dict(
        depth=40, embed_dim=1408, num_heads=16, mlp_dim=6144, patch_size=14, layout="paper", num_vl_layers=3
    ),
}
