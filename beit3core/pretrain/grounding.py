"""Does the pretrained model read the image? Pair MLM on held-out pairs, with each text's own image and with
another pair's image.

MLM accuracy on image-text pairs can be high from the language prior alone (caption grammar, frequent
words), so it does not show whether the fused pass uses the image. This check masks the held-out pair texts
as pretraining does (no image masking) and predicts them twice: once with the pair's own image, once with
the image of the next pair (another image: one caption per image), `draws` times with different masks. `loss_gain`
(mismatched - matched mean cross-entropy) and `acc_gain` (matched - mismatched accuracy) are ~0 for a model
that ignores the image; the loss is the steadier of the two on a few hundred pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from beit3core.pretrain.data import MaskingConfig, text_inputs
from beit3core.pretrain.model import (
    Beit3ForPretraining,
    masked_prediction,
    normalize_image,
)

_RNG_STREAM = 99  # masks of the check: independent of the training streams' generators


@torch.no_grad()
def pair_grounding(model: Beit3ForPretraining, images: torch.Tensor, texts: list[np.ndarray], masking: MaskingConfig,
                   *, draws: int = 4, batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Matched/mismatched MLM loss and accuracy, and their gains, over held-out pairs: `images` uint8
    (n, 3, S, S) and the token ids of their texts (`beit3core.pretrain.data.read_pairs`; n >= 2)."""
    n = len(texts)
    if n < 2 or len(images) != n:
        raise ValueError(f"pair grounding needs at least 2 pairs with one image each, got {n} and {len(images)}")
    was_training = model.training
    model.eval()
    sums = np.zeros((2, 3))  # [matched, mismatched] x [loss * predicted, correct, predicted]
    for start in range(0, n * draws, batch_size):
        slots = np.arange(start, min(start + batch_size, n * draws))
        rows = slots % n
        rngs = [np.random.default_rng([seed, _RNG_STREAM, int(s)]) for s in slots]
        batch = text_inputs([texts[r] for r in rows], masking.pair_text_ratio, masking.mask_id, rngs)
        for k, image in enumerate((images[rows], images[(rows + 1) % n])):
            out = model.backbone(image=normalize_image(image).to(device), text_ids=batch["text_ids"].to(device),
                                 text_padding_mask=batch["text_padding_mask"].to(device))
            loss, correct, total = masked_prediction(model.mlm_head, out.hidden[:, out.split:],
                                                     batch["text_labels"].to(device))
            sums[k] += (float(loss) * float(total), float(correct), float(total))
    model.train(was_training)
    predicted = np.maximum(sums[:, 2], 1)
    (loss_m, loss_x), (acc_m, acc_x) = (sums[:, 0] / predicted).tolist(), (sums[:, 1] / predicted).tolist()
    return {"pairs": n, "draws": draws, "matched_loss": loss_m, "mismatched_loss": loss_x, "loss_gain": loss_x - loss_m,
            "matched_acc": acc_m, "mismatched_acc": acc_x, "acc_gain": acc_m - acc_x}


def describe_grounding(result: dict) -> str:
    """One line for logs and digests."""
    return (f"grounding on {result['pairs']} {result.get('split', 'held-out')} pairs: pair-MLM loss "
            f"{result['matched_loss']:.4f} with their own image, {result['mismatched_loss']:.4f} with another's "
            f"(gain {result['loss_gain']:+.4f})")
