"""Image-text retrieval (COCO / Flickr30k layout): a dual encoder with a contrastive loss.

Released as `BEiT3ForRetrieval`: two passes, image-only (vision CLS) and text-only (text <s>), bias-free
projections `vision_head` / `language_head`, L2-normalised embeddings, and a learnable temperature
`logit_scale` = log(1/0.07), used as exp() and never clamped. Loss: CLIP loss with the negatives gathered
across ranks (all_gather with gradient), labels arange(N) + N*rank, (CE_i2t + CE_t2i) / 2.
Evaluation: image embeddings de-duplicated by image_id, scores = img @ txt.T, recall@1/5/10 both directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from beit3core.tasks.common import backbone_dim, init_head_weights


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


def train_loss(model: RetrievalModel, batch: dict, ctx) -> torch.Tensor:
    img, txt, logit_scale = model(batch["image"], batch["text_ids"], batch["text_padding_mask"])
    return contrastive_loss(img, txt, logit_scale, gather=ctx.gather, rank=ctx.rank)


@torch.no_grad()
def evaluate(model: RetrievalModel, ev) -> tuple[dict, list[dict]]:
    from tqdm import tqdm

    from beit3core.tasks.common import to_device
    from beit3core.tasks.data import Collator, eval_loader, unique_images
    from beit3core.tasks.metrics import retrieval_recall

    images, owner = unique_images(ev.rows)
    bs = ev.settings.eval_batch_size
    img_loader = eval_loader("retrieval", ev.uri, images, Collator("images", None, 0),
                             img_size=ev.settings.img_size, batch_size=bs, fields=("image",))
    txt_loader = eval_loader("retrieval", ev.uri, ev.rows, Collator("retrieval", ev.tokenizer, ev.settings.max_len),
                             img_size=ev.settings.img_size, batch_size=bs, fields=())
    img_emb = [model.encode_image(to_device(b, ev.device)["image"]).float().cpu()
               for b in tqdm(img_loader, desc="eval retrieval images", disable=not ev.progress)]
    txt_emb = []
    for b in tqdm(txt_loader, desc="eval retrieval texts", disable=not ev.progress):
        b = to_device(b, ev.device)
        txt_emb.append(model.encode_text(b["text_ids"], b["text_padding_mask"]).float().cpu())
    scores = torch.cat(img_emb) @ torch.cat(txt_emb).t()  # no logit scale, as released
    metrics = retrieval_recall(scores, owner)
    metrics.update(num_images=len(images), num_texts=len(ev.rows))
    samples = []
    for i in range(min(ev.num_samples // 2 or 1, len(images))):
        top = scores[i].topk(min(3, scores.shape[1])).indices.tolist()
        samples.append({"images": [images[i]["image"]], "lines": [("query", "image -> text")] + [
            (f"#{r + 1}{' (match)' if int(owner[j]) == i else ''}", ev.rows[j]["caption"]) for r, j in enumerate(top)],
            "ok": int(owner[top[0]]) == i})
    for j in range(min(ev.num_samples - len(samples), len(ev.rows))):
        j = j * max(1, len(ev.rows) // max(1, ev.num_samples))
        top = scores[:, j].topk(min(3, scores.shape[0])).indices.tolist()
        samples.append({"images": [images[i]["image"] for i in top], "lines": [
            ("query", ev.rows[j]["caption"]), ("retrieved", "top images, best first"),
            ("match", "#" + str(top.index(int(owner[j])) + 1) if int(owner[j]) in top else "not in top 3")],
            "ok": top[0] == int(owner[j])})
    return metrics, samples
