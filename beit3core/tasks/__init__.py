"""Fine-tuning tasks: heads, losses, metrics, task data, beam search, and the registry that ties them together.

    from beit3core.tasks import TASKS, TASK_DEFAULTS, build_task_model, settings_for
    model = build_task_model("vqa", backbone, header)        # header = the task dataset's dataset.json
    loss = TASKS["vqa"].train_loss(model, batch, step_ctx)
    metrics, samples = TASKS["vqa"].evaluate(model, eval_ctx)

`TASK_DEFAULTS` is the released fine-tuning table for the base model (microsoft/unilm `beit3/get_started/*.md`,
beit3.md section 7); `DEMO_DEFAULTS` is what the tiny demo model uses on the bundled synthetic data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from beit3core.errors import UserError
from beit3core.tasks import captioning, classification, nlvr2, retrieval, vqa

TASK_NAMES = ("classification", "vqa", "nlvr2", "retrieval", "captioning")


@dataclass(frozen=True)
class TaskSettings:
    """Everything a fine-tuning run of one task needs besides data, init and output (frozen after parsing)."""

    model: str = "beit3_base_patch16_224"
    img_size: int = 224
    max_len: int = 64  # text tokens incl. <s> and </s> (num_max_bpe_tokens)
    batch_size: int = 64
    eval_batch_size: int = 64
    epochs: float = 20
    warmup_epochs: float = 5
    steps: int = 0  # > 0 overrides epochs (and warmup becomes warmup_steps)
    warmup_steps: int = 0
    lr: float = 5e-4
    min_lr: float = 1e-6
    layer_decay: float = 0.9
    head_lr_scale: float = 1.0  # released `task_head_lr_weight` (VQA: 20), applied to `head.*` only
    head_init_scale: float = 0.001  # released: classification and NLVR2 heads start at 0.001 x their init
    drop_path: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 0.0
    label_smoothing: float = 0.1  # classification CE, captioning KL
    mixup: float = 0.0  # classification only (timm Mixup)
    cutmix: float = 0.0
    mask_prob: float = 0.6  # captioning: fraction of caption tokens masked in training
    drop_worst_after: int = 0  # captioning: drop the worst 20% tokens after this many steps (0: never)
    num_beams: int = 3
    length_penalty: float = 0.6
    hflip: bool = True
    crop_scale_min: float = 0.5  # RandomResizedCrop scale=(crop_scale_min, 1)
    normalize_output: bool = True  # the backbone's final LayerNorm (released: off for classification and VQA)

    def __post_init__(self):
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
    "classification": dict(model="beit3_base_patch16_224", img_size=224, batch_size=1024, lr=7e-4, layer_decay=0.65,
                           drop_path=0.15, weight_decay=0.05, epochs=50, warmup_epochs=5, label_smoothing=0.1,
                           mixup=0.8, cutmix=1.0, normalize_output=False),
    "vqa": dict(model="beit3_base_patch16_224", img_size=480, batch_size=128, lr=3e-5, layer_decay=1.0,
                drop_path=0.1, weight_decay=0.01, epochs=10, warmup_epochs=1, head_lr_scale=20.0, betas=(0.9, 0.98),
                normalize_output=False),
    "nlvr2": dict(model="beit3_base_patch16_224", img_size=224, batch_size=256, lr=7e-4, layer_decay=0.65,
                  drop_path=0.2, weight_decay=0.2, epochs=20, warmup_epochs=5),
    "retrieval": dict(model="beit3_base_patch16_224", img_size=384, batch_size=3072, lr=2e-4, layer_decay=0.65,
                      drop_path=0.2, weight_decay=0.05, epochs=15, warmup_epochs=3),
    "captioning": dict(model="beit3_base_patch16_224", img_size=480, max_len=32, batch_size=256, lr=4e-5,
                       layer_decay=1.0, drop_path=0.1, weight_decay=0.05, epochs=10, warmup_epochs=1, mask_prob=0.7,
                       label_smoothing=0.1, drop_worst_after=12000, num_beams=3, length_penalty=0.6),
}

# The tiny demo model on the bundled synthetic data (`beit3 data synth`, 64-px shapes), one to four CPU minutes
# per task. Left/right words matter in the synthetic captions and questions, so no horizontal flip. Measured on
# that data: heads scaled to 0.001 (released) leave Adam a short budget of near-zero backbone gradients, so the
# demo starts classification and NLVR2 heads at their plain init; the retrieval contrastive loss sits at
# ln(batch) for ~200 steps before image and text features align, so retrieval (like captioning) runs 600 steps;
# classification's mean-pooled patch tokens keep improving past 400 steps (acc1 41 -> 62 at 1000 steps), and
# VQA answers one constant answer for its first 300 steps (vqa_score 30.7), then depends on the question.
_DEMO_COMMON = dict(model="beit3_tiny_patch8_64", img_size=64, hflip=False, crop_scale_min=0.8, drop_path=0.0,
                    layer_decay=0.9, warmup_steps=30, eval_batch_size=64, min_lr=1e-5, betas=(0.9, 0.999))
DEMO_DEFAULTS: dict[str, dict] = {
    "classification": dict(_DEMO_COMMON, batch_size=32, steps=1000, warmup_steps=40, lr=1e-3, layer_decay=1.0,
                           crop_scale_min=1.0, normalize_output=False, mixup=0.0, cutmix=0.0, head_init_scale=1.0),
    "vqa": dict(_DEMO_COMMON, batch_size=32, steps=600, lr=3e-4, max_len=16, head_lr_scale=1.0,
                weight_decay=0.01, normalize_output=False),
    "nlvr2": dict(_DEMO_COMMON, batch_size=32, steps=300, lr=3e-4, max_len=16, weight_decay=0.05,
                  head_init_scale=1.0),
    "retrieval": dict(_DEMO_COMMON, batch_size=32, steps=600, warmup_steps=50, lr=3e-4, max_len=24),
    "captioning": dict(_DEMO_COMMON, batch_size=32, steps=600, warmup_steps=40, lr=1e-3, max_len=20,
                       mask_prob=0.4, drop_worst_after=0, num_beams=3),
}


def settings_for(task: str, recipe: str = "released", **overrides) -> TaskSettings:
    """The task's settings from a recipe ("released" | "demo") with CLI overrides (None = keep)."""
    check_task(task)
    table = {"released": TASK_DEFAULTS, "demo": DEMO_DEFAULTS}.get(recipe)
    if table is None:
        raise UserError(f"--recipe {recipe!r}: expected 'released' or 'demo'")
    return TaskSettings(**table[task]).replace(**overrides)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    build: Callable  # (backbone, header, head_init_scale) -> task model
    train_loss: Callable  # (model, batch, StepContext) -> scalar loss
    evaluate: Callable  # (model, EvalContext) -> (metrics, samples)
    selection_key: str  # the metric the released code selects on
    metric_keys: tuple[str, ...]


