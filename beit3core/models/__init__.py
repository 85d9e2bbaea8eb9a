"""The BEiT-3 model family: config and model (beit3.py), size table (configs.py), name registry (registry.py).

`create_model` lives one level up in `beit3core.factory` (it also loads checkpoints) and parameter counting
in `beit3core.models.counting`; both are re-exported by `beit3core`.
"""

from beit3core.models.beit3 import (
    POSITION_INITS,
    Beit3Config,
    Beit3KVCache,
    Beit3Model,
    Beit3Output,
    Block,
    ConfigError,
    UnknownConfigField,
)
from beit3core.models.registry import get_builder, is_model, list_models, register_model

__all__ = [
    "POSITION_INITS", "Beit3Config", "Beit3KVCache", "Beit3Model", "Beit3Output", "Block", "ConfigError",
    "UnknownConfigField",
    "get_builder", "is_model", "list_models", "register_model",
]
