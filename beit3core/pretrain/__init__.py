"""The BEiT-3 masked-data-modeling objective: heads, text masking, loss/accuracies, the three-stream mixer.

    from beit3core.pretrain import Beit3ForPretraining, open_loader, mask_text

The trainer loop lives in `beit3train.pretrain`.
"""

from beit3core._lazy import lazy_getattr

_LAZY = {
    "Beit3ForPretraining": "beit3core.pretrain.model",
    "PretrainOutput": "beit3core.pretrain.model",
    "masked_prediction": "beit3core.pretrain.model",
    "normalize_image": "beit3core.pretrain.model",
    "accuracies": "beit3core.pretrain.model",
    "mask_text": "beit3core.pretrain.text_masking",
    "IGNORE": "beit3core.pretrain.text_masking",
    "MaskingConfig": "beit3core.pretrain.data",
    "StreamSource": "beit3core.pretrain.data",
    "stream_source": "beit3core.pretrain.data",
    "open_loader": "beit3core.pretrain.data",
    "lane_loader": "beit3core.pretrain.data",
    "find_stream_datasets": "beit3core.pretrain.data",
    "pair_grounding": "beit3core.pretrain.grounding",
    "describe_grounding": "beit3core.pretrain.grounding",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
