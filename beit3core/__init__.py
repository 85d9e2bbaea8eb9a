"""beit3core: the BEiT-3 library (model, tokenizers, data, pretraining objective, tasks, checkpoint I/O).

Heavy dependencies (torch, timm, great_expectations) load on first use, so `import beit3core.errors` or
`beit3 --help` stays fast. The public model API is re-exported here lazily:

    import beit3core
    model = beit3core.create_model("beit3_base_patch16_224")
"""

from beit3core._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "create_model": "beit3core.factory",
    "list_models": "beit3core.models",
    "Beit3Config": "beit3core.models",
    "count_parameters": "beit3core.models.counting",
    "convert_unilm_state_dict": "beit3core.checkpoint",
    "load_pretrained": "beit3core.checkpoint",
    "save_model": "beit3core.checkpoint",
    "load_model": "beit3core.checkpoint",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
