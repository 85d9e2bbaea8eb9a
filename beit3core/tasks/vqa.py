"""Visual question answering (VQAv2 layout): a pooler on the vision CLS, an MLP to the answer vocabulary.

Released as `BEiT3ForVisualQuestionAnswering`: fusion pass (image + question), `pooler` = LN -> Linear(d, d) ->
tanh on `x[:, 0]`, then `head` = Linear(d, 2d), LN(2d), GELU, Linear(2d, num_answers) (keys head.0, head.1,
head.3). Targets: per question, each vocabulary answer gets the released score of how many of the annotator
answers match it after the VQA evaluation's normalisation (0, 0.3, 0.6, 0.9, then 1.0 for four or more;
beit3core.data.importers.vqa_answers). Loss: BCE-with-logits (mean) x num_answers on these soft scores, i.e.
summed over answers and averaged over the batch. Metric: VQA score, the soft score of the arg-max answer.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.data.importers.vqa_answers import answer_score, normalize_answer
from beit3core.tasks.common import backbone_dim, eval_outputs, init_head_weights, need
from beit3core.tasks.data import Collator

NAME = "vqa"
SELECTION_METRIC = "vqa_score"
METRICS = ("vqa_score",)


def soft_targets(raw_answers: list[str], answer_index: dict[str, int]) -> dict[int, float]:
    """Annotator answers -> {answer id: soft score}: answers and vocabulary entries compared after the VQA
    evaluation's normalisation (a released vocabulary already is normalised), scored by how many gave each."""
    index: dict[str, int] = {}
    for answer, i in answer_index.items():
        index.setdefault(normalize_answer(answer), i)
    counts = Counter(normalize_answer(a) for a in raw_answers)
    return {index[a]: answer_score(c) for a, c in counts.items() if a in index}


class Pooler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.norm(cls)))


class VQAModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_answers: int):
        super().__init__()
        dim = backbone_dim(backbone)
        self.backbone = backbone
        self.pooler = Pooler(dim)
        self.head = nn.Sequential(
            nn.Linear(dim, dim * 2), nn.LayerNorm(dim * 2), nn.GELU(), nn.Linear(dim * 2, num_answers)
        )
        self.pooler.apply(init_head_weights)
        self.head.apply(init_head_weights)

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_padding_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(image=image, text_ids=text_ids, text_padding_mask=text_padding_mask)
        return self.head(self.pooler(out.hidden[:, 0]))


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over all entries, times the number of answers (as released)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


def vqa_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-question VQA score: the soft target of the arg-max answer."""
    return targets.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)


def build(backbone: nn.Module, header: dict, settings) -> VQAModel:
    return VQAModel(backbone, len(need(header, "answers")))


def targets(rows: list[dict], answer_index: dict[str, int]) -> dict:
    """(B, num_answers) soft scores of each row's annotator answers."""
    soft = torch.zeros(len(rows), len(answer_index))
    for i, r in enumerate(rows):
        for a, s in soft_targets(r["answers"], answer_index).items():
            soft[i, a] = s
    return {"targets": soft}


def collator(tokenizer, max_len: int, header: dict) -> Collator:
    return Collator(tokenizer, max_len, text_field="question", targets=targets, vocab=header.get("answers"))


def loss(model: VQAModel, batch: dict, ctx) -> torch.Tensor:
    return vqa_loss(model(batch["image"], batch["text_ids"], batch["text_padding_mask"]), batch["targets"])


@torch.no_grad()
def predict(model: VQAModel, ev) -> dict[str, list]:
    """This share's per-question scores (per batch) and its first `ev.num_samples` sample predictions."""
    answers = ev.header["answers"]
    out: dict[str, list] = {"scores": [], "samples": []}
    for batch, logits in eval_outputs(NAME, ev, collator(ev.tokenizer, ev.settings.max_len, ev.header),
                                      lambda b: model(b["image"], b["text_ids"], b["text_padding_mask"]).float()):
        s = vqa_scores(logits, batch["targets"]).cpu()
        out["scores"].append(s)
        for row, pred, row_score in zip(batch["rows"], logits.argmax(1).tolist(), s.tolist()):
            if len(out["samples"]) < ev.num_samples:
                given = Counter(normalize_answer(a) for a in row["answers"]).most_common(1)
                common = given[0][0] if given else ""
                lines = [("question", row["question"]), ("answers", common), ("predicted", answers[pred]),
                         ("score", f"{row_score:.1f}")]
                out["samples"].append({"images": [row["image"]], "lines": lines, "ok": row_score > 0})
    return out


def score(out: dict[str, list], ev) -> tuple[dict, list[dict]]:
    scores = torch.cat(out["scores"])
    return {"vqa_score": 100.0 * scores.mean().item(), "num_examples": ev.num_rows}, out["samples"][:ev.num_samples]
