"""`beit3 finetune`: fine-tune BEiT-3 on one downstream task, evaluate it, write the model, metrics and a report.

    beit3 finetune --task vqa --data VALIDATED/tasks/vqa --text-tokenizer TOK --init RUN/model --out FT \
        [--arch NAME] [--steps N | --epochs E] [--lr ...] [--batch-size ...]

`train()` reads build -> resume -> steps -> export. Settings default to the task's released recipe
(beit3core.tasks.TASK_DEFAULTS); every one of them is a flag. Outputs: FT/model/ (the task-model folder,
beit3core.task_checkpoint), FT/metrics.json (evaluation on --eval-split plus training figures),
FT/report.html (sample predictions), FT/metrics.jsonl and FT/tb/ (training curves). `--init` is this
platform's pretraining RUN/model folder, a fine-tuned FT/model folder, an official BEiT-3 .pth (local or
s3://), or `random`.

Checkpoints: `--ckpt-every-epochs N` writes OUT/checkpoints/step-XXXXXXX/ (beit3train.checkpointing) at epoch
ends and resumes from the latest complete one when rerun with the same --out and settings; a resumed run ends
with the same weights as an uninterrupted one.

Distributed: run under torchrun / a PyTorchJob (the same launcher as pretraining); each rank reads its share
of the training split, gradients are averaged by DDP, and the retrieval loss gathers negatives from every rank.
The end-of-run evaluation is split the same way: each rank predicts a contiguous block of the eval rows and rank 0
scores them all (`beit3train.evaluate.evaluate_split`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from beit3core import data, io
from beit3core.errors import ArgumentParser, UserError, check_bounds, run_main
from beit3core.task_checkpoint import (
    build_task_model_for_init,
    save_task_model,
    task_meta,
)
from beit3core.tasks import TASK_NAMES, TASKS, TaskSettings, collator, settings_for
from beit3core.tasks.common import StepContext
from beit3core.tasks.data import (
    DEFAULT_SHUFFLE_BUFFER,
    TrainAugment,
    check_kind,
    train_loader,
)
from beit3core.tasks.report import metrics_document, write_report
from beit3core.tokenizers import TextTokenizer
from beit3train import checkpointing
from beit3train.config import (
    add_arguments,
    config_from,
    field_names,
    make_parser,
    setting,
)
from beit3train.distributed import (
    DistInfo,
    all_gather_with_grad,
    barrier,
    run_distributed,
)
from beit3train.evaluate import evaluate_split, loader_workers, set_threads
from beit3train.hooks import TrainHooks
from beit3train.metrics import MetricsLogger
from beit3train.optim import build_optimizer, build_param_groups, build_scheduler
from beit3train.runtime import autocast, batch_to_device, wrap_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """`beit3 finetune`'s flags; `exact` marks the settings a resumed run must keep (all task settings)."""

    task: str = setting(help="the downstream task", exact=True, choices=TASK_NAMES)
    data: str = setting(help="validated task dataset (local folder or s3://)")
    text_tokenizer: str = setting(help="`beit3 tokenize text` output, a tokenizer folder or .model")
    init: str = setting(help="pretraining RUN/model folder, fine-tuned model folder, official .pth, or 'random'")
    out: str = setting(help="run folder (local or s3://)")
    train_split: str = setting("train", "split to train on", exact=True)
    eval_split: str | None = setting(None, "split to evaluate on (default: val, else test, else the first "
                                     "non-train split)")
    device: str = setting("auto", "auto: CUDA when available", choices=("auto", "cpu", "cuda"))
    seed: int = setting(0, "seed of the heads' init, the data order and the task's random draws", exact=True)
    threads: int | None = setting(None, "torch intra-op threads (0: every core this rank may use; unset: torch's "
                                  "default)", bounds="[0, inf)")
    num_workers: int | None = setting(None, "DataLoader workers per rank (0: load in the main process; unset: one "
                                      "per 8 usable cores)", bounds="[0, inf)")
    shuffle_buffer: int = setting(DEFAULT_SHUFFLE_BUFFER, "rows each loader process shuffles at a time (the "
                                  "split's shards come in a new order every epoch)", bounds="[1, inf)",
                                  exact=True)
    num_samples: int = setting(8, "sample predictions shown in the report", bounds="[0, inf)")
    max_eval_examples: int = setting(0, "evaluate on the first N rows only (0: all)", bounds="[0, inf)")
    log_every: int = setting(10, "steps between logged metrics", bounds="[1, inf)")
    ckpt_every_epochs: int = setting(0, "checkpoint to OUT/checkpoints/ every N epochs and resume from the "
                                     "latest one (0: off)", bounds="[0, inf)")
    keep_last: int = setting(2, "complete checkpoints to keep", bounds="[1, inf)")
    progress: bool = setting(True, "progress bars")
    settings: TaskSettings = setting(TaskSettings(), "the task's released recipe with the flags' changes",
                                     exact=True)

    def __post_init__(self):
        check_bounds(self)  # each out-of-range number named by its flag
        if self.ckpt_every_epochs < 0 or self.keep_last < 1:
            raise UserError("--ckpt-every-epochs must be >= 0 and --keep-last >= 1")
        if min(self.threads or 0, self.num_workers or 0, self.num_samples, self.max_eval_examples) < 0 \
                or self.log_every < 1:
            raise UserError("--threads, --num-workers, --num-samples and --max-eval-examples must be >= 0, "
                            "--log-every >= 1")
        s = self.settings
        if s.mixup > 0 or s.cutmix > 0:
            if self.task != "classification":
                raise UserError(f"--mixup/--cutmix: only for --task classification, not {self.task}")
            if s.batch_size % 2:
                raise UserError(f"--batch-size {s.batch_size}: mixup/cutmix need an even batch size")


