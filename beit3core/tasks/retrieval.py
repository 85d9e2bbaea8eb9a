"""Image-text retrieval (COCO / Flickr30k layout): a dual encoder with a contrastive loss.

Released as `BEiT3ForRetrieval`: two passes, image-only (vision CLS) and text-only (text <s>), bias-free
projections `vision_head` / `language_head`, L2-normalised embeddings, and a learnable temperature
`logit_scale` = log(1/0.07), used as exp() and never clamped. Loss: CLIP loss with the negatives gathered
across ranks (all_gather with gradient), labels arange(N) + N*rank, (CE_i2t + CE_t2i) / 2.
Evaluation: one pass over the split, image embeddings de-duplicated by image_id, scores = img @ txt.T,
recall@1/5/10 both directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.tasks.common import backbone_dim, init_head_weights, to_device
from beit3core.tasks.data import Collator, ImageIndex, image_text_batches, joined_index
from beit3core.tasks.metrics import retrieval_recall

NAME = "retrieval"
SELECTION_METRIC = "average_score"
METRICS = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score")


class RetrievalModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        dim = backbone_dim(backbone)
        self.backbone = backbone
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.vision_head.apply(init_head_weights)
        self.language_head.apply(init_head_weights)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        out = self.backbone(image=image)
        return F.normalize(self.vision_head(out.hidden[:, 0]), dim=-1)

    def encode_text(self, text_ids: torch.Tensor, text_padding_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(text_ids=text_ids, text_padding_mask=text_padding_mask)
        return F.normalize(self.language_head(out.hidden[:, 0]), dim=-1)

    def forward(
        self,
        image: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(image embeddings, text embeddings, logit_scale). The temperature goes through forward so that
        DDP sees every parameter used inside it."""
        img = self.encode_image(image) if image is not None else None
        txt = self.encode_text(text_ids, text_padding_mask) if text_ids is not None else None
        return img, txt, self.logit_scale


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """CLIP loss over local rows against all ranks' columns.

    `gather(x)` must return the rank-ordered concatenation of every rank's `x` with the gradient flowing back
    (beit3train.distributed.all_gather); None means a single process.
    """
    all_img = gather(image_emb) if gather is not None else image_emb
    all_txt = gather(text_emb) if gather is not None else text_emb
    scale = logit_scale.exp()
    logits_i2t = scale * image_emb @ all_txt.t()
    logits_t2i = scale * text_emb @ all_img.t()
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + image_emb.shape[0] * rank
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2


def build(backbone: nn.Module, header: dict, settings) -> RetrievalModel:
    return RetrievalModel(backbone)


def targets(rows: list[dict], vocab_index: dict[str, int]) -> dict:
    return {}  # the i-th caption matches the i-th image (contrastive_loss builds the labels)


def collator(tokenizer, max_len: int, header: dict) -> Collator:
    return Collator(tokenizer, max_len, text_field="caption", targets=targets)


def loss(model: RetrievalModel, batch: dict, ctx) -> torch.Tensor:
    img, txt, logit_scale = model(batch["image"], batch["text_ids"], batch["text_padding_mask"])
    return contrastive_loss(img, txt, logit_scale, gather=ctx.gather, rank=ctx.rank)


@torch.no_grad()
def predict(model: RetrievalModel, ev) -> dict[str, list]:
    """This share's images (in order of first use) and rows, with their embeddings (per batch)."""
    index, img, txt = ImageIndex(), [], []
    for kind, batch in image_text_batches(NAME, ev.stream("eval retrieval"), index, uri=ev.uri,
                                          img_size=ev.settings.img_size, batch_size=ev.settings.eval_batch_size,
                                          texts=collator(ev.tokenizer, ev.settings.max_len, ev.header)):
        batch = to_device(batch, ev.device)
        if kind == "images":
            img.append(model.encode_image(batch["image"]).float().cpu())
        else:
            txt.append(model.encode_text(batch["text_ids"], batch["text_padding_mask"]).float().cpu())
    return {"image_rows": index.images, "image_embeddings": img, "rows": index.rows, "text_embeddings": txt}


def score(out: dict[str, list], ev) -> tuple[dict, list[dict]]:
    kept, index = joined_index(out["image_rows"], out["rows"])
    images, rows, owner = index.images, index.rows, torch.tensor(index.owner, dtype=torch.long)
    image_embeddings = torch.cat(out["image_embeddings"])[kept]
    scores = image_embeddings @ torch.cat(out["text_embeddings"]).t()  # no logit scale, as released
    metrics = retrieval_recall(scores, owner)
    metrics.update(num_images=len(images), num_texts=len(rows))
    samples = []
    for i in range(min(ev.num_samples // 2 or 1, len(images))):
        top = scores[i].topk(min(3, scores.shape[1])).indices.tolist()
        samples.append({"images": [images[i]["image"]], "lines": [("query", "image -> text")] + [
            (f"#{r + 1}{' (match)' if int(owner[j]) == i else ''}", rows[j]["caption"]) for r, j in enumerate(top)],
            "ok": int(owner[top[0]]) == i})
    for j in range(min(ev.num_samples - len(samples), len(rows))):
        j = j * max(1, len(rows) // max(1, ev.num_samples))
        top = scores[:, j].topk(min(3, scores.shape[0])).indices.tolist()
        samples.append({"images": [images[i]["image"] for i in top], "lines": [
            ("query", rows[j]["caption"]), ("retrieved", "top images, best first"),
            ("match", "#" + str(top.index(int(owner[j])) + 1) if int(owner[j]) in top else "not in top 3")],
            "ok": top[0] == int(owner[j])})
    return metrics, samples
