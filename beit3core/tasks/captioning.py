"""Image captioning: sequence-to-sequence masked language modeling with the causal text mask.

Released as `BEiT3ForCaptioning`: fusion pass with `text_causal=True` (image tokens see image tokens, text
tokens see the image and earlier text), `mlm_head` Linear(d, vocab) on the masked text positions.
Training masking: per caption of n tokens, `max(1, min(int(n*p + 0.5), n - 1))` positions drawn from 1..n-1
(`<s>` never masked, `</s>` may be), replaced BERT-style 80/10/10 by `<mask>` / kept / a random id in
[3, vocab-1] (released `random.randint(3, vocab - 1)`, both ends included). Loss: label smoothing 0.1 (eps/(V-1)
off target), KL divergence summed per token, then the mean; once the step (counted from 0) is past
`drop_worst_after` the worst 20% of tokens per batch are dropped (released `iter > drop_worst_after`).
Decoding: beam search (beit3core.tasks.beam_search), where the logits at a trailing `<mask>` slot predict the
next token.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from beit3core.models import Beit3KVCache
from beit3core.tasks.beam_search import beam_search
from beit3core.tasks.common import (
    backbone_dim,
    backbone_vocab_size,
    init_head_weights,
    to_device,
)
from beit3core.tasks.data import Collator, ImageIndex, image_text_batches, joined_index
from beit3core.tasks.metrics import bleu4, cider_d

NAME = "captioning"
SELECTION_METRIC = "cider"
METRICS = ("bleu4", "cider")


class CaptioningModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.mlm_head = nn.Linear(backbone_dim(backbone), backbone_vocab_size(backbone))
        self.mlm_head.apply(init_head_weights)

    def forward(
        self,
        image: torch.Tensor,
        text_ids: torch.Tensor,
        text_padding_mask: torch.Tensor,
        masked_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (M, V) at the True entries of `masked_positions` (B, L), or (B, L, V) when it is None."""
        out = self.backbone(image=image, text_ids=text_ids, text_padding_mask=text_padding_mask, text_causal=True)
        text = out.hidden[:, out.split :]
        if masked_positions is not None:
            text = text[masked_positions]
        return self.mlm_head(text)


def mask_captions(
    ids: torch.Tensor,
    padding: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    mask_prob: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (masked input ids, bool positions to predict), both (B, L); labels are `ids[positions]`."""
    masked = ids.clone()
    positions = torch.zeros_like(ids, dtype=torch.bool)
    for row in range(ids.shape[0]):
        n = int((~padding[row]).sum())
        if n < 2:
            continue
        to_mask = max(1, min(int(n * mask_prob + 0.5), n - 1))
        chosen = rng.choice(np.arange(1, n), size=to_mask, replace=False)
        for pos in chosen:
            positions[row, pos] = True
            draw = rng.random()
            if draw < 0.8:
                masked[row, pos] = mask_id
            elif draw >= 0.9:
                masked[row, pos] = int(rng.integers(3, vocab_size))  # high end excluded: [3, vocab_size - 1]
    return masked, positions


def smoothed_token_losses(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Per-token KL(smoothed one-hot || softmax(logits)), with eps/(V-1) on every wrong id."""
    vocab = logits.shape[-1]
    target = torch.full_like(logits, smoothing / (vocab - 1))
    target.scatter_(1, labels[:, None], 1.0 - smoothing)
    return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="none").sum(dim=-1)


def captioning_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float = 0.1,
    drop_worst_fraction: float = 0.0,
) -> torch.Tensor:
    losses = smoothed_token_losses(logits, labels, smoothing)
    if drop_worst_fraction > 0 and losses.numel() > 1:
        keep = losses.numel() - int(losses.numel() * drop_worst_fraction)
        losses = torch.topk(losses, keep, largest=False).values
    return losses.mean()


def build(backbone: nn.Module, header: dict, settings) -> CaptioningModel:
    return CaptioningModel(backbone)


def targets(rows: list[dict], vocab_index: dict[str, int]) -> dict:
    return {}  # the caption's own ids, masked at training time (`loss`)


def collator(tokenizer, max_len: int, header: dict) -> Collator:
    return Collator(tokenizer, max_len, text_field="caption", targets=targets)


def loss(model: CaptioningModel, batch: dict, ctx) -> torch.Tensor:
    s = ctx.settings
    ids, pad = batch["text_ids"], batch["text_padding_mask"]
    masked, positions = mask_captions(ids.cpu(), pad.cpu(), mask_id=ctx.mask_id, vocab_size=ctx.vocab_size,
                                      mask_prob=s.mask_prob, rng=ctx.rng)
    positions = positions.to(ids.device)
    logits = model(batch["image"], masked.to(ids.device), pad, positions)
    drop = 0.2 if s.drop_worst_after and ctx.step > s.drop_worst_after else 0.0
    return captioning_loss(logits, ids[positions], s.label_smoothing, drop)