def build_parser() -> ArgumentParser:
    parser = make_parser(FinetuneConfig, "beit3 finetune", "fine-tune BEiT-3 on one downstream task")
    add_arguments(parser.add_argument_group("task settings (default: the task's released recipe)"), TaskSettings,
                  released_defaults=True)
    return parser


def parse_args(argv: list[str] | None) -> FinetuneConfig:
    values = vars(build_parser().parse_args(argv))
    overrides = {name: values.pop(name) for name in field_names(TaskSettings)}
    if overrides["betas"] is not None:
        overrides["betas"] = tuple(overrides["betas"])
    # one of --steps / --epochs sets the length: the recipe's other one is dropped
    if overrides["steps"] is not None and overrides["epochs"] is None:
        overrides["epochs"] = 0
    if overrides["epochs"] is not None and overrides["steps"] is None:
        overrides["steps"] = 0
    return config_from(FinetuneConfig, values, settings=settings_for(values["task"], **overrides))


def default_eval_split(splits: list[str], train_split: str = "train") -> str:
    for name in ("val", "dev", "test"):
        if name in splits:
            return name
    rest = [s for s in splits if s != train_split]
    return rest[0] if rest else splits[0]


# -- build ---------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """The runtime state of one fine-tuning run, kept apart from the frozen config."""

    dist: DistInfo
    header: dict  # the task dataset's dataset.json
    tokenizer: TextTokenizer
    eval_split: str
    model: nn.Module  # the task model itself (state.model is its DDP wrapper under a process group)
    init_info: dict
    loader: torch.utils.data.DataLoader
    total: int  # optimizer steps of the run
    state: checkpointing.TrainState  # progress: epoch, losses; generator: the task's RNG (ctx.rng)
    ctx: StepContext
    mixup: object | None  # timm.data.Mixup
    resumed: checkpointing.Resumed | None = None
    train_seconds: float = 0.0

    @property
    def per_epoch(self) -> int:
        return len(self.loader)


def _mixup(settings: TaskSettings, num_classes: int):
    """timm's Mixup for the classification recipes that use it (imported here: timm costs every run ~1 s)."""
    if settings.mixup <= 0 and settings.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                 label_smoothing=settings.label_smoothing, num_classes=num_classes)


def _optimizer_and_schedule(model: nn.Module, settings: TaskSettings, total: int, warmup: int):
    groups = build_param_groups(model, settings.weight_decay, settings.layer_decay,
                                num_layers=model.backbone.config.depth, head_lr_scale=settings.head_lr_scale)
    optimizer = build_optimizer(groups, settings.lr, betas=settings.betas, eps=settings.eps)
    return optimizer, build_scheduler(optimizer, total, min(warmup, total), settings.lr, settings.min_lr)


