"""The masked-data-modeling objective: the backbone plus an MLM head and an MIM head, one summed loss.

BEiT-3 pretrains one Multiway Transformer with a single task: predict masked tokens.
- MLM: masked text tokens (monomodal text, and the text of image-text pairs) predict SentencePiece ids
  through `mlm_head` (Linear(D, vocab_size), the name unilm's captioning model uses for its LM head).
- MIM: masked image patches (monomodal images, and the images of pairs) predict the visual tokenizer's
  code ids through `mim_head` (Linear(D, codebook_size), as BEiT v2's `lm_head`).

Routing (not published, microsoft/unilm#1225): every step runs three forward passes -- image-only (vision
experts), text-only (language experts) and fused image-text -- and the loss is the plain sum of the four
masked-prediction losses (text MLM, pair MLM, image MIM, pair MIM), each a mean over its masked positions.
Heads see only masked positions, which keeps the vocabulary projection small.

One `forward(batch)` call per step does all three passes, so DDP and FSDP see one forward per backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.pretrain.text_masking import IGNORE

STREAMS = ("images", "texts", "pairs")


@dataclass
class PretrainOutput:
    loss: torch.Tensor  # the summed loss (differentiable)
    stats: dict[str, torch.Tensor]  # detached per-part losses and correct/total counts


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> mean = std = 0.5 normalised float (BEiT-3 fine-tuning and
    the VQ-KD input convention)."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return (x - 0.5) / 0.5


def masked_prediction(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy of `head` on the positions whose label is not IGNORE.

    hidden (B, N, D), labels (B, N). Returns (mean loss, correct count, predicted count). With nothing to
    predict the loss is an exact zero that still depends on the head, so every parameter takes part in the
    backward pass (DDP requires it).
    """
    keep = labels != IGNORE
    selected = hidden[keep]
    logits = head(selected).float()
    target = labels[keep]
    if target.numel() == 0:
        return logits.sum() * 0.0, target.new_zeros(()), target.new_zeros(())
    loss = F.cross_entropy(logits, target)
    correct = (logits.argmax(-1) == target).sum()
    return loss, correct.detach(), torch.tensor(target.numel(), device=target.device)


class Beit3ForPretraining(nn.Module):
    """Backbone + heads. `backbone` is a `beit3core.models.Beit3Model` (its state-dict keys get `backbone.`).

    Pretraining starts from scratch, so the backbone is re-initialised as the paper says
    (`Beit3Model.init_for_pretraining`); a resumed or exported state dict loads over it."""

    def __init__(self, backbone: nn.Module, vocab_size: int, codebook_size: int, *, position_init: str = "small"):
        super().__init__()
        self.backbone = backbone
        backbone.init_for_pretraining(position_init=position_init)
        dim = backbone.config.embed_dim
        self.mlm_head = nn.Linear(dim, vocab_size)
        self.mim_head = nn.Linear(dim, codebook_size)
        for head in (self.mlm_head, self.mim_head):
            nn.init.trunc_normal_(head.weight, std=0.02, a=-0.02, b=0.02)
            nn.init.zeros_(head.bias)

    @property
    def config(self):
        return self.backbone.config

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def _mim(self, hidden, labels, mask, name, parts):
        """hidden: the vision tokens [cls, patches]; labels: visual ids; MIM on masked patches only."""
        patch_labels = labels.masked_fill(~mask, IGNORE)
        parts[name] = masked_prediction(self.mim_head, hidden[:, 1:], patch_labels)

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> PretrainOutput:
        """batch: {"images": {image, image_mask, image_labels}, "texts": {text_ids, text_padding_mask,
        text_labels}, "pairs": {all six}}; streams may be missing or empty."""
        parts: dict[str, tuple] = {}
        b = batch.get("images")
        if b and b["image"].shape[0]:
            out = self.backbone(image=normalize_image(b["image"]), image_mask=b["image_mask"])
            self._mim(out.hidden, b["image_labels"], b["image_mask"], "image_mim", parts)
        b = batch.get("texts")
        if b and b["text_ids"].shape[0]:
            out = self.backbone(text_ids=b["text_ids"], text_padding_mask=b["text_padding_mask"])
            parts["text_mlm"] = masked_prediction(self.mlm_head, out.hidden, b["text_labels"])
        b = batch.get("pairs")
        if b and b["image"].shape[0]:
            out = self.backbone(image=normalize_image(b["image"]), image_mask=b["image_mask"],
                                text_ids=b["text_ids"], text_padding_mask=b["text_padding_mask"])
            self._mim(out.hidden[:, :out.split], b["image_labels"], b["image_mask"], "pair_mim", parts)
            parts["pair_mlm"] = masked_prediction(self.mlm_head, out.hidden[:, out.split:], b["text_labels"])
        if not parts:
            raise ValueError("pretraining batch holds no samples")
        loss = sum(p[0] for p in parts.values())
        stats = {}
        for name, (part_loss, correct, total) in parts.items():
            stats[f"{name}_loss"] = part_loss.detach().float()
            stats[f"{name}_correct"] = correct.float()
            stats[f"{name}_total"] = total.float()
        return PretrainOutput(loss=loss, stats=stats)


def accuracies(stats: dict[str, float]) -> dict[str, float]:
    """mlm_acc (text + pair text), mim_acc (images + pair images) and per-part accuracies from summed
    correct/total counts; parts that predicted nothing are left out."""
    out = {}
    for name, parts in (("mlm_acc", ("text_mlm", "pair_mlm")), ("mim_acc", ("image_mim", "pair_mim"))):
        correct = sum(stats.get(f"{p}_correct", 0.0) for p in parts)
        total = sum(stats.get(f"{p}_total", 0.0) for p in parts)
        if total:
            out[name] = correct / total
    for part in ("text_mlm", "pair_mlm", "image_mim", "pair_mim"):
        total = stats.get(f"{part}_total", 0.0)
        if total:
            out[f"{part}_acc"] = stats[f"{part}_correct"] / total
    return out
