"""Per-task data: the training stream and the evaluation batches over a task split read shard by shard
(beit3core.data.task_stream), image transforms and batch collation.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision import transforms as T

from beit3core import data
from beit3core.data import task_stream
from beit3core.data.task_stream import Item, SplitSource
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
    # imported here, not at the top: timm's import costs every other task ~1 s
    from timm.data import create_transform

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


def decoded(uri: str, row: dict, images: dict[str, bytes], transform: Callable) -> dict:
    """A model item: {"row": row, field: its image decoded and transformed} for each field of `images`."""
    item = {"row": row}
    for f, encoded in images.items():
        item[f] = transform(data.decode_image(encoded, f"{uri}/{row[f]}"))
    return item


class TrainRows(torch.utils.data.IterableDataset):
    """One rank's share of a training split, one epoch per iteration (`set_epoch(e)` before it), streamed from
    the split's shards by the plan of beit3core.data.task_stream: `steps` batches of `batch_size` rows an epoch,
    items {"row": row, field: tensor} in the order of a seeded shuffle buffer. In a loader worker, each worker
    reads its own block of the rank's batches."""

    def __init__(self, source: SplitSource, transform: Callable, *, batch_size: int, seed: int, rank: int,
                 world_size: int, shuffle_buffer: int):
        per_rank = source.rows // world_size  # every rank the same steps: DDP needs matching collectives
        self.source, self.transform, self.seed, self.rank = source, transform, seed, rank
        self.batch_size = max(1, min(batch_size, per_rank))
        self.steps = per_rank // self.batch_size
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = task_stream.train_plan(self.source.sizes, seed=self.seed, epoch=self.epoch, rank=self.rank,
                                      steps=self.steps, batch=self.batch_size, worker=worker, workers=workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        for row, images in task_stream.shuffled(task_stream.read_plan(self.source, plan), self.shuffle_buffer, rng):
            yield decoded(self.source.uri, row, images, self.transform)


@dataclass
class ImageIndex:
    """What one evaluation pass keeps for the tasks that score each image once (retrieval, captioning): every
    row, each image's first row (by `image_id`, in order of first use) and for every row the index of its image."""

    rows: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    _first: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # image_id -> its index in `images`

    def add(self, row: dict) -> bool:
        """Index one row; True when its image is met for the first time."""
        key = str(row["image_id"])
        new = key not in self._first
        if new:
            self._first[key] = len(self.images)
            self.images.append(row)
        self.owner.append(self._first[key])
        self.rows.append(row)
        return new


def joined_index(image_rows: list[dict], rows: list[dict]) -> tuple[list[int], ImageIndex]:
    """The ImageIndex of outputs of evaluation shares joined in row order (`image_rows`: each share's images in
    order of first use, `rows`: every row), and the positions in `image_rows` of the images it keeps: an image
    whose rows straddle two shares was met by both, and is kept once, where first met."""
    index = ImageIndex()
    for row in rows:
        index.add(row)
    position: dict[str, int] = {}
    for i, row in enumerate(image_rows):
        position.setdefault(str(row["image_id"]), i)
    return [position[str(row["image_id"])] for row in index.images], index


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


DEFAULT_SHUFFLE_BUFFER = 2048  # rows: a few shards of real data; the demo's splits (~1000 rows) whole


def train_loader(task: str, uri: str, split: str, collate: Collator, *, img_size: int, batch_size: int,
                 augment: TrainAugment, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> torch.utils.data.DataLoader:
    """drop_last batches of this rank's share of the split, streamed from its shards (`TrainRows`); call
    `loader.dataset.set_epoch(e)` before each epoch."""
    header = check_kind(uri, task)
    if shuffle_buffer < 1:
        raise UserError(f"--shuffle-buffer: must be >= 1, got {shuffle_buffer}")
    source = SplitSource(uri, split, header)
    if not source.rows:
        raise UserError(f"{uri}: split {split!r} is empty")
    ds = TrainRows(source, image_transform(task, img_size, True, augment), batch_size=batch_size, seed=seed,
                   rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer)
    gen = torch.Generator().manual_seed(seed + rank)  # the loader workers' seeds (their augmentation draws)
    return torch.utils.data.DataLoader(ds, batch_size=ds.batch_size, drop_last=True, collate_fn=collate,
                                       generator=gen, num_workers=num_workers)


def eval_batches(task: str, items: Iterable[Item], collate: Callable, *, uri: str, img_size: int, batch_size: int,
                 fields: tuple[str, ...]) -> Iterator[dict]:
    """Batches of `batch_size` rows of `items` in order, with the images of `fields` decoded and transformed."""
    transform = image_transform(task, img_size, False)
    chunk = []
    for row, images in items:
        chunk.append(decoded(uri, row, {f: images[f] for f in fields}, transform))
        if len(chunk) == batch_size:
            yield collate(chunk)
            chunk = []
    if chunk:
        yield collate(chunk)


def image_text_batches(task: str, items: Iterable[Item], index: ImageIndex, *, uri: str, img_size: int,
                       batch_size: int, texts: Collator | None = None) -> Iterator[tuple[str, dict]]:
    """One pass over `items`: ("images", batch) for every `batch_size` images met for the first time (by
    `image_id`) and, with `texts`, ("texts", batch) for every `batch_size` rows (text only); fills `index`."""
    transform = image_transform(task, img_size, False)
    pictures, rows = [], []
    for row, images in items:
        if index.add(row):
            pictures.append(decoded(uri, row, {"image": images["image"]}, transform))
        if texts is not None:
            rows.append({"row": row})
        if len(pictures) == batch_size:
            yield "images", Collator()(pictures)
            pictures = []
        if len(rows) == batch_size:
            yield "texts", texts(rows)
            rows = []
    if pictures:
        yield "images", Collator()(pictures)
    if rows:
        yield "texts", texts(rows)
