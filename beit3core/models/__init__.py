"""The BEiT-3 model family: config, model, registry, parameter counts."""

from beit3core.models.beit3 import (
    Beit3Config,
    Beit3KVCache,
    Beit3Model,
    Beit3Output,
    Block,
    ConfigError,
    UnknownConfigField,
    count_parameters,
)
from beit3core.models.registry import create_model, is_model, list_models, register_model

__all__ = [
    "Beit3Config", "Beit3KVCache", "Beit3Model", "Beit3Output", "Block", "ConfigError", "UnknownConfigField",
    "count_parameters", "create_model", "is_model", "list_models", "register_model",
]
