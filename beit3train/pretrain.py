"""`beit3 pretrain`: BEiT-3 masked data modeling over images, texts and image-text pairs.

    beit3 pretrain --data VALIDATED --text-tokenizer T --visual-tokens V --out RUN_URI --model NAME ...
    python -m beit3train.pretrain ...                    # the same
    torchrun --nproc_per_node 2 -m beit3train.pretrain ... # DDP (gloo on CPU, nccl on GPU)

The flow: parse argv once into a frozen PretrainConfig -> init the process group (DistInfo) -> build the
backbone + heads -> DDP or FSDP2 -> AdamW + warmup/cosine -> resume from RUN_URI's latest complete
checkpoint (rank 0 decides) -> the step loop -> final checkpoint, RUN_URI/model (the backbone, what
fine-tuning loads), RUN_URI/summary.json with the grounding check on held-out pairs. Rerunning the same
command continues a killed run exactly.

Outputs under RUN_URI: checkpoints/step-XXXXXXX/ (model incl. mlm_head/mim_head, optimizer, scheduler,
RNG per rank, data position), model/ (backbone only: model.safetensors + config.json), metrics.jsonl,
tb/, summary.json, pretrain_config.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

KILL_ENV = "BEIT3_TEST_KILL_AFTER_STEP"  # test hook: SIGKILL this process once this step is done
DUMP_ENV = "BEIT3_TEST_DUMP_WEIGHTS"  # test hook: each rank saves its own weights (DDP) at start and end here


@dataclass(frozen=True)
class PretrainConfig:
    data: str
    text_tokenizer: str
    visual_tokens: str
    out: str
    model: str
    layout: str | None = None  # None: the model config's own layout
    model_overrides: tuple[tuple[str, str], ...] = ()  # extra Beit3Config fields (KEY, VALUE) from the CLI
    split: str = "train"
    steps: int = 1000
    batch_images: int = 32
    batch_texts: int = 32
    batch_pairs: int = 32
    lr: float = 1e-3
    warmup: int | None = None  # None: 10% of steps, at most 10000
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    drop_path: float = 0.1
    clip_grad: float = 3.0
    text_mask_ratio: float = 0.15
    pair_text_mask_ratio: float = 0.5
    image_mask_ratio: float = 0.4
    max_text_len: int = 64
    ckpt_every: int = 200
    keep_last: int = 2
    fsdp: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    checkpoint_activations: bool = False
    eval_split: str = "val"  # held-out pairs for the grounding check (beit3core.pretrain.grounding)
    grounding_pairs: int = 512  # 0: no grounding check

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(10000, self.steps // 10)

    @property
    def batch_sizes(self) -> dict[str, int]:
        return {"images": self.batch_images, "texts": self.batch_texts, "pairs": self.batch_pairs}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields whose change makes a resumed run differ from an uninterrupted one.
_EXACTNESS_FIELDS = ("model", "layout", "model_overrides", "split", "batch_images", "batch_texts", "batch_pairs", "lr", "warmup",
                     "min_lr", "weight_decay", "betas", "eps", "drop_path", "clip_grad", "text_mask_ratio",
                     "pair_text_mask_ratio", "image_mask_ratio", "max_text_len", "seed", "steps")


def build_parser() -> argparse.ArgumentParser:
    from beit3core.errors import ArgumentParser

    d = PretrainConfig.__dataclass_fields__
    p = ArgumentParser(prog="beit3 pretrain", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="validated collection (datasets of kind images, text, pairs)")
    p.add_argument("--text-tokenizer", required=True, help="`tokenize text` output (tokenizer/ and tokens/)")
    p.add_argument("--visual-tokens", required=True, help="`tokenize visual` output (tokenizer/ and tokens/)")
    p.add_argument("--out", required=True, help="run URI (local or s3://): checkpoints, model, metrics")
    p.add_argument("--model", required=True, help="registered model name, e.g. beit3_tiny_patch8_64")
    p.add_argument("--layout", choices=["paper", "unilm"], default=None, help="override the model's layout")
    p.add_argument("--model-override", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Beit3Config field, e.g. depth=2 (repeatable)")
    p.add_argument("--split", default=d["split"].default)
    p.add_argument("--steps", type=int, default=d["steps"].default)
    p.add_argument("--batch-images", type=int, default=d["batch_images"].default, help="images per step per rank")
    p.add_argument("--batch-texts", type=int, default=d["batch_texts"].default, help="texts per step per rank")
    p.add_argument("--batch-pairs", type=int, default=d["batch_pairs"].default, help="pairs per step per rank")
    p.add_argument("--lr", type=float, default=d["lr"].default, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps, <= 10000)")
    p.add_argument("--min-lr", type=float, default=d["min_lr"].default)
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    p.add_argument("--betas", type=float, nargs=2, default=list(d["betas"].default))
    p.add_argument("--eps", type=float, default=d["eps"].default)
    p.add_argument("--drop-path", type=float, default=d["drop_path"].default)
    p.add_argument("--clip-grad", type=float, default=d["clip_grad"].default, help="max grad norm (0: off)")
    p.add_argument("--text-mask-ratio", type=float, default=d["text_mask_ratio"].default)
    p.add_argument("--pair-text-mask-ratio", type=float, default=d["pair_text_mask_ratio"].default)
    p.add_argument("--image-mask-ratio", type=float, default=d["image_mask_ratio"].default)
    p.add_argument("--max-text-len", type=int, default=d["max_text_len"].default)
    p.add_argument("--ckpt-every", type=int, default=d["ckpt_every"].default)
    p.add_argument("--keep-last", type=int, default=d["keep_last"].default)
    p.add_argument("--fsdp", choices=["auto", "on", "off"], default=d["fsdp"].default,
                   help="auto: FSDP for large/giant models on GPU with several processes, else DDP")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d["device"].default)
    p.add_argument("--seed", type=int, default=d["seed"].default)
    p.add_argument("--num-workers", type=int, default=d["num_workers"].default, help="DataLoader workers per rank")
    p.add_argument("--log-every", type=int, default=d["log_every"].default)
    p.add_argument("--checkpoint-activations", action="store_true", help="recompute blocks in backward")
    p.add_argument("--eval-split", default=d["eval_split"].default,
                   help="split of the pair datasets for the end-of-run grounding check")
    p.add_argument("--grounding-pairs", type=int, default=d["grounding_pairs"].default,
                   help="held-out pairs the grounding check reads (0: skip it)")
    return p


def parse_args(argv: list[str] | None) -> PretrainConfig:
    from beit3core.errors import UserError

    ns = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(ns).items()}
    values["betas"] = tuple(values["betas"])
    overrides = []
    for item in values["model_overrides"]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"beit3 pretrain: --model-override {item!r}: expected KEY=VALUE")
        overrides.append((key.strip(), value.strip()))
    values["model_overrides"] = tuple(overrides)
    cfg = PretrainConfig(**values)
    checks = [
        (cfg.steps > 0, "--steps must be > 0"),
        (min(cfg.batch_sizes.values()) >= 0 and sum(cfg.batch_sizes.values()) > 0,
         "--batch-images/--batch-texts/--batch-pairs must be >= 0 and not all 0"),
        (cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr, "--lr must be > 0 and 0 <= --min-lr <= --lr"),
        (cfg.warmup is None or 0 <= cfg.warmup <= cfg.steps, "--warmup must be within 0..--steps"),
        (cfg.weight_decay >= 0 and cfg.eps > 0, "--weight-decay must be >= 0 and --eps > 0"),
        (all(0 <= b < 1 for b in cfg.betas), "--betas must be within [0, 1)"),
        (0 <= cfg.drop_path < 1, "--drop-path must be within [0, 1)"),
        (cfg.clip_grad >= 0, "--clip-grad must be >= 0"),
        (all(0 < r <= 1 for r in (cfg.text_mask_ratio, cfg.pair_text_mask_ratio, cfg.image_mask_ratio)),
         "mask ratios must be within (0, 1]"),
        (cfg.max_text_len >= 3, "--max-text-len must be >= 3"),
        (cfg.ckpt_every > 0 and cfg.keep_last > 0, "--ckpt-every and --keep-last must be > 0"),
        (cfg.num_workers >= 0 and cfg.log_every > 0, "--num-workers must be >= 0 and --log-every > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"beit3 pretrain: {message}")
    return cfg


@dataclass(frozen=True)
class RunContext:
    """Runtime facts, kept apart from the frozen config."""

    dist: object  # DistInfo
    use_fsdp: bool
    start_step: int
    resume_uri: str | None


# -- building blocks ---------------------------------------------------------------------------------------
def read_visual_meta(visual_tokens: str) -> dict:
    from beit3core import io
    from beit3core.errors import UserError

    where = io.join(visual_tokens, "tokenizer", "config.json")
    if not io.exists(where):
        raise UserError(f"{where}: no such file (--visual-tokens must be a `beit3 tokenize visual` output)")
    meta = io.read_json(where).get("model")
    if not isinstance(meta, dict) or not {"img_size", "patch_size", "codebook_size"} <= set(meta):
        raise UserError(f"{where}: field 'model' must hold img_size, patch_size and codebook_size")
    return {"img_size": int(meta["img_size"]), "grid": int(meta["img_size"]) // int(meta["patch_size"]),
            "codebook_size": int(meta["codebook_size"])}


def parse_model_overrides(pairs) -> dict:
    """("depth", "2") pairs -> typed Beit3Config values (by the field's declared type)."""
    import dataclasses as dc

    from beit3core.errors import UserError
    from beit3core.models import Beit3Config

    types = {f.name: f.type for f in dc.fields(Beit3Config)}
    out = {}
    for key, value in pairs:
        if key not in types:
            raise UserError(f"--model-override {key}: not a Beit3Config field ({', '.join(types)})")
        try:
            if types[key] == "bool":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = {"int": int, "float": float, "str": str}[types[key]](value)
        except ValueError:
            raise UserError(f"--model-override {key}={value}: expected a {types[key]}") from None
    return out


def build_model(cfg: PretrainConfig, vocab_size: int, visual: dict):
    from beit3core.errors import UserError
    from beit3core.factory import create_model
    from beit3core.pretrain import Beit3ForPretraining

    overrides = {**parse_model_overrides(cfg.model_overrides), "vocab_size": vocab_size,
                 "drop_path_rate": cfg.drop_path, "checkpoint_activations": cfg.checkpoint_activations}
    if cfg.layout:
        overrides["layout"] = cfg.layout
    backbone = create_model(cfg.model, **overrides)
    c = backbone.config
    if c.img_size != visual["img_size"] or c.grid_size[0] != visual["grid"]:
        raise UserError(
            f"--model {cfg.model}: {c.grid_size[0]}x{c.grid_size[0]} patches at {c.img_size} px, but the visual "
            f"tokens in {cfg.visual_tokens} are {visual['grid']}x{visual['grid']} at {visual['img_size']} px"
        )
    if cfg.max_text_len > c.text_positions - c.pos_offset:
        raise UserError(f"--max-text-len {cfg.max_text_len}: the model has {c.text_positions - c.pos_offset} text positions")
    return Beit3ForPretraining(backbone, vocab_size, visual["codebook_size"])


def wrap_model(model, cfg: PretrainConfig, dist_info):
    """DDP, or FSDP2 (each block a unit, then the root) for large/giant models on GPU."""
    import torch

    wants_fsdp = cfg.fsdp == "on" or (
        cfg.fsdp == "auto" and dist_info.device.type == "cuda" and any(s in cfg.model for s in ("large", "giant")))
    model = model.to(dist_info.device)
    if not dist_info.distributed:
        if cfg.fsdp == "on":
            log.warning("--fsdp on: a single process has nothing to shard; training unsharded")
        return model, False
    if wants_fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.backbone.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, True
    unused = min(cfg.batch_sizes.values()) == 0  # a missing stream leaves its experts/heads without gradient
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None,
        find_unused_parameters=unused), False


