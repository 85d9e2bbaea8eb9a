"""Text masking for masked language modeling (BERT recipe, as BEiT-3 uses for text and image-text pairs).

Of the maskable tokens (everything but <s>, <pad> and </s>), round(ratio * n) -- at least one -- are chosen;
each chosen token becomes <mask> with probability 0.8, a random ordinary token with 0.1, and stays as it
is with 0.1. The labels hold the original id at chosen positions and IGNORE (-100) elsewhere, so the
loss is taken on the chosen positions only. Image patches are masked block-wise by
`beit3core.tokenizers.BlockMaskGenerator`.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # label of positions that are not predicted (torch cross_entropy's ignore_index)
NUM_SPECIAL = 4  # <s>=0 <pad>=1 </s>=2 <unk>=3; ordinary pieces start at 4
NEVER_MASKED = (0, 1, 2)  # <s>, <pad>, </s>


def mask_text(
    ids: np.ndarray,
    ratio: float,
    mask_id: int,
    rng: np.random.Generator,
    *,
    never_masked: tuple[int, ...] = NEVER_MASKED,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one token sequence. Returns (inputs, labels), both int64 arrays shaped like `ids`.

    Random replacements are drawn from the ordinary pieces [NUM_SPECIAL, mask_id), so neither a special id
    nor <mask> itself is ever inserted.
    """
    ids = np.asarray(ids, dtype=np.int64)
    inputs = ids.copy()
    labels = np.full_like(ids, IGNORE)
    candidates = np.flatnonzero(~np.isin(ids, never_masked))
    if len(candidates) == 0 or ratio <= 0:
        return inputs, labels
    count = min(len(candidates), max(1, int(round(ratio * len(candidates)))))
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    labels[chosen] = ids[chosen]
    action = rng.random(count)
    to_mask = chosen[action < 0.8]
    to_random = chosen[(action >= 0.8) & (action < 0.9)]
    inputs[to_mask] = mask_id
    if len(to_random) and mask_id > NUM_SPECIAL:
        inputs[to_random] = rng.integers(NUM_SPECIAL, mask_id, size=len(to_random))
    return inputs, labels
