"""`beit3 pretrain`: BEiT-3 masked data modeling over images, texts and image-text pairs.

    beit3 pretrain --data VALIDATED --text-tokenizer T --visual-tokens V --out RUN_URI --arch NAME ...
    python -m beit3train.pretrain ...                    # the same
    torchrun --nproc_per_node 2 -m beit3train.pretrain ... # DDP (gloo on CPU, nccl on GPU)

`train()` reads build -> resume -> steps -> export: the backbone + heads, wrapped in DDP or FSDP2, AdamW +
warmup/cosine and the data streams; the newest complete checkpoint of RUN_URI (rank 0 decides); the step
loop with checkpoints; the backbone as RUN_URI/model (what fine-tuning loads) and RUN_URI/summary.json with
the grounding check on held-out pairs. Rerunning the same command continues a killed run exactly.

Outputs under RUN_URI: checkpoints/step-XXXXXXX/ (model incl. mlm_head/mim_head, optimizer, scheduler,
RNG per rank, data position), model/ (backbone only: model.safetensors + config.json), metrics.jsonl,
tb/, summary.json, pretrain_config.json.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass

import torch

from beit3core import data, io
from beit3core.checkpoint import save_model
from beit3core.data.lanes import auto_lanes
from beit3core.errors import ArgumentParser, UserError, check_bounds, run_main
from beit3core.factory import create_model
from beit3core.models import POSITION_INITS, Beit3Config, Beit3Model
from beit3core.pretrain import (
    Beit3ForPretraining,
    MaskingConfig,
    accuracies,
    describe_grounding,
    find_stream_datasets,
    pair_grounding,
)
from beit3core.pretrain.augment import label_on_device
from beit3core.pretrain.data import (
    Layout,
    SampleMaker,
    StreamSource,
    check_inputs,
    lane_loader,
    read_pairs,
    samples_per_step,
    stream_source,
)
from beit3core.tokenizers import TextTokenizer
from beit3core.tokenizers.visual import VisualTokenizer
from beit3train import checkpointing
from beit3train.config import config_from, make_parser, setting
from beit3train.distributed import DistInfo, all_reduce_sum, barrier, run_distributed
from beit3train.evaluate import loader_workers
from beit3train.hooks import TrainHooks
from beit3train.metrics import MetricsLogger
from beit3train.optim import build_optimizer, build_param_groups, build_scheduler
from beit3train.runtime import autocast, batch_to_device, wrap_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """`beit3 pretrain`'s flags; `exact` marks the settings a resumed run must keep."""

    data: str = setting(help="validated collection (datasets of kind images, text, pairs)")
    text_tokenizer: str = setting(help="`tokenize text` output (tokenizer/ and tokens/)")
    visual_tokens: str = setting(help="`tokenize visual` output (tokenizer/ and tokens/)")
    out: str = setting(help="run URI (local or s3://): checkpoints, model, metrics")
    arch: str = setting(help="registered model name, e.g. beit3_tiny_patch8_64", exact=True)
    layout: str | None = setting(None, "override the model's layout", exact=True, choices=("paper", "unilm"))
    model_overrides: tuple[str, ...] = setting((), "Beit3Config fields to override, e.g. depth=2", exact=True,
                                               metavar="KEY=VALUE")
    split: str = setting("train", "split of the datasets to train on", exact=True)
    steps: int = setting(1000, "optimizer steps", exact=True, bounds="[1, inf)")
    # per rank; a resume may change them with the number of processes, keeping the global batch (checked)
    batch_images: int = setting(32, "images per step per rank", bounds="[0, inf)")
    batch_texts: int = setting(32, "texts per step per rank", bounds="[0, inf)")
    batch_pairs: int = setting(32, "pairs per step per rank", bounds="[0, inf)")
    lanes: int = setting(0, "shard lanes of each stream's data order; must divide every global batch and be a "
                         "multiple of processes x loader workers (0: chosen at the first start, see "
                         "beit3core.data.lanes.auto_lanes, and kept by every resume)", exact=True,
                         bounds="[0, inf)")
    lr: float = setting(1e-3, "peak learning rate", exact=True, bounds="(0, inf)")
    warmup: int | None = setting(None, "warmup steps (default: 10%% of --steps, at most 10000)", exact=True,
                                 bounds="[0, inf)")
    min_lr: float = setting(1e-5, "final learning rate of the cosine schedule", exact=True, bounds="[0, inf)")
    weight_decay: float = setting(0.05, "AdamW weight decay", exact=True, bounds="[0, inf)")
    betas: tuple[float, float] = setting((0.9, 0.98), "AdamW betas", exact=True, bounds="[0, 1)")
    eps: float = setting(1e-6, "AdamW eps", exact=True, bounds="(0, inf)")
    drop_path: float = setting(0.1, "stochastic depth rate", exact=True, bounds="[0, 1)")
    position_init: str = setting("small", "position tables at the start: small (the paper's range, 2.3) or normal "
                                 "(N(0, 1), where the released code leaves them)", exact=True,
                                 choices=POSITION_INITS)
    clip_grad: float = setting(3.0, "max grad norm (0: off)", exact=True, bounds="[0, inf)")
    text_mask_ratio: float = setting(0.15, "masked share of monomodal text tokens", exact=True)
    pair_text_mask_ratio: float = setting(0.5, "masked share of the text tokens of pairs", exact=True)
    image_mask_ratio: float = setting(0.4, "masked share of image patches (block masking)", exact=True)
    max_text_len: int = setting(64, "text tokens per sequence incl. <s> and </s>", exact=True, bounds="[3, inf)")
    ckpt_every: int = setting(200, "steps between checkpoints", bounds="[1, inf)")
    keep_last: int = setting(2, "complete checkpoints to keep", bounds="[1, inf)")
    fsdp: str = setting("auto", "auto: FSDP2 for models as wide as large/giant on GPU with several processes, "
                        "else DDP", choices=("auto", "on", "off"))
    checkpoint_format: str = setting("auto", "auto: sharded (every process writes its part, torch.distributed."
                                     "checkpoint) when FSDP shards the model or several processes train a model as "
                                     "wide as large/giant, else full (one file)", choices=checkpointing.FORMATS)
    device: str = setting("auto", "auto: CUDA when available", choices=("auto", "cpu", "cuda"))
    visual_targets: str = setting("auto", "image labels: on-the-fly (the visual tokenizer on the training device, over "
                                  "the augmented view the model sees, as BEiT v2) or precomputed (--visual-tokens' "
                                  "token files, no augmentation); auto: on-the-fly on CUDA, precomputed on CPU",
                                  exact=True, choices=("auto", "on-the-fly", "precomputed"))
    seed: int = setting(0, "seed of the initial weights, the data order and the masks", exact=True)
    num_workers: int | None = setting(None, "DataLoader workers per rank (unset: sized from the usable cores, see "
                                      "beit3train.evaluate.loader_workers)", bounds="[0, inf)")
    log_every: int = setting(10, "steps between logged metrics", bounds="[1, inf)")
    checkpoint_activations: bool = setting(False, "recompute blocks in backward")
    eval_split: str = setting("val", "split of the pair datasets for the end-of-run grounding check")
    grounding_pairs: int = setting(512, "held-out pairs the grounding check reads (0: skip it)", bounds="[0, inf)")

    def __post_init__(self):
        check_bounds(self)  # each out-of-range number named by its flag; then the relations between them
        for name in ("text_mask_ratio", "pair_text_mask_ratio", "image_mask_ratio"):
            ratio = getattr(self, name)
            if not 0 < ratio <= 1:  # also refuses nan
                raise UserError(f"--{name.replace('_', '-')}: a mask ratio must be in (0, 1], got {ratio}")
        checks = [
            (self.steps > 0, "--steps must be > 0"),
            (min(self.batch_sizes.values()) >= 0 and sum(self.batch_sizes.values()) > 0,
             "--batch-images/--batch-texts/--batch-pairs must be >= 0 and not all 0"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "--lr must be > 0 and 0 <= --min-lr <= --lr"),
            (self.warmup is None or 0 <= self.warmup <= self.steps, "--warmup must be within 0..--steps"),
            (self.weight_decay >= 0 and self.eps > 0, "--weight-decay must be >= 0 and --eps > 0"),
            (all(0 <= b < 1 for b in self.betas), "--betas must be within [0, 1)"),
            (0 <= self.drop_path < 1, "--drop-path must be within [0, 1)"),
            (self.clip_grad >= 0, "--clip-grad must be >= 0"),
            (self.max_text_len >= 3, "--max-text-len must be >= 3"),
            (self.ckpt_every > 0 and self.keep_last > 0, "--ckpt-every and --keep-last must be > 0"),
            ((self.num_workers or 0) >= 0 and self.log_every > 0, "--num-workers must be >= 0 and --log-every > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"beit3 pretrain: {message}")
        parse_model_overrides(self.model_overrides)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(10000, self.steps // 10)

    @property
    def batch_sizes(self) -> dict[str, int]:
        return {"images": self.batch_images, "texts": self.batch_texts, "pairs": self.batch_pairs}


def build_parser() -> ArgumentParser:
    return make_parser(PretrainConfig, "beit3 pretrain", __doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None) -> PretrainConfig:
    return config_from(PretrainConfig, vars(build_parser().parse_args(argv)))


def parse_model_overrides(items: tuple[str, ...]) -> dict:
    """"depth=2" items -> typed Beit3Config values (by the field's declared type)."""
    types = {f.name: f.type for f in dataclasses.fields(Beit3Config)}
    out = {}
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise UserError(f"beit3 pretrain: --model-overrides {item!r}: expected KEY=VALUE")
        if key not in types:
            raise UserError(f"--model-overrides {key}: not a Beit3Config field ({', '.join(types)})")
        try:
            if types[key] == "bool":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = {"int": int, "float": float, "str": str}[types[key]](value)
        except ValueError:
            raise UserError(f"--model-overrides {key}={value}: expected a {types[key]}") from None
    return out


# -- build ---------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """The runtime state of one pretraining run, kept apart from the frozen config."""

    dist: DistInfo
    tokenizer: TextTokenizer
    visual: dict  # img_size, grid, codebook_size of the visual tokens
    model: Beit3ForPretraining  # the module itself (FSDP2 shards it in place; DDP wraps it in state.model)
    state: checkpointing.TrainState
    sharded: bool
    streams: dict[str, StreamSource]
    eval_pairs: StreamSource | None
    masking: MaskingConfig
    resumed: checkpointing.Resumed | None = None
    labeler: VisualTokenizer | None = None  # on-the-fly visual targets: the tokenizer, on the training device
    lanes: int = 0  # the data order's lanes (--lanes, or resolved from 0 by resolve_lanes)


def read_visual_meta(visual_tokens: str) -> dict:
    config = VisualTokenizer.read_config(visual_tokens)
    return {"img_size": config.img_size, "grid": config.grid_size, "codebook_size": config.codebook_size}


def build_model(cfg: PretrainConfig, vocab_size: int, visual: dict) -> Beit3ForPretraining:
    overrides = {**parse_model_overrides(cfg.model_overrides), "vocab_size": vocab_size,
                 "drop_path_rate": cfg.drop_path, "checkpoint_activations": cfg.checkpoint_activations}
    if cfg.layout:
        overrides["layout"] = cfg.layout
    backbone = create_model(cfg.arch, **overrides)
    c = backbone.config
    if c.img_size != visual["img_size"] or c.grid_size[0] != visual["grid"]:
        raise UserError(
            f"--arch {cfg.arch}: {c.grid_size[0]}x{c.grid_size[0]} patches at {c.img_size} px, but the visual "
            f"tokens in {cfg.visual_tokens} are {visual['grid']}x{visual['grid']} at {visual['img_size']} px"
        )
    text_positions = c.text_positions - c.pos_offset
    if cfg.max_text_len > text_positions:
        raise UserError(f"--max-text-len {cfg.max_text_len}: the model has {text_positions} text positions")
    return Beit3ForPretraining(backbone, vocab_size, visual["codebook_size"], position_init=cfg.position_init)


def visual_targets_mode(cfg: PretrainConfig, device: torch.device) -> str:
    """precomputed | on-the-fly: what the loader puts in the batches for the image losses."""
    if cfg.visual_targets == "auto":
        return "on-the-fly" if device.type == "cuda" else "precomputed"
    return cfg.visual_targets


def load_streams(cfg: PretrainConfig, found: dict[str, list[str]], targets: str) -> dict[str, StreamSource]:
    """The shard lists of the training streams with a batch size > 0 (read from dataset.json: no rows)."""
    check_inputs(cfg.data, cfg.text_tokenizer, cfg.visual_tokens)
    streams = {}
    for name, batch_size in cfg.batch_sizes.items():
        if batch_size == 0:
            continue
        if not found[name]:
            raise UserError(f"{cfg.data}: no dataset of kind {name.rstrip('s') if name != 'texts' else 'text'!r} "
                            f"for --batch-{name} {batch_size}")
        streams[name] = stream_source(name, cfg.data, cfg.split, found[name],
                                      cfg.visual_tokens if targets == "precomputed" else None)
    return streams


def load_eval_pairs(cfg: PretrainConfig, pair_datasets: list[str]) -> StreamSource | None:
    """The shards of the `cfg.eval_split` split of the pair datasets that have it, or None (logged)."""
    if cfg.grounding_pairs <= 0:
        return None
    with_split = [rel for rel in pair_datasets
                  if cfg.eval_split in data.read_header(io.join(cfg.data, rel) if rel else cfg.data)["splits"]]
    source = stream_source("pairs", cfg.data, cfg.eval_split, with_split)
    if source.rows < 2:
        log.warning("no grounding check: fewer than 2 pairs in split %r of %s", cfg.eval_split, cfg.data)
        return None
    return source


def build(cfg: PretrainConfig, dist_info: DistInfo) -> _Run:
    """Tokenizer, model (wrapped for training), optimizer, schedule and data streams."""
    tokenizer = TextTokenizer.load(cfg.text_tokenizer)
    visual = read_visual_meta(cfg.visual_tokens)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (FSDP shards them in place)
    model = build_model(cfg, tokenizer.vocab_size, visual)
    # a missing stream leaves its experts and heads without gradient
    train_model, sharded = wrap_model(model, dist_info, fsdp=cfg.fsdp,
                                      find_unused_parameters=min(cfg.batch_sizes.values()) == 0)
    groups = build_param_groups(train_model, cfg.weight_decay)
    optimizer = build_optimizer(groups, cfg.lr, cfg.betas, cfg.eps,
                                fused=True if dist_info.device.type == "cuda" else None)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
    state = checkpointing.TrainState(train_model, optimizer, scheduler,
                                     progress={"samples_seen": 0, "data_position": {}})
    found = find_stream_datasets(cfg.data)
    masking = MaskingConfig(cfg.text_mask_ratio, cfg.pair_text_mask_ratio, cfg.image_mask_ratio, tokenizer.mask_id,
                            visual["grid"], visual["img_size"], cfg.max_text_len, visual["img_size"])
    targets = visual_targets_mode(cfg, dist_info.device)
    run = _Run(dist_info, tokenizer, visual, model, state, sharded, load_streams(cfg, found, targets),
               load_eval_pairs(cfg, found["pairs"]) if dist_info.is_main else None, masking)
    if targets == "on-the-fly":
        run.labeler = VisualTokenizer.load(cfg.visual_tokens, device=dist_info.device)
    return run


# -- steps ---------------------------------------------------------------------------------------------------
def checkpoint_sharded(cfg: PretrainConfig, run: _Run) -> bool:
    """Whether this run saves sharded checkpoints (--checkpoint-format; auto: see checkpointing.use_sharded)."""
    return checkpointing.use_sharded(cfg.checkpoint_format, fsdp=run.sharded, world_size=run.dist.world_size,
                                     embed_dim=run.model.config.embed_dim)


def data_position(cfg: PretrainConfig, step: int, world_size: int, lanes: int) -> dict:
    """Where the data order stands after `step`: all a resume needs (the lanes seek to step x G / L rows)."""
    return {"step": step, "seed": cfg.seed, "lanes": lanes,
            "global_batch": {k: v * world_size for k, v in cfg.batch_sizes.items()}}


def resolve_lanes(cfg: PretrainConfig, run: _Run) -> int:
    """--lanes, or with 0 the checkpoint's lanes on a resume and `auto_lanes` at the first start."""
    if cfg.lanes:
        return cfg.lanes
    saved = (run.state.progress.get("data_position") or {}).get("lanes") if run.resumed else None
    if saved:
        return int(saved)
    return auto_lanes({k: v * run.dist.world_size for k, v in cfg.batch_sizes.items()}, run.dist.world_size,
                      loader_workers(cfg.num_workers, run.dist.device.type))


def check_data_position(cfg: PretrainConfig, run: _Run) -> None:
    """A resume keeps the data order: the same lanes and global batch per stream, on any number of processes."""
    if run.resumed is None:
        return
    saved = run.state.progress.get("data_position") or {}
    now = data_position(cfg, run.state.step, run.dist.world_size, run.lanes)
    if saved.get("global_batch") != now["global_batch"] or saved.get("lanes") != now["lanes"]:
        raise UserError(f"{run.resumed.uri}: the checkpoint's data order has global batches "
                        f"{saved.get('global_batch')} over --lanes {saved.get('lanes')}; this job has "
                        f"{now['global_batch']} over --lanes {now['lanes']} (per-rank batch x processes); "
                        "keep them or use a new --out")


def _open_batches(cfg: PretrainConfig, run: _Run):
    """The batch iterator from the current step on, then the RNGs: restored from the checkpoint, or seeded."""
    start, dist_info = run.state.step, run.dist
    run.lanes = resolve_lanes(cfg, run)
    check_data_position(cfg, run)
    layout = Layout(run.lanes, dist_info.rank, dist_info.world_size,
                    loader_workers(cfg.num_workers, dist_info.device.type))
    # created before the RNG restore: the loader's iterator draws from the global RNG
    batches = lane_loader(run.streams, cfg.batch_sizes, run.masking, seed=cfg.seed, layout=layout, start_step=start,
                          total_steps=cfg.steps, text_tokenizer=run.tokenizer.model_proto,
                          visual_targets=visual_targets_mode(cfg, dist_info.device),
                          pin_memory=dist_info.device.type == "cuda")
    # the checkpoint's RNGs, unless it was written by another number of processes: then seeded as a new start
    if run.resumed is None or not checkpointing.restore_rank_rng(run.resumed.rng, dist_info.rank):
        torch.manual_seed(cfg.seed * 1000 + 1 + dist_info.rank + start * 7919)  # drop path, per rank
    return batches


def _train_step(cfg: PretrainConfig, run: _Run, batch: dict) -> tuple[dict[str, float], float]:
    """One optimizer step; (this rank's stats, the peak-relative lr the step used)."""
    model, optimizer = run.state.model, run.state.optimizer
    batch = batch_to_device(batch, run.dist.device)
    if run.labeler is not None:  # labels of the tokenizer's view, in fp32 outside autocast
        label_on_device(batch, run.labeler)
    with autocast(run.dist.device):
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
    lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
    optimizer.step()
    run.state.scheduler.step()
    stats = {k: float(v) for k, v in out.stats.items()}
    stats.update(loss=float(out.loss.detach()),
                 grad_norm=float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
    return stats, lr


def _interval_record(interval: dict[str, float], steps: int, seconds: float, per_step: int, world_size: int) -> dict:
    """The logged metrics of `steps` steps: stats summed over ranks, then averaged."""
    keys = sorted(interval)
    total = dict(zip(keys, all_reduce_sum(torch.tensor([interval[k] for k in keys], dtype=torch.float64)).tolist()))
    n = steps * world_size
    record = {"loss": total["loss"] / n, "grad_norm": total["grad_norm"] / n,
              "samples_per_s": per_step * steps / seconds, "step_time": seconds / steps}
    record.update(accuracies(total))
    for part in ("text_mlm", "pair_mlm", "image_mim", "pair_mim"):
        if f"{part}_loss" in total:
            record[f"{part}_loss"] = total[f"{part}_loss"] / n
    return record


def run_steps(cfg: PretrainConfig, run: _Run, hooks: TrainHooks) -> None:
    """The step loop from the resumed step to `cfg.steps`: metrics every --log-every, checkpoints every
    --ckpt-every and at the end."""
    state, dist_info = run.state, run.dist
    batches = _open_batches(cfg, run)
    per_step = samples_per_step(cfg.batch_sizes, dist_info.world_size)
    logger = MetricsLogger(cfg.out if dist_info.is_main else None, start_step=state.step, total_steps=cfg.steps,
                           progress=dist_info.is_main, desc="pretrain")
    if dist_info.is_main:
        io.write_json(io.join(cfg.out, "pretrain_config.json"),
                      {**dataclasses.asdict(cfg), "model_config": run.model.config.to_dict(),
                       "world_size": dist_info.world_size, "fsdp": run.sharded, "device": str(dist_info.device)})
    state.model.train()
    interval: dict[str, float] = {}
    steps_in_interval, t_interval = 0, time.perf_counter()
    for expected in range(state.step, cfg.steps):
        step, batch = next(batches)
        if step != expected:
            raise RuntimeError(f"data loader delivered step {step}, expected {expected}")
        stats, lr = _train_step(cfg, run, batch)
        state.step = done = step + 1
        state.progress["samples_seen"] += per_step
        for k, v in stats.items():
            interval[k] = interval.get(k, 0.0) + v
        steps_in_interval += 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = _interval_record(interval, steps_in_interval, time.perf_counter() - t_interval, per_step,
                                      dist_info.world_size)
            logger.log(done, {**record, "lr": lr, "samples_seen": state.progress["samples_seen"]})
            interval, steps_in_interval, t_interval = {}, 0, time.perf_counter()
        logger.advance()
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            state.progress["data_position"] = data_position(cfg, done, dist_info.world_size, run.lanes)
            logger.flush()
            checkpointing.save_train_state(cfg.out, state, cfg, world_size=dist_info.world_size,
                                           keep_last=cfg.keep_last, on_write=hooks.on_checkpoint_write,
                                           sharded=checkpoint_sharded(cfg, run))
    del batches
    logger.close()


# -- export --------------------------------------------------------------------------------------------------
def _summary_from_history(rows: list[dict], total: int, vocab: int, codebook: int) -> dict:
    window = [r for r in rows if r["step"] > total - max(1, total // 10)] or rows[-1:]

    def mean(key, rs):
        vals = [r[key] for r in rs if key in r]
        return sum(vals) / len(vals) if vals else None

    first = rows[:1]
    return {
        "steps": total,
        "mlm_acc": mean("mlm_acc", window),
        "mim_acc": mean("mim_acc", window),
        "loss": mean("loss", window),
        "initial_mlm_acc": mean("mlm_acc", first),
        "initial_mim_acc": mean("mim_acc", first),
        "initial_loss": mean("loss", first),
        "mlm_chance": 1.0 / vocab,
        "mim_chance": 1.0 / codebook,
        "accuracy_window_steps": [window[0]["step"], window[-1]["step"]] if window else None,
    }


def _grounding(cfg: PretrainConfig, run: _Run, model_sd: dict, backbone: Beit3Model) -> dict | None:
    """The pair-grounding check (beit3core.pretrain.grounding) of the exported weights, on rank 0."""
    if run.eval_pairs is None:
        return None
    model = Beit3ForPretraining(backbone, model_sd["mlm_head.weight"].shape[0], model_sd["mim_head.weight"].shape[0])
    model.load_state_dict(model_sd)
    maker = SampleMaker(run.masking, seed=cfg.seed, text_tokenizer=run.tokenizer.model_proto)
    images, texts = read_pairs(run.eval_pairs, cfg.grounding_pairs, maker)
    if len(texts) < 2:
        log.warning("no grounding check: fewer than 2 images in split %r of %s", cfg.eval_split, cfg.data)
        return None
    device = run.dist.device
    result = pair_grounding(model.to(device), images, texts, run.masking, seed=cfg.seed, device=device)
    return {"split": cfg.eval_split, **result}


def export(cfg: PretrainConfig, run: _Run) -> dict | None:
    """RUN_URI/model (the backbone, what fine-tuning loads; the heads stay in the checkpoints) and
    RUN_URI/summary.json. Returns the summary on rank 0, None elsewhere."""
    model_sd, _ = checkpointing.full_state(run.state.model, None)  # collective under FSDP
    summary = None
    if run.dist.is_main:
        backbone = Beit3Model(run.model.config)
        prefix = "backbone."
        backbone.load_state_dict({k[len(prefix):]: v for k, v in model_sd.items() if k.startswith(prefix)})
        save_model(backbone, io.join(cfg.out, "model"))
        metrics_uri = io.join(cfg.out, "metrics.jsonl")
        rows = io.read_jsonl(metrics_uri) if io.exists(metrics_uri) else []
        summary = _summary_from_history(rows, cfg.steps, run.tokenizer.vocab_size, run.visual["codebook_size"])
        summary.update(arch=cfg.arch, layout=run.model.config.layout,
                       samples_seen=run.state.progress["samples_seen"], world_size=run.dist.world_size,
                       resumed_from=run.resumed.uri if run.resumed else None,
                       visual_targets=visual_targets_mode(cfg, run.dist.device),
                       grounding=_grounding(cfg, run, model_sd, backbone))
        io.write_json(io.join(cfg.out, "summary.json"), summary)
    barrier()
    return summary


# -- the run -------------------------------------------------------------------------------------------------
def train(cfg: PretrainConfig, dist_info: DistInfo, hooks: TrainHooks = TrainHooks()) -> dict | None:
    """build -> resume -> steps -> export. Returns the summary on rank 0, None elsewhere."""
    run = build(cfg, dist_info)
    hooks.on_start(run.model)
    # any number of processes: the data order depends on the global batch and lanes (check_data_position)
    run.resumed = checkpointing.resume_train_state(cfg.out, run.state, cfg, world_size=dist_info.world_size,
                                                   world_size_may_change=True)
    run_steps(cfg, run, hooks)
    hooks.on_end(run.model)
    return export(cfg, run)


def _print_summary(cfg: PretrainConfig, summary: dict) -> None:
    def show(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"pretrain: {cfg.steps} steps -> {cfg.out}/model; MLM acc {show(summary['mlm_acc'])} "
          f"(chance {summary['mlm_chance']:.4f}), MIM acc {show(summary['mim_acc'])} "
          f"(chance {summary['mim_chance']:.4f})")
    if summary["grounding"]:
        print("pretrain: " + describe_grounding(summary["grounding"]))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    summary = run_distributed(train, cfg)
    if summary is not None:  # rank 0
        _print_summary(cfg, summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
