"""Small single-concept building blocks of the Multiway Transformer (one concept per file)."""

from beit3core.layers.attention import Attention
from beit3core.layers.config import set_fused_attn, use_fused_attn
from beit3core.layers.drop import DropPath, drop_path, drop_path_rates
from beit3core.layers.mlp import Mlp
from beit3core.layers.multiway import Multiway, Shared
from beit3core.layers.patch_embed import PatchEmbed
from beit3core.layers.pos_embed import resample_abs_pos_embed

__all__ = [
    "Attention", "DropPath", "Mlp", "Multiway", "PatchEmbed", "Shared", "drop_path", "drop_path_rates",
    "resample_abs_pos_embed", "set_fused_attn", "use_fused_attn",
]