def _kv_cache_class(backbone: nn.Module):
    """The backbone's key/value cache type when its forward takes `kv_cache=`, else None."""
    if "kv_cache" not in inspect.signature(backbone.forward).parameters:
        return None
    return Beit3KVCache


@torch.no_grad()
def generate(model: CaptioningModel, images: torch.Tensor, *, bos_id: int, eos_id: int, mask_id: int,
             banned: tuple[int, ...] = (), num_beams: int = 3, max_len: int = 32,
             length_penalty: float = 0.6, use_cache: bool = True) -> list[list[int]]:
    """Beam-search captions for (B, 3, H, W) images: ids without <s> / </s>.

    Every step runs the image plus [<s>, generated..., <mask>] through the causal fusion pass and reads the
    next-token distribution at the `<mask>` slot. Under the causal mask this gives the same logits as the
    released incremental decoder, which feeds [prev_token, <mask>] against a key/value cache; that path is
    taken when the backbone accepts `kv_cache=` (beit3core.models.Beit3KVCache) and `use_cache` is set.
    """
    expanded = images.repeat_interleave(num_beams, dim=0)
    blocked = torch.tensor(sorted({bos_id, mask_id, *banned}), device=images.device)
    cache_cls = _kv_cache_class(model.backbone) if use_cache else None
    state: dict = {}

    def next_logprobs(prefixes: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        mask_col = torch.full_like(prefixes[:, :1], mask_id)
        if cache_cls is None:  # recompute the whole sequence every step
            text = torch.cat([prefixes, mask_col], dim=1)
            logits = model(expanded, text, torch.zeros_like(text, dtype=torch.bool))[:, -1].float()
        else:  # feed [last token, <mask>] against the cache, then drop the <mask> slot from it
            if "cache" not in state:
                out = model.backbone(image=expanded, text_ids=torch.cat([prefixes, mask_col], dim=1),
                                     text_causal=True, kv_cache=cache_cls())
            else:
                out = model.backbone(text_ids=torch.cat([prefixes[:, -1:], mask_col], dim=1), text_causal=True,
                                     kv_cache=state["cache"].select(origin))
            state["cache"] = out.kv_cache.crop(out.kv_cache.length - 1)
            logits = model.mlm_head(out.hidden[:, -1]).float()
        logits[:, blocked] = float("-inf")
        logits[:, mask_id:] = float("-inf")  # <mask> and the never-used rows
        return torch.log_softmax(logits, dim=-1)

    return beam_search(next_logprobs, images.shape[0], bos_id=bos_id, eos_id=eos_id, num_beams=num_beams,
                       max_len=max_len, length_penalty=length_penalty, device=images.device)


@torch.no_grad()
def predict(model: CaptioningModel, ev) -> dict[str, list]:
    """This share's images (in order of first use), their generated captions, and its rows."""
    s, tok = ev.settings, ev.tokenizer

    def captions(batch: dict) -> list[list[int]]:
        return generate(model, batch["image"], bos_id=tok.bos_id, eos_id=tok.eos_id, mask_id=tok.mask_id,
                        banned=(tok.pad_id,), num_beams=s.num_beams, max_len=s.max_len,
                        length_penalty=s.length_penalty)

    index, hyps = ImageIndex(), []
    for _, batch in image_text_batches(NAME, ev.stream("eval captioning (beam search)"), index, uri=ev.uri,
                                       img_size=s.img_size, batch_size=s.eval_batch_size):
        hyps += [tok.decode(ids) for ids in captions(to_device(batch, ev.device))]
    return {"image_rows": index.images, "generated": hyps, "rows": index.rows}


def score(out: dict[str, list], ev) -> tuple[dict, list[dict]]:
    kept, index = joined_index(out["image_rows"], out["rows"])
    images, hyps = index.images, [out["generated"][i] for i in kept]
    refs: list[list[str]] = [[] for _ in images]
    for row, i in zip(index.rows, index.owner, strict=True):
        refs[i].append(row["caption"])
    metrics = {"bleu4": 100.0 * bleu4(hyps, refs), "cider": 100.0 * cider_d(hyps, refs),
               "num_images": len(images)}
    samples = [{"images": [images[i]["image"]], "lines": [("generated", hyps[i])] +
                [("reference", r) for r in refs[i]], "ok": None} for i in range(min(ev.num_samples, len(images)))]
    return metrics, samples