def build(cfg: FinetuneConfig, dist_info: DistInfo) -> _Run:
    """Task model from --init (wrapped for training), this rank's data loader, optimizer and schedule."""
    s, task = cfg.settings, cfg.task
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    header = check_kind(cfg.data, task)
    tokenizer = TextTokenizer.load(cfg.text_tokenizer)
    eval_split = cfg.eval_split or default_eval_split(data.splits(cfg.data), cfg.train_split)
    model, init_info = build_task_model_for_init(task, s, header, cfg.init, vocab_size=tokenizer.vocab_size)
    # static_graph: every step runs the same graph, which may leave parameters unused (mask_token, the text
    # experts in classification) and use the backbone twice (retrieval's image and text passes).
    train_model, _ = wrap_model(model, dist_info, static_graph=True)
    loader = train_loader(task, cfg.data, cfg.train_split, collator(task, tokenizer, s.max_len, header),
                          img_size=s.img_size, batch_size=s.batch_size, augment=TrainAugment.of(s),
                          seed=cfg.seed, rank=dist_info.rank,
                          world_size=dist_info.world_size, num_workers=loader_workers(cfg.num_workers),
                          shuffle_buffer=cfg.shuffle_buffer)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise UserError(f"{cfg.data}: split {cfg.train_split!r} has fewer rows than one batch per rank")
    total = s.steps or max(1, math.ceil(s.epochs * per_epoch))
    warmup = s.warmup_steps if s.steps else int(s.warmup_epochs * per_epoch)
    optimizer, scheduler = _optimizer_and_schedule(model, s, total, warmup)
    ctx = StepContext(settings=s, rng=np.random.default_rng(cfg.seed + 1000 * dist_info.rank),
                      gather=all_gather_with_grad if dist_info.distributed else None, rank=dist_info.rank,
                      mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size)
    state = checkpointing.TrainState(train_model, optimizer, scheduler, progress={"epoch": 0, "losses": []},
                                     generator=ctx.rng)
    mixup = _mixup(s, len(header.get("labels") or [])) if task == "classification" else None
    return _Run(dist_info, header, tokenizer, eval_split, model, init_info, loader, total, state, ctx, mixup)


