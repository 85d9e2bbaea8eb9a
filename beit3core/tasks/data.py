"""Per-task datasets over validated task datasets (beit3core.data), image transforms and batch collation.

Image transforms (microsoft/unilm `beit3/datasets.py` build_transform / build_imagenet_transform, beit3.md
section 9), switched by the task settings (`TrainAugment.of`):
- train, vision-language tasks: RandomResizedCrop(S, scale=(crop_scale_min, 1), bicubic) + horizontal flip, then
  RandomAugment(2, 7) with `randaug` (beit3core.tasks.randaug; released for VQA and captioning);
- train, classification: timm `create_transform` as released (RandomResizedCrop scale (crop_scale_min, 1), flip,
  `auto_augment` RandAugment, `color_jitter` (timm leaves it off while RandAugment is on), random erasing
  `reprob` in pixel mode), with RandomCrop(S, padding=4) instead of the crop at S <= 32 (released `resize_im`);
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
from timm.data import create_transform
from torchvision import transforms as T

from beit3core import data
from beit3core.errors import UserError
from beit3core.tasks.randaug import RandomAugment

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TrainAugment:
    """The training augmentation of a fine-tuning run (its TaskSettings fields of the same names)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    randaug: bool = False  # vision-language tasks: RandomAugment(2, 7)
    auto_augment: str = ""  # classification: timm policy; "" or "none": off
    color_jitter: float = 0.0  # classification
    reprob: float = 0.0  # classification: random erasing probability

    @classmethod
    def of(cls, settings) -> TrainAugment:
        return cls(crop_scale=(settings.crop_scale_min, 1.0), hflip=settings.hflip, randaug=settings.randaug,
                   auto_augment=settings.auto_augment, color_jitter=settings.color_jitter, reprob=settings.reprob)


def classification_train_transform(img_size: int, augment: TrainAugment) -> Callable:
    """timm `create_transform` with the released ImageNet arguments (run_beit3_finetuning.py flags)."""
    policy = augment.auto_augment if augment.auto_augment not in ("", "none") else None
    try:
        transform = create_transform(
            input_size=img_size, is_training=True, scale=tuple(augment.crop_scale),
            hflip=0.5 if augment.hflip else 0.0, color_jitter=augment.color_jitter or None, auto_augment=policy,
            interpolation="bicubic", re_prob=augment.reprob, re_mode="pixel", re_count=1,
            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    except (AssertionError, KeyError, ValueError) as err:  # timm's parser of the policy string
        raise UserError(f"--auto-augment {augment.auto_augment!r}: not a timm augmentation policy ({err})") from None
    if img_size <= 32:  # released: small inputs are padded and cropped, not resized
        transform.transforms[0] = T.RandomCrop(img_size, padding=4)
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):  # timm RandAugment's ops
            if "Posterize" in op.name:
                op.aug_fn = _posterize_at_least_one_bit(op.aug_fn)
    return transform


def _posterize_at_least_one_bit(posterize: Callable) -> Callable:
    """timm asks for 0 bits at its strongest posterize level (reached with `mstd` magnitude noise); Pillow >= 11
    refuses that (`bits must be between or equal to 1 and 8`) and a training worker would die on it. 1 bit is the
    strongest posterize Pillow does."""
    def at_least_one_bit(img, bits, **kwargs):
        return posterize(img, max(1, int(bits)), **kwargs)
    return at_least_one_bit


def image_transform(task: str, img_size: int, train: bool, augment: TrainAugment = TrainAugment()) -> Callable:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if task == "classification" else (HALF, HALF)
    bicubic = T.InterpolationMode.BICUBIC
    if train and task == "classification":
        return classification_train_transform(img_size, augment)
    if train:
        steps = [T.RandomResizedCrop(img_size, scale=tuple(augment.crop_scale), interpolation=bicubic)]
        if augment.hflip:
            steps.append(T.RandomHorizontalFlip())
        if augment.randaug:
            steps.append(RandomAugment(2, 7))
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
                 augment: TrainAugment, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Shuffled, drop_last batches of this rank's share of the split."""
    header = check_kind(uri, task)
    rows = data.read_rows(uri, split)
    if not rows:
        raise UserError(f"{uri}: split {split!r} is empty")
    # equal shares, so every rank runs the same number of steps per epoch (DDP needs matching collectives)
    rows = rows[: len(rows) // world_size * world_size][rank::world_size]
    ds = RowImages(uri, rows, data.image_fields(header),
                   image_transform(task, img_size, True, augment))
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
