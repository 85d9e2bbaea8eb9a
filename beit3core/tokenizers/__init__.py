"""Tokenizers: SentencePiece text ids, VQ-KD visual ids, and block-wise masking.

    from beit3core.tokenizers import TextTokenizer, VisualTokenizer, BlockMaskGenerator

Names load lazily, so `import beit3core.tokenizers.text` (e.g. in a tokenizing worker process) does not pay
for torch.
"""

from beit3core._lazy import lazy_getattr

_LAZY = {
    "TextTokenizer": "beit3core.tokenizers.text",
    "encode_corpus": "beit3core.tokenizers.text",
    "BlockMaskGenerator": "beit3core.tokenizers.block_masking",
    "VisualTokenizer": "beit3core.tokenizers.visual",
    "VQKD": "beit3core.tokenizers.vqkd",
    "VQKDConfig": "beit3core.tokenizers.vqkd",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