def _to_device(batch: dict, device) -> dict:
    return {k: {kk: v.to(device, non_blocking=True) for kk, v in part.items()} for k, part in batch.items()}


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _check_resume_config(saved: dict, cfg: PretrainConfig) -> None:
    changed = [f for f in _EXACTNESS_FIELDS if f in saved and _as_tuples(saved[f]) != _as_tuples(getattr(cfg, f))]
    if changed:
        log.warning("resuming with changed %s: the run will not match an uninterrupted one", ", ".join(changed))


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


def _load_eval_pairs(cfg: PretrainConfig, pair_datasets: list[str]):
    """The `cfg.eval_split` rows of the pair datasets that have that split, as a Stream, or None (logged).
    Loaded before training, so stale or missing token files fail the run at once, not at its end."""
    from beit3core import data, io
    from beit3core.pretrain import load_stream

    if cfg.grounding_pairs <= 0:
        return None
    with_split = [rel for rel in pair_datasets
                  if cfg.eval_split in data.read_header(io.join(cfg.data, rel) if rel else cfg.data)["splits"]]
    stream = load_stream("pairs", cfg.data, cfg.text_tokenizer, cfg.visual_tokens, cfg.eval_split, with_split)
    if len(stream) < 2:
        log.warning("no grounding check: fewer than 2 pairs in split %r of %s", cfg.eval_split, cfg.data)
        return None
    return stream


