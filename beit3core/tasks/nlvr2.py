"""NLVR2-style visual reasoning: one sentence, two images, true or false.

Released as `BEiT3ForVisualReasoning`: the batch is doubled (left images then right images, the text repeated),
each pass is pooled to [vision CLS || text <s>] = `x[:, 0] || x[:, split]`, the two pools of a pair are
concatenated to (B, 4d), and `head` = TwoLayerMLP: norm1 LN(4d) -> dense1 Linear(4d, 2d) -> norm2 LN(2d) -> GELU
-> dense2 Linear(2d, 2); both dense layers are scaled by 0.001 after init. Loss: cross-entropy. Metric: accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.tasks.common import (
    backbone_dim,
    eval_outputs,
    init_head_weights,
    scale_linear_,
)
from beit3core.tasks.data import Collator

NAME = "nlvr2"
SELECTION_METRIC = "acc"
METRICS = ("acc",)


class TwoLayerMLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_features)
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.norm2 = nn.LayerNorm(hidden_features)
        self.act = nn.GELU()
        self.dense2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.act(self.norm2(self.dense1(self.norm1(x)))))


class NLVR2Model(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int = 2, head_init_scale: float = 0.001):
        super().__init__()
        dim = backbone_dim(backbone)
        self.backbone = backbone
        self.head = TwoLayerMLP(dim * 4, dim * 2, num_classes)
        self.head.apply(init_head_weights)
        scale_linear_(self.head.dense1, head_init_scale)
        scale_linear_(self.head.dense2, head_init_scale)

    def forward(
        self,
        image_left: torch.Tensor,
        image_right: torch.Tensor,
        text_ids: torch.Tensor,
        text_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        batch = image_left.shape[0]
        out = self.backbone(
            image=torch.cat([image_left, image_right], dim=0),
            text_ids=torch.cat([text_ids, text_ids], dim=0),
            text_padding_mask=torch.cat([text_padding_mask, text_padding_mask], dim=0),
        )
        pooled = torch.cat([out.hidden[:, 0], out.hidden[:, out.split]], dim=-1)  # (2B, 2d)
        pair = torch.cat([pooled[:batch], pooled[batch:]], dim=-1)  # (B, 4d)
        return self.head(pair)


def nlvr2_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def build(backbone: nn.Module, header: dict, settings) -> NLVR2Model:
    return NLVR2Model(backbone, head_init_scale=settings.head_init_scale)


def targets(rows: list[dict], vocab_index: dict[str, int]) -> dict:
    return {"labels": torch.tensor([int(bool(r["label"])) for r in rows], dtype=torch.long)}


def collator(tokenizer, max_len: int, header: dict) -> Collator:
    return Collator(tokenizer, max_len, text_field="sentence", targets=targets)


def _logits(model: NLVR2Model, batch: dict) -> torch.Tensor:
    return model(batch["image_left"], batch["image_right"], batch["text_ids"], batch["text_padding_mask"])


def loss(model: NLVR2Model, batch: dict, ctx) -> torch.Tensor:
    return nlvr2_loss(_logits(model, batch), batch["labels"])


@torch.no_grad()
def predict(model: NLVR2Model, ev) -> dict[str, list]:
    """This share's count of correct answers (per batch) and its first `ev.num_samples` sample predictions."""
    out: dict[str, list] = {"correct": [], "samples": []}
    for batch, logits in eval_outputs(NAME, ev, collator(ev.tokenizer, ev.settings.max_len, ev.header),
                                      lambda b: _logits(model, b)):
        preds = logits.argmax(1)
        out["correct"].append(int((preds == batch["labels"]).sum()))
        for row, pred, gold in zip(batch["rows"], preds.tolist(), batch["labels"].tolist()):
            if len(out["samples"]) < ev.num_samples:
                out["samples"].append({"images": [row["image_left"], row["image_right"]], "lines": [
                    ("sentence", row["sentence"]), ("label", str(bool(gold))), ("predicted", str(bool(pred)))],
                    "ok": pred == gold})
    return out


def score(out: dict[str, list], ev) -> tuple[dict, list[dict]]:
    acc = 100.0 * sum(out["correct"]) / max(1, ev.num_rows)
    return {"acc": acc, "num_examples": ev.num_rows}, out["samples"][:ev.num_samples]
