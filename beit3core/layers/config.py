"""The one switch between fused (scaled_dot_product_attention) and plain reference attention.

`BEIT3_FUSED_ATTN=0` in the environment selects the reference path; `set_fused_attn()` changes the default
for attention modules built afterwards. Each module reads the switch once, in `__init__`.
"""

import os

_FUSED_ATTN = os.environ.get("BEIT3_FUSED_ATTN", "1").strip().lower() not in ("0", "false", "no", "off")


def use_fused_attn() -> bool:
    return _FUSED_ATTN


def set_fused_attn(enabled: bool) -> None:
    global _FUSED_ATTN
    _FUSED_ATTN = bool(enabled)