# -- steps ---------------------------------------------------------------------------------------------------
def _train_step(cfg: FinetuneConfig, run: _Run, batch: dict) -> float:
    """One optimizer step; the step's loss."""
    state, s = run.state, cfg.settings
    batch = batch_to_device(batch, run.dist.device)
    if run.mixup is not None:
        batch["image"], batch["soft_labels"] = run.mixup(batch["image"], batch["labels"])
    run.ctx.step = state.step
    with autocast(run.dist.device):
        loss = TASKS[cfg.task].loss(state.model, batch, run.ctx)
    if not torch.isfinite(loss):
        raise RuntimeError(f"finetune {cfg.task}: loss is {loss.item()} at step {state.step}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.clip_grad)
    state.optimizer.step()
    state.scheduler.step()
    return loss.item()


def _run_epoch(cfg: FinetuneConfig, run: _Run, logger: MetricsLogger) -> None:
    """The steps of one epoch, or up to the run's last step."""
    state = run.state
    losses = state.progress["losses"]
    run.loader.generator.manual_seed(cfg.seed + run.dist.rank + 7919 * state.progress["epoch"])
    run.loader.dataset.set_epoch(state.progress["epoch"])  # the epoch's shard order and shuffle
    for batch in run.loader:
        losses.append(_train_step(cfg, run, batch))
        state.step += 1
        logger.advance()
        if state.step % cfg.log_every == 0 or state.step == run.total:
            logger.log(state.step, {"loss": float(np.mean(losses[-cfg.log_every:])),
                                    "lr": state.optimizer.param_groups[-1]["lr"]})
        if state.step >= run.total:
            break


def run_steps(cfg: FinetuneConfig, run: _Run, hooks: TrainHooks) -> None:
    """Epochs from the resumed step to the last; checkpoints at every --ckpt-every-epochs-th epoch end (the
    next epoch's data order follows from (seed, rank, epoch) alone)."""
    state, dist_info = run.state, run.dist
    if run.resumed is not None:
        checkpointing.restore_rank_rng(run.resumed.rng, dist_info.rank, state.generator)
    logger = MetricsLogger(cfg.out if dist_info.is_main else None, start_step=state.step, total_steps=run.total,
                           progress=cfg.progress, desc=f"finetune {cfg.task}")
    if dist_info.is_main:
        print(f"finetune {cfg.task}: {run.total} steps of batch {cfg.settings.batch_size} x {dist_info.world_size} "
              f"rank(s), {run.per_epoch} steps per epoch, init {run.init_info['init']}, device {dist_info.device}"
              + (f", resumed at step {state.step} from {run.resumed.uri}" if run.resumed else ""))
    started = time.time()
    state.model.train()
    while state.step < run.total:
        _run_epoch(cfg, run, logger)
        state.progress["epoch"] += 1
        if cfg.ckpt_every_epochs > 0 and state.progress["epoch"] % cfg.ckpt_every_epochs == 0 \
                and state.step < run.total:
            checkpointing.save_train_state(cfg.out, state, cfg, world_size=dist_info.world_size,
                                           keep_last=cfg.keep_last, on_write=hooks.on_checkpoint_write)
    logger.close()
    run.train_seconds = time.time() - started


# -- export --------------------------------------------------------------------------------------------------
def export(cfg: FinetuneConfig, run: _Run) -> dict:
    """Evaluate on the eval split (every rank its share of the rows, rank 0 scores), then on rank 0 OUT/model,
    OUT/metrics.json and OUT/report.html. Returns the metrics document on rank 0, {} elsewhere."""
    result: dict = {}
    task = cfg.task
    model = run.model.eval()  # the module itself, not the DDP wrapper: ranks run different numbers of batches
    evaluated = evaluate_split(
        model, task, cfg.data, run.eval_split, header=run.header, tokenizer=run.tokenizer, settings=cfg.settings,
        device=run.dist.device, max_examples=cfg.max_eval_examples, num_samples=cfg.num_samples,
        progress=cfg.progress, dist_info=run.dist)
    if evaluated is not None:
        metrics, samples, _ = evaluated
        losses = run.state.progress["losses"]
        result = metrics_document(task, run.eval_split, metrics, cfg.data)
        result["train"] = {"steps": run.state.step, "epochs": run.state.step / run.per_epoch,
                           "final_loss": float(np.mean(losses[-10:])), "first_loss": float(np.mean(losses[:10])),
                           "seconds": round(run.train_seconds, 1), "world_size": run.dist.world_size,
                           "seed": cfg.seed, "threads": torch.get_num_threads(),
                           **run.init_info}
        result["settings"] = cfg.settings.to_dict()
        save_task_model(model, io.join(cfg.out, "model"), task_meta(task, cfg.settings, run.header))
        io.write_json(io.join(cfg.out, "metrics.json"), result)
        write_report(io.join(cfg.out, "report.html"), task=task, data_uri=cfg.data, metrics=result,
                     samples=samples, title=f"{task}: fine-tuned from {run.init_info['init']}")
        selection = TASKS[task].SELECTION_METRIC
        print(f"finetune {task}: {selection} = {metrics[selection]:.2f} on {run.eval_split}; "
              f"wrote {cfg.out}/model, metrics.json, report.html")
    barrier()
    return result


# -- the run -------------------------------------------------------------------------------------------------
def train(cfg: FinetuneConfig, dist_info: DistInfo, hooks: TrainHooks = TrainHooks()) -> dict:
    """build -> resume -> steps -> export. Returns the metrics document on rank 0, {} elsewhere."""
    run = build(cfg, dist_info)
    hooks.on_start(run.model)
    if cfg.ckpt_every_epochs > 0:
        run.resumed = checkpointing.resume_train_state(cfg.out, run.state, cfg, world_size=dist_info.world_size)
    run_steps(cfg, run, hooks)
    hooks.on_end(run.model)
    return export(cfg, run)


def main(argv: list[str] | None = None) -> int:
    run_distributed(train, parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
