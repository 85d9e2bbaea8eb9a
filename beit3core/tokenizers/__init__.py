"""Tokenizers: SentencePiece text ids, VQ-KD visual ids, and block-wise masking.

    from beit3core.tokenizers import TextTokenizer, VisualTokenizer, BlockMaskGenerator

Names load lazily, so `import beit3core.tokenizers.text` (e.g. in a tokenizing worker process) does not pay
for torch.
"""

import importlib

_LAZY = {
    "TextTokenizer": "beit3core.tokenizers.text",
    "encode_corpus": "beit3core.tokenizers.text",
    "BlockMaskGenerator": "beit3core.tokenizers.masking",
    "VisualTokenizer": "beit3core.tokenizers.visual",
    "VQKD": "beit3core.tokenizers.vqkd",
    "VQKDConfig": "beit3core.tokenizers.vqkd",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'beit3core.tokenizers' has no attribute {name!r}")