def _registry() -> dict[str, TaskSpec]:
    def need(header: dict, key: str) -> list:
        if not header.get(key):
            raise UserError(f"dataset.json: field {key!r}: missing or empty")
        return header[key]

    return {
        "classification": TaskSpec(
            "classification",
            lambda bb, h, scale: classification.ClassificationModel(bb, len(need(h, "labels")), scale),
            classification.train_loss, classification.evaluate, "acc1", ("acc1", "acc5")),
        "vqa": TaskSpec("vqa", lambda bb, h, scale: vqa.VQAModel(bb, len(need(h, "answers"))), vqa.train_loss,
                        vqa.evaluate, "vqa_score", ("vqa_score",)),
        "nlvr2": TaskSpec("nlvr2", lambda bb, h, scale: nlvr2.NLVR2Model(bb, head_init_scale=scale),
                          nlvr2.train_loss, nlvr2.evaluate, "acc", ("acc",)),
        "retrieval": TaskSpec("retrieval", lambda bb, h, scale: retrieval.RetrievalModel(bb), retrieval.train_loss,
                              retrieval.evaluate, "average_score",
                              ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score")),
        "captioning": TaskSpec("captioning", lambda bb, h, scale: captioning.CaptioningModel(bb),
                               captioning.train_loss,
                               captioning.evaluate, "cider", ("bleu4", "cider")),
    }


TASKS: dict[str, TaskSpec] = _registry()


def check_task(task: str) -> str:
    if task not in TASK_NAMES:
        raise UserError(f"--task {task!r}: expected one of {', '.join(TASK_NAMES)}")
    return task


def build_task_model(task: str, backbone, header: dict, head_init_scale: float = 0.001):
    """The task model (backbone + released heads) for a task dataset's header. `head_init_scale` multiplies
    the classification and NLVR2 head weights after init (released 0.001)."""
    return TASKS[check_task(task)].build(backbone, header, head_init_scale)
