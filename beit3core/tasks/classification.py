"""Image classification (ImageNet layout): mean of the patch tokens -> `fc_norm` LayerNorm -> `head` Linear.

Released as `BEiT3ForImageClassification` (microsoft/unilm `beit3/modeling_finetune.py`): the vision-only pass,
the CLS token dropped before the mean, the head weight and bias scaled by 0.001 after init. The loss is
cross-entropy with label smoothing 0.1, or soft-target cross-entropy when mixup/cutmix produced soft labels.
Metric: top-1 / top-5 accuracy (selection key `acc1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.tasks.common import (
    backbone_dim,
    eval_outputs,
    init_head_weights,
    need,
    scale_linear_,
)
from beit3core.tasks.data import Collator
from beit3core.tasks.metrics import topk_accuracy

NAME = "classification"
SELECTION_METRIC = "acc1"
METRICS = ("acc1", "acc5")


class ClassificationModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head_init_scale: float = 0.001):
        super().__init__()
        dim = backbone_dim(backbone)
        self.backbone = backbone
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.fc_norm.apply(init_head_weights)
        self.head.apply(init_head_weights)
        scale_linear_(self.head, head_init_scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.backbone(image=image)
        patches = out.hidden[:, 1 : out.split]  # the CLS token is dropped, as released
        return self.head(self.fc_norm(patches.mean(dim=1)))


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Hard labels (B,) -> label-smoothed CE; soft labels (B, C) from mixup/cutmix -> soft-target CE."""
    if target.dim() == 2:
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def build(backbone: nn.Module, header: dict, settings) -> ClassificationModel:
    return ClassificationModel(backbone, len(need(header, "labels")), settings.head_init_scale)


def targets(rows: list[dict], label_index: dict[str, int]) -> dict:
    return {"labels": torch.tensor([label_index[r["label"]] for r in rows], dtype=torch.long)}


def collator(tokenizer, max_len: int, header: dict) -> Collator:
    return Collator(tokenizer, max_len, targets=targets, vocab=header.get("labels"))


def loss(model: ClassificationModel, batch: dict, ctx) -> torch.Tensor:
    target = batch["soft_labels"] if "soft_labels" in batch else batch["labels"]
    return classification_loss(model(batch["image"]), target, ctx.settings.label_smoothing)


@torch.no_grad()
def predict(model: ClassificationModel, ev) -> dict[str, list]:
    """This share's logits and labels (per batch) and its first `ev.num_samples` sample predictions."""
    labels = ev.header["labels"]
    out: dict[str, list] = {"logits": [], "labels": [], "samples": []}
    for batch, logits in eval_outputs(NAME, ev, collator(ev.tokenizer, ev.settings.max_len, ev.header),
                                      lambda b: model(b["image"]).float().cpu()):
        out["logits"].append(logits)
        out["labels"].append(batch["labels"].cpu())
        for row, pred, gold in zip(batch["rows"], logits.argmax(1).tolist(), batch["labels"].tolist()):
            if len(out["samples"]) < ev.num_samples:
                out["samples"].append({"images": [row["image"]], "lines": [("label", labels[gold]),
                                       ("predicted", labels[pred])], "ok": pred == gold})
    return out


def score(out: dict[str, list], ev) -> tuple[dict, list[dict]]:
    metrics = topk_accuracy(torch.cat(out["logits"]), torch.cat(out["labels"]), ks=(1, 5))
    metrics["num_examples"] = ev.num_rows
    return metrics, out["samples"][:ev.num_samples]