def _grounding(cfg: PretrainConfig, eval_pairs, masking, model_sd: dict, backbone, device) -> dict | None:
    """The pair-grounding check (beit3core.pretrain.grounding) of the exported weights, on rank 0."""
    from beit3core.pretrain import Beit3ForPretraining, MixedBatches, pair_grounding

    if eval_pairs is None:
        return None
    model = Beit3ForPretraining(backbone, model_sd["mlm_head.weight"].shape[0], model_sd["mim_head.weight"].shape[0])
    model.load_state_dict(model_sd)
    mixer = MixedBatches({"pairs": eval_pairs}, {"pairs": 1}, masking, seed=cfg.seed, start_step=0, total_steps=0)
    result = pair_grounding(model.to(device), mixer, max_pairs=cfg.grounding_pairs, seed=cfg.seed, device=device)
    return {"split": cfg.eval_split, **result}


def _dump_weights(model, dist_info, tag: str) -> None:
    folder = os.environ.get(DUMP_ENV)
    if folder:
        import torch

        from beit3train.distributed import unwrap_model

        os.makedirs(folder, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}
        torch.save(state, os.path.join(folder, f"rank{dist_info.rank}{'.' + tag if tag else ''}.pt"))


# -- the run -----------------------------------------------------------------------------------------------
def train(cfg: PretrainConfig, dist_info) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from beit3core import io
    from beit3core.checkpoint import save_model
    from beit3core.errors import UserError
    from beit3core.models import Beit3Model
    from beit3core.pretrain import MaskingConfig, MixedBatches, accuracies, find_stream_datasets, load_stream
    from beit3core.tokenizers import TextTokenizer
    from beit3train import checkpointing
    from beit3train.distributed import all_reduce_sum, barrier, broadcast_object
    from beit3train.metrics import MetricsLogger
    from beit3train.optim import build_optimizer, build_param_groups, build_scheduler

    is_main, device = dist_info.is_main, dist_info.device
    tok = TextTokenizer.load(cfg.text_tokenizer)
    visual = read_visual_meta(cfg.visual_tokens)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (FSDP shards them in place)
    model = build_model(cfg, tok.vocab_size, visual)
    config = model.config
    model, use_fsdp = wrap_model(model, cfg, dist_info)
    _dump_weights(model, dist_info, "start")
    groups = build_param_groups(model, cfg.weight_decay)
    optimizer = build_optimizer(groups, cfg.lr, cfg.betas, cfg.eps, fused=True if device.type == "cuda" else None)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)

    # Resume: rank 0 picks the newest complete checkpoint and reads it; weights and optimizer state are
    # broadcast from it, the small rest travels with broadcast_object.
    resume_uri = checkpointing.resolve_resume(cfg.out)
    start_step, samples_seen, rng_states = 0, 0, None
    if resume_uri:
        ckpt = checkpointing.load_checkpoint(resume_uri) if is_main else None
        meta = broadcast_object(None if ckpt is None else {
            k: ckpt[k] for k in ("step", "samples_seen", "rng", "config", "world_size", "scheduler")})
        checkpointing.load_full_state(model, optimizer, ckpt and ckpt["model"], ckpt and ckpt["optimizer"])
        del ckpt
        scheduler.load_state_dict(meta["scheduler"])
        start_step, samples_seen = int(meta["step"]), int(meta["samples_seen"])
        if start_step > cfg.steps:
            raise UserError(f"{resume_uri}: checkpoint at step {start_step} is beyond --steps {cfg.steps}")
        _check_resume_config(meta["config"], cfg)
        if meta["world_size"] == dist_info.world_size:
            rng_states = meta["rng"]
        else:
            log.warning("checkpoint was written by %d processes, this job has %d: data order and RNG differ",
                        meta["world_size"], dist_info.world_size)
        if is_main:
            log.info("resuming from %s at step %d", resume_uri, start_step)
    ctx = RunContext(dist=dist_info, use_fsdp=use_fsdp, start_step=start_step, resume_uri=resume_uri)

    # Data: every rank indexes the token tables; the per-step batches are a function of (seed, step).
    found = find_stream_datasets(cfg.data)
    streams = {}
    for name, batch_size in cfg.batch_sizes.items():
        if batch_size == 0:
            continue
        if not found[name]:
            raise UserError(f"{cfg.data}: no dataset of kind {name.rstrip('s') if name != 'texts' else 'text'!r} "
                            f"for --batch-{name} {batch_size}")
        streams[name] = load_stream(name, cfg.data, cfg.text_tokenizer, cfg.visual_tokens, cfg.split, found[name])
    eval_pairs = _load_eval_pairs(cfg, found["pairs"]) if is_main else None
    masking = MaskingConfig(cfg.text_mask_ratio, cfg.pair_text_mask_ratio, cfg.image_mask_ratio, tok.mask_id,
                            visual["grid"], visual["img_size"], cfg.max_text_len)
    dataset = MixedBatches(streams, cfg.batch_sizes, masking, seed=cfg.seed, start_step=start_step,
                           total_steps=cfg.steps, rank=dist_info.rank, world_size=dist_info.world_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None)
    batches = iter(loader)  # created before the RNG restore: the iterator draws from the global RNG
    if rng_states is not None:
        checkpointing.restore_rank_rng(rng_states, dist_info.rank)
    else:
        torch.manual_seed(cfg.seed * 1000 + 1 + dist_info.rank + start_step * 7919)  # drop path, per rank

    per_step = sum(cfg.batch_sizes.values()) * dist_info.world_size
    logger = MetricsLogger(cfg.out if is_main else None, start_step=start_step, total_steps=cfg.steps,
                           progress=is_main, desc="pretrain")
    if is_main:
        io.write_json(io.join(cfg.out, "pretrain_config.json"),
                      {**cfg.to_dict(), "model_config": config.to_dict(), "world_size": dist_info.world_size,
                       "fsdp": use_fsdp, "device": str(device)})
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    def save(step: int) -> None:
        model_sd, optim_sd = checkpointing.full_state(model, optimizer)
        rng = checkpointing.gather_rng_states()
        if is_main:
            state = {"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step,
                     "samples_seen": samples_seen, "data_position": {"step": step, "seed": cfg.seed,
                                                                      "batch_sizes": cfg.batch_sizes},
                     "rng": rng, "config": cfg.to_dict(), "world_size": dist_info.world_size}
            logger.flush()
            checkpointing.save_checkpoint(cfg.out, step, state, keep_last=cfg.keep_last)
        barrier()

    model.train()
    interval: dict[str, float] = {}
    steps_in_interval, t_interval = 0, time.perf_counter()
    for expected in range(start_step, cfg.steps):
        step, batch = next(batches)
        if step != expected:
            raise RuntimeError(f"data loader delivered step {step}, expected {expected}")
        batch = _to_device(batch, device)
        with amp:
            out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        optimizer.step()
        scheduler.step()
        done = step + 1
        samples_seen += per_step

        stats = {k: float(v) for k, v in out.stats.items()}
        stats.update(loss=float(out.loss.detach()), grad_norm=float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
        for k, v in stats.items():
            interval[k] = interval.get(k, 0.0) + v
        steps_in_interval += 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            keys = sorted(interval)
            summed = all_reduce_sum(torch.tensor([interval[k] for k in keys], dtype=torch.float64))
            total = dict(zip(keys, summed.tolist()))
            elapsed = time.perf_counter() - t_interval
            n = steps_in_interval * dist_info.world_size
            record = {"loss": total["loss"] / n, "grad_norm": total["grad_norm"] / n, "lr": lr,
                      "samples_per_s": per_step * steps_in_interval / elapsed,
                      "step_time": elapsed / steps_in_interval, "samples_seen": samples_seen}
            record.update(accuracies(total))
            for part in ("text_mlm", "pair_mlm", "image_mim", "pair_mim"):
                if f"{part}_loss" in total:
                    record[f"{part}_loss"] = total[f"{part}_loss"] / n
            logger.log(done, record)
            interval, steps_in_interval, t_interval = {}, 0, time.perf_counter()
        logger.advance()
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save(done)
        if kill_after and done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    del batches

    _dump_weights(model, dist_info, "")
    # Export the backbone (what fine-tuning loads); the heads stay in the checkpoints.
    model_sd, _ = checkpointing.full_state(model, None)
    summary = None
    if is_main:
        backbone = Beit3Model(config)
        prefix = "backbone."
        backbone.load_state_dict({k[len(prefix):]: v for k, v in model_sd.items() if k.startswith(prefix)})
        save_model(backbone, io.join(cfg.out, "model"))
        logger.close()
        rows = io.read_jsonl(io.join(cfg.out, "metrics.jsonl")) if io.exists(io.join(cfg.out, "metrics.jsonl")) else []
        summary = _summary_from_history(rows, cfg.steps, tok.vocab_size, visual["codebook_size"])
        summary.update(model=cfg.model, layout=config.layout, samples_seen=samples_seen,
                       world_size=dist_info.world_size, resumed_from=ctx.resume_uri,
                       grounding=_grounding(cfg, eval_pairs, masking, model_sd, backbone, device))
        io.write_json(io.join(cfg.out, "summary.json"), summary)
    barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    from beit3train.distributed import cleanup_distributed, init_distributed

    cfg = parse_args(argv)
    dist_info = init_distributed(cfg.device)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = train(cfg, dist_info)
    finally:
        cleanup_distributed()
    if summary is not None:
        def show(x):
            return "n/a" if x is None else f"{x:.3f}"

        print(f"pretrain: {cfg.steps} steps -> {cfg.out}/model; MLM acc {show(summary['mlm_acc'])} "
              f"(chance {summary['mlm_chance']:.4f}), MIM acc {show(summary['mim_acc'])} "
              f"(chance {summary['mim_chance']:.4f})")
        if summary["grounding"]:
            from beit3core.pretrain import describe_grounding

            print("pretrain: " + describe_grounding(summary["grounding"]))
    return 0


if __name__ == "__main__":
    from beit3core.errors import run_main

    sys.exit(run_main(main, None))
