"""Pieces shared by the five tasks: the backbone width, the released head initialisation, the contexts a task's
`loss` and `evaluate` get, and the evaluation loop (`eval_outputs`).

The released task models (microsoft/unilm `beit3/modeling_finetune.py`) re-initialise every Linear with
trunc_normal(std 0.02) and zero bias, and every LayerNorm with weight 1 and bias 0; some heads are then scaled
by 0.001 so that fine-tuning starts from (almost) zero logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from beit3core.data.task_stream import Item, SplitSource, eval_plan, read_plan
from beit3core.errors import UserError
from beit3core.progress import progress_bar
from beit3core.tasks.data import Collator, eval_batches


def backbone_dim(backbone: nn.Module) -> int:
    """The hidden width of a beit3core backbone (its config's embed_dim)."""
    cfg = getattr(backbone, "config", None)
    for name in ("embed_dim", "dim", "hidden_size"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"cannot read the hidden width from {type(backbone).__name__}.config")


def need(header: dict, key: str) -> list:
    """A vocabulary the task's head is sized by (dataset.json `labels` / `answers`)."""
    if not header.get(key):
        raise UserError(f"dataset.json: field {key!r}: missing or empty")
    return header[key]


def backbone_vocab_size(backbone: nn.Module) -> int:
    cfg = getattr(backbone, "config", None)
    value = getattr(cfg, "vocab_size", None)
    if not isinstance(value, int):
        raise TypeError(f"cannot read vocab_size from {type(backbone).__name__}.config")
    return value


def init_head_weights(module: nn.Module) -> None:
    """The released `_init_weights`: Linear trunc_normal(0.02) (truncated at +-0.02) and zero bias; LN 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def scale_linear_(layer: nn.Linear, scale: float) -> None:
    layer.weight.mul_(scale)
    if layer.bias is not None:
        layer.bias.mul_(scale)


class StepContext:
    """What a task's `loss` may need besides the batch (set by the trainer every step)."""

    def __init__(self, *, settings, step: int = 0, rng=None, gather=None, rank: int = 0, mask_id: int | None = None,
                 vocab_size: int | None = None):
        self.settings, self.step, self.rng, self.gather, self.rank = settings, step, rng, gather, rank
        self.mask_id, self.vocab_size = mask_id, vocab_size


class EvalContext:
    """Inputs of a task's `predict` and `score`: the split (`source`, its first `max_rows` rows; 0: all), the
    dataset's header, tokenizer, settings and device, and this process's share of the rows (`rank` of
    `world_size` contiguous blocks). `stream(desc)` reads the share in order with its images' bytes."""

    def __init__(self, *, source: SplitSource, header: dict, tokenizer, settings, device, max_rows: int = 0,
                 num_samples: int = 8, progress: bool = True, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"evaluation share: rank {rank} is outside world size {world_size}")
        self.source, self.uri, self.max_rows, self.header = source, source.uri, max_rows, header
        self.tokenizer, self.settings, self.device = tokenizer, settings, device
        self.num_samples, self.progress = num_samples, progress
        self.rank, self.world_size = rank, world_size

    @property
    def num_rows(self) -> int:
        """The rows evaluated by every share together (dataset.json's counts: nothing is read)."""
        return min(self.max_rows, self.source.rows) if self.max_rows else self.source.rows

    def stream(self, desc: str) -> Iterator[Item]:
        """This share's rows, in order: its block of the first `num_rows` rows of the split."""
        plan = eval_plan(self.source.sizes, self.max_rows, share=self.rank, shares=self.world_size)
        return progress_bar(read_plan(self.source, plan), total=sum(hi - lo for _, lo, hi in plan), desc=desc,
                            unit="row", disable=not self.progress)


def merge_outputs(parts: list[dict[str, list]]) -> dict[str, list]:
    """One output of a task's `predict` from the outputs of the shares, in share (= row) order: each field's
    lists concatenated."""
    return {key: [x for part in parts for x in part[key]] for key in parts[0]}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def eval_outputs(task: str, ev: EvalContext, collate: Collator, forward: Callable[[dict], object], *,
                 fields: tuple[str, ...] | None = None, desc: str | None = None) -> Iterator[tuple[dict, object]]:
    """(batch on ev.device, forward(batch)) for each evaluation batch of the split's rows, in order, with the
    images of `fields` (default: every image field of the kind)."""
    batches = eval_batches(task, ev.stream(desc or f"eval {task}"), collate, uri=ev.uri,
                           img_size=ev.settings.img_size, batch_size=ev.settings.eval_batch_size,
                           fields=ev.source.fields if fields is None else fields)
    for batch in batches:
        batch = to_device(batch, ev.device)
        yield batch, forward(batch)
