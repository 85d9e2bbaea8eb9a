"""Per-task datasets over validated task datasets (beit3core.data), image transforms and batch collation.

Image transforms (microsoft/unilm `beit3/datasets.py`, beit3.md section 9):
- train: RandomResizedCrop(S, scale=(0.5, 1.0), bicubic) + horizontal flip (both switchable);
- eval: Resize((S, S), bicubic) for the vision-language tasks; Resize(S) + CenterCrop(S) (crop_pct 1.0) for
  classification;
- normalisation mean = std = 0.5 for the vision-language tasks, ImageNet mean / std for classification.
Text goes through `TextTokenizer.encode_batch` ([<s>] + pieces + [</s>], padded with 1) at collation time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision import transforms as T

from beit3core import data
from beit3core.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def image_transform(task: str, img_size: int, train: bool, *, hflip: bool = True,
                    crop_scale: tuple[float, float] = (0.5, 1.0)) -> Callable:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if task == "classification" else (HALF, HALF)
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        steps = [T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=bicubic)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    elif task == "classification":
        steps = [T.Resize(img_size, interpolation=bicubic), T.CenterCrop(img_size)]
    else:
        steps = [T.Resize((img_size, img_size), interpolation=bicubic)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def check_kind(uri: str, task: str) -> dict:
    header = data.read_header(uri)
    if header["kind"] != task:
        raise UserError(f"{uri}/dataset.json: field 'kind' is {header['kind']!r}, but --task is {task!r}")
    return header


class RowImages(torch.utils.data.Dataset):
    """Rows of a split with their image fields decoded and transformed: {"row": row, field: tensor}."""

    def __init__(self, uri: str, rows: list[dict], fields: tuple[str, ...], transform: Callable):
        self.uri, self.rows, self.fields, self.transform = uri, rows, fields, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        item = {"row": row}
        for f in self.fields:
            item[f] = self.transform(data.load_image(self.uri, row[f]))
        return item


def unique_images(rows: list[dict]) -> tuple[list[dict], torch.Tensor]:
    """One row per image_id (first seen), and for every row the index of its image in that list."""
    first: dict[str, int] = {}
    images, owner = [], []
    for row in rows:
        key = str(row["image_id"])
        if key not in first:
            first[key] = len(images)
            images.append(row)
        owner.append(first[key])
    return images, torch.tensor(owner, dtype=torch.long)


@dataclass
class Collator:
    """Stacks the images, tokenises the row field `text_field` and adds the task's `targets(rows, vocab_index)`
    (each task module's `collator` fills these in; `Collator()` batches images only)."""

    tokenizer: object = None
    max_len: int = 0
    text_field: str | None = None
    targets: Callable[[list[dict], dict[str, int]], dict] | None = None
    vocab: list[str] | None = None  # the names the targets index: classification labels, vqa answers

    def __post_init__(self):
        self.vocab_index = {n: i for i, n in enumerate(self.vocab or [])}

    def __call__(self, items: list[dict]) -> dict:
        rows = [it["row"] for it in items]
        batch: dict = {"rows": rows}
        for key in items[0]:
            if key != "row":
                batch[key] = torch.stack([it[key] for it in items])
        if self.text_field:
            batch["text_ids"], batch["text_padding_mask"] = self.tokenizer.encode_batch(
                [str(r[self.text_field]) for r in rows], self.max_len)
        if self.targets is not None:
            batch.update(self.targets(rows, self.vocab_index))
        return batch


def train_loader(task: str, uri: str, split: str, collate: Collator, *, img_size: int, batch_size: int,
                 hflip: bool, crop_scale: tuple[float, float], seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Shuffled, drop_last batches of this rank's share of the split."""
    header = check_kind(uri, task)
    rows = data.read_rows(uri, split)
    if not rows:
        raise UserError(f"{uri}: split {split!r} is empty")
    # equal shares, so every rank runs the same number of steps per epoch (DDP needs matching collectives)
    rows = rows[: len(rows) // world_size * world_size][rank::world_size]
    ds = RowImages(uri, rows, data.image_fields(header),
                   image_transform(task, img_size, True, hflip=hflip, crop_scale=crop_scale))
    gen = torch.Generator().manual_seed(seed + rank)
    return torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=True,
                                       collate_fn=collate, generator=gen, num_workers=num_workers)


def eval_loader(task: str, uri: str, rows: list[dict], collate: Callable, *, img_size: int, batch_size: int,
                fields: tuple[str, ...] | None = None, num_workers: int = 0) -> torch.utils.data.DataLoader:
    header = check_kind(uri, task)
    ds = RowImages(uri, rows, fields if fields is not None else data.image_fields(header),
                   image_transform(task, img_size, False))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                       num_workers=num_workers)
