"""Fine-tuning settings: the frozen `TaskSettings` and the released recipe of each task.

`TASK_DEFAULTS` is the released fine-tuning table for the base model (microsoft/unilm `beit3/get_started/*.md`,
beit3.md section 7). Other recipes, such as the tiny demo on the bundled synthetic data, are flags over it
(params.yaml `finetune.tasks`, passed by dvc.yaml).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from beit3core.errors import UserError, check_bounds

_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "tuple[float, float]": tuple}


def _setting(default, help: str, bounds: str | None = None):
    """A settings field with the help text of its generated `beit3 finetune` flag and the interval its value
    (each value, for a tuple) must lie in (`beit3core.errors.check_range`): checked when the flag is parsed and
    again when the settings are built (task.json, params.yaml), so an out-of-range number is refused, never
    replaced."""
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass(frozen=True)
class TaskSettings:
    """Everything a fine-tuning run of one task needs besides data, init and output (frozen after parsing)."""

    arch: str = _setting("beit3_base_patch16_224",
                         "registered model name (`beit3 models`) for --init random or an official .pth")
    img_size: int = _setting(224, "input resolution in pixels")
    max_len: int = _setting(64, "text tokens incl. <s> and </s> (released num_max_bpe_tokens)")
    batch_size: int = _setting(64, "training batch size per rank")
    eval_batch_size: int = _setting(64, "evaluation batch size")
    epochs: float = _setting(20, "training epochs (--steps overrides)", "[0, inf)")
    warmup_epochs: float = _setting(5, "linear warmup epochs", "[0, inf)")
    steps: int = _setting(0, "optimizer steps; > 0 overrides --epochs (warmup then counts --warmup-steps)", "[0, inf)")
    warmup_steps: int = _setting(0, "linear warmup steps when --steps is given", "[0, inf)")
    lr: float = _setting(5e-4, "peak learning rate", "(0, inf)")
    min_lr: float = _setting(1e-6, "final learning rate of the cosine schedule", "[0, inf)")
    layer_decay: float = _setting(0.9, "layer-wise lr decay")
    head_lr_scale: float = _setting(1.0, "lr multiplier of `head.*` (released task_head_lr_weight; VQA: 20)",
                                    "(0, inf)")
    head_init_scale: float = _setting(0.001,
                                      "classification and NLVR2 heads start at this x their init (released 0.001)")
    drop_path: float = _setting(0.1, "stochastic depth rate")
    weight_decay: float = _setting(0.05, "AdamW weight decay", "[0, inf)")
    betas: tuple[float, float] = _setting((0.9, 0.999), "AdamW betas", "[0, 1)")
    eps: float = _setting(1e-8, "AdamW epsilon", "(0, inf)")
    clip_grad: float = _setting(0.0, "max gradient norm (0: off)", "[0, inf)")
    label_smoothing: float = _setting(0.1, "label smoothing of classification CE and captioning", "[0, 1)")
    mixup: float = _setting(0.0, "mixup alpha (classification only, timm Mixup)", "[0, inf)")
    cutmix: float = _setting(0.0, "cutmix alpha (classification only)", "[0, inf)")
    mask_prob: float = _setting(0.6, "captioning: fraction of caption tokens masked in training")
    drop_worst_after: int = _setting(0, "captioning: drop the worst 20%% tokens after this many steps (0: never)",
                                     "[0, inf)")
    num_beams: int = _setting(3, "captioning beam size")
    length_penalty: float = _setting(0.6, "captioning beam length penalty", "(-inf, inf)")
    hflip: bool = _setting(True, "random horizontal flip in training")
    crop_scale_min: float = _setting(0.5, "RandomResizedCrop scale=(crop_scale_min, 1)")
    randaug: bool = _setting(False, "RandomAugment(2, 7) after crop and flip (released --randaug: VQA, captioning)")
    auto_augment: str = _setting("", "classification: timm auto-augment policy, '' or 'none' for off "
                                     "(released rand-m9-mstd0.5-inc1)")
    color_jitter: float = _setting(0.0, "classification: timm colour jitter, off while --auto-augment is on "
                                        "(released 0.4)", "[0, inf)")
    reprob: float = _setting(0.0, "classification: random erasing probability, pixel mode (released 0.25)",
                             "[0, 1]")
    normalize_output: bool = _setting(True,
                                      "the backbone's final LayerNorm (released: off for classification and VQA)")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # task.json and params.yaml are read, not parsed by argparse
            value = getattr(self, f.name)
            kind = _TYPES.get(f.type)
            if kind and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
                raise UserError(f"--{f.name.replace('_', '-')}: expected {f.type}, got {value!r}")
        check_bounds(self)
        if len(self.betas) != 2:
            raise UserError(f"--betas: expected two numbers, got {self.betas!r}")
        for name in ("img_size", "max_len", "batch_size", "eval_batch_size", "num_beams"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr: must be positive, got {self.lr}")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"--layer-decay: must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.drop_path < 1:
            raise UserError(f"--drop-path: must be in [0, 1), got {self.drop_path}")
        if not 0 < self.crop_scale_min <= 1:
            raise UserError(f"--crop-scale-min: must be in (0, 1], got {self.crop_scale_min}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise UserError("--steps / --epochs: give a positive number of steps or epochs")
        if not 0 < self.head_init_scale <= 1:
            raise UserError(f"--head-init-scale: must be in (0, 1], got {self.head_init_scale}")
        if not 0 < self.mask_prob < 1:
            raise UserError(f"--mask-prob: must be in (0, 1), got {self.mask_prob}")

    def replace(self, **changes) -> "TaskSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The released base-model recipes (beit3.md section 7; effective batch sizes of the 8-32 GPU runs).
TASK_DEFAULTS: dict[str, dict] = {
    "classification": dict(arch="beit3_base_patch16_224", img_size=224, batch_size=1024, lr=7e-4, layer_decay=0.65,
                           drop_path=0.15, weight_decay=0.05, epochs=50, warmup_epochs=5, label_smoothing=0.1,
                           mixup=0.8, cutmix=1.0, normalize_output=False, crop_scale_min=0.08,
                           auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25),
    "vqa": dict(arch="beit3_base_patch16_224", img_size=480, batch_size=128, lr=3e-5, layer_decay=1.0,
                drop_path=0.1, weight_decay=0.01, epochs=10, warmup_epochs=1, head_lr_scale=20.0, betas=(0.9, 0.98),
                normalize_output=False, randaug=True),
    "nlvr2": dict(arch="beit3_base_patch16_224", img_size=224, batch_size=256, lr=7e-4, layer_decay=0.65,
                  drop_path=0.2, weight_decay=0.2, epochs=20, warmup_epochs=5),
    "retrieval": dict(arch="beit3_base_patch16_224", img_size=384, batch_size=3072, lr=2e-4, layer_decay=0.65,
                      drop_path=0.2, weight_decay=0.05, epochs=15, warmup_epochs=3),
    "captioning": dict(arch="beit3_base_patch16_224", img_size=480, max_len=32, batch_size=256, lr=4e-5,
                       layer_decay=1.0, drop_path=0.1, weight_decay=0.05, epochs=10, warmup_epochs=1, mask_prob=0.7,
                       label_smoothing=0.1, drop_worst_after=12000, num_beams=3, length_penalty=0.6, randaug=True),
}


def check_task(task: str) -> str:
    if task not in TASK_DEFAULTS:
        raise UserError(f"--task {task!r}: expected one of {', '.join(TASK_DEFAULTS)}")
    return task


def settings_for(task: str, **overrides) -> TaskSettings:
    """The task's released recipe with overrides (the CLI's flags; None = keep the recipe's value)."""
    return TaskSettings(**TASK_DEFAULTS[check_task(task)]).replace(**overrides)
