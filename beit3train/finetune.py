"""`beit3 finetune`: fine-tune BEiT-3 on one downstream task, evaluate it, write the model, metrics and a report.

    beit3 finetune --task vqa --data VALIDATED/tasks/vqa --text-tokenizer TOK --init RUN/model --out FT \
        [--recipe released|demo] [--model NAME] [--steps N | --epochs E] [--lr ...] [--batch-size ...]

Outputs: FT/model/ (model.safetensors = the task model's weights: `backbone.*` + the released head names;
config.json = the backbone config; task.json = task, settings, label/answer vocabularies), FT/metrics.json
(evaluation on --eval-split plus training figures), FT/report.html (sample predictions), FT/metrics.jsonl and
FT/tb/ (training curves). `--init` is this platform's pretraining RUN/model folder, a fine-tuned FT/model
folder, an official BEiT-3 .pth (local or s3://), or `random`.

Checkpoints: `--ckpt-every-epochs N` writes OUT/checkpoints/step-XXXXXXX/ (atomic, COMPLETE marker, keep-last-K,
beit3train.checkpointing) at epoch ends and resumes from the latest complete one when rerun with the same
--out and settings; a resumed run ends with the same weights as an uninterrupted one.

Distributed: run under torchrun / a PyTorchJob (the same launcher as pretraining); each rank reads its share
of the training split, gradients are averaged by DDP, and the retrieval loss gathers negatives from every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from beit3core.tasks import TASK_NAMES

    p = argparse.ArgumentParser(prog="beit3 finetune", description="fine-tune BEiT-3 on one downstream task")
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--data", required=True, help="validated task dataset (local folder or s3://)")
    p.add_argument("--text-tokenizer", required=True, help="`beit3 tokenize text` output, a tokenizer folder or .model")
    p.add_argument("--init", required=True, help="pretraining RUN/model folder, fine-tuned model folder, official .pth, or 'random'")
    p.add_argument("--out", required=True, help="run folder (local or s3://)")
    p.add_argument("--recipe", default="released", choices=("released", "demo"),
                   help="defaults: the released base recipe, or the tiny demo recipe for the bundled synthetic data")
    p.add_argument("--model", help="registered model name (random / .pth init; a native --init brings its own config)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default=None, help="default: val, else test, else the first non-train split")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=8, help="sample predictions shown in the report")
    p.add_argument("--max-eval-examples", type=int, default=0, help="evaluate on the first N rows only (0: all)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every-epochs", type=int, default=0,
                   help="checkpoint to OUT/checkpoints/ every N epochs and resume from the latest one (0: off)")
    p.add_argument("--keep-last", type=int, default=2, help="complete checkpoints to keep")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("settings (default: the recipe's value for the task)")
    for flag, typ in (("img-size", int), ("max-len", int), ("batch-size", int), ("eval-batch-size", int),
                      ("epochs", float), ("warmup-epochs", float), ("steps", int), ("warmup-steps", int),
                      ("lr", float), ("min-lr", float), ("layer-decay", float), ("head-lr-scale", float),
                      ("head-init-scale", float),
                      ("drop-path", float), ("weight-decay", float), ("eps", float), ("clip-grad", float),
                      ("label-smoothing", float), ("mixup", float), ("cutmix", float), ("mask-prob", float),
                      ("drop-worst-after", int), ("num-beams", int), ("length-penalty", float),
                      ("crop-scale-min", float)):
        g.add_argument(f"--{flag}", type=typ, default=None)
    g.add_argument("--betas", type=float, nargs=2, default=None)
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--normalize-output", action=argparse.BooleanOptionalAction, default=None)
    return p


_SETTING_ARGS = ("model", "img_size", "max_len", "batch_size", "eval_batch_size", "epochs", "warmup_epochs", "steps",
                 "warmup_steps", "lr", "min_lr", "layer_decay", "head_lr_scale", "head_init_scale", "drop_path",
                 "weight_decay", "eps", "clip_grad", "label_smoothing", "mixup", "cutmix", "mask_prob",
                 "drop_worst_after", "num_beams", "length_penalty", "crop_scale_min", "hflip", "normalize_output")


def parse_args(argv: list[str] | None):
    from beit3core.tasks import settings_for

    args = build_parser().parse_args(argv)
    if args.ckpt_every_epochs < 0 or args.keep_last < 1:
        from beit3core.errors import UserError

        raise UserError("--ckpt-every-epochs must be >= 0 and --keep-last >= 1")
    overrides = {k: getattr(args, k) for k in _SETTING_ARGS}
    if args.betas is not None:
        overrides["betas"] = tuple(args.betas)
    if args.steps is not None and args.epochs is None:
        overrides["epochs"] = 0
    if args.epochs is not None and args.steps is None:
        overrides["steps"] = 0
    return args, settings_for(args.task, args.recipe, **overrides)


def default_eval_split(splits: list[str], train_split: str = "train") -> str:
    for name in ("val", "dev", "test"):
        if name in splits:
            return name
    rest = [s for s in splits if s != train_split]
    return rest[0] if rest else splits[0]


# ---------------------------------------------------------------- model construction

def _native_meta(uri: str) -> dict | None:
    from beit3core import io

    if io.isdir(uri) and io.exists(io.join(uri, "config.json")):
        return io.read_json(io.join(uri, "config.json"))
    return None


def build_task_model_for_init(task: str, settings, header: dict, tokenizer, init: str):
    """(task model, description of the init). The backbone's width/depth come from --init when it is a native
    folder, else from --model; image size, drop path and the final norm come from the settings."""
    from beit3core import create_model, io
    from beit3core.checkpoint import load_pretrained
    from beit3core.errors import UserError
    from beit3core.models import Beit3Config, Beit3Model
    from beit3core.tasks import build_task_model

    task_overrides = dict(img_size=settings.img_size, drop_path_rate=settings.drop_path,
                          normalize_output=settings.normalize_output)
    if init == "random":
        backbone = create_model(settings.model, vocab_size=tokenizer.vocab_size, **task_overrides)
        task_model = build_task_model(task, backbone, header, settings.head_init_scale)
        return task_model, {"init": "random", "model": settings.model}
    if not io.exists(init):
        raise UserError(f"--init {init}: no such file or folder (give a model folder, a .pth, or 'random')")
    meta = _native_meta(init)
    if meta is not None:
        if not isinstance(meta.get("config"), dict):
            raise UserError(f"{io.join(init, 'config.json')}: field 'config': missing")
        config = Beit3Config.from_dict({**meta["config"], **task_overrides})
        if tokenizer.vocab_size > config.vocab_size:
            raise UserError(f"--text-tokenizer: {tokenizer.vocab_size} ids do not fit the {config.vocab_size}-row "
                            f"text embedding of {init} (was it pretrained with another tokenizer?)")
        task_model = build_task_model(task, Beit3Model(config), header, settings.head_init_scale)
        if meta.get("architecture") == "Beit3TaskModel":  # a fine-tuned model: heads come along if they fit
            report = load_pretrained(task_model, init)
        else:  # a pretrained backbone
            report = load_pretrained(task_model.backbone, init)
        kind = "native"
    else:
        backbone = create_model(settings.model, vocab_size=max(tokenizer.vocab_size, 64010), **task_overrides)
        task_model = build_task_model(task, backbone, header, settings.head_init_scale)
        report = load_pretrained(task_model, init)
        kind = "official"
    into_backbone = meta is not None and meta.get("architecture") != "Beit3TaskModel"
    backbone_missing = report.missing if into_backbone else [k for k in report.missing if k.startswith("backbone.")]
    if backbone_missing and len(backbone_missing) > 0.5 * len(task_model.backbone.state_dict()):
        raise UserError(f"--init {init}: most backbone weights did not load ({len(backbone_missing)} missing, "
                        f"e.g. {backbone_missing[:3]}); is it a BEiT-3 checkpoint of this model size?")
    return task_model, {"init": init, "init_kind": kind, "missing": len(report.missing),
                        "unexpected": len(report.unexpected), "resized": report.resized,
                        "mismatched": report.mismatched}


def task_meta(task: str, settings, header: dict, backbone) -> dict:
    meta = {"task": task, "settings": settings.to_dict(), "dataset": header.get("name")}
    for key in ("labels", "answers"):
        if header.get(key):
            meta[key] = list(header[key])
    return meta


def save_task_model(model, uri: str, meta: dict) -> None:
    """uri/model.safetensors (task model weights), uri/task.json, then uri/config.json (marks it complete)."""
    from safetensors.torch import save as save_safetensors

    from beit3core import io

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    io.write_bytes(io.join(uri, "model.safetensors"), save_safetensors(tensors))
    io.write_json(io.join(uri, "task.json"), meta)
    io.write_json(io.join(uri, "config.json"), {"architecture": "Beit3TaskModel", "task": meta["task"],
                                                "config": model.backbone.config.to_dict()})


# ---------------------------------------------------------------- training

def _mixup(settings, num_classes: int):
    if settings.mixup <= 0 and settings.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                 label_smoothing=settings.label_smoothing, num_classes=num_classes)


def finetune(args, settings) -> dict:
    import numpy as np
    import torch

    from beit3core import data, io
    from beit3core.errors import UserError
    from beit3core.tasks import TASKS
    from beit3core.tasks.common import EvalContext, StepContext, to_device
    from beit3core.tasks.data import Collator, check_kind, train_loader
    from beit3core.tasks.report import write_report
    from beit3core.tokenizers import TextTokenizer
    from beit3train import checkpointing
    from beit3train.distributed import (all_gather_with_grad, barrier, cleanup_distributed, init_distributed,
                                        unwrap_model)
    from beit3train.metrics import MetricsLogger
    from beit3train.optim import build_optimizer, build_param_groups, build_scheduler

    task = args.task
    if args.threads:
        torch.set_num_threads(args.threads)
    dist_info = init_distributed(args.device)
    device = dist_info.device
    torch.manual_seed(args.seed)
    header = check_kind(args.data, task)
    tokenizer = TextTokenizer.load(args.text_tokenizer)
    eval_split = args.eval_split or default_eval_split(data.splits(args.data), args.train_split)
    if settings.mixup > 0 or settings.cutmix > 0:
        if task != "classification":
            raise UserError(f"--mixup/--cutmix: only for --task classification, not {task}")
        if settings.batch_size % 2:
            raise UserError(f"--batch-size {settings.batch_size}: mixup/cutmix need an even batch size")

    model, init_info = build_task_model_for_init(task, settings, header, tokenizer, args.init)
    model.to(device)
    spec = TASKS[task]
    collate = Collator(task, tokenizer, settings.max_len, labels=header.get("labels"), answers=header.get("answers"))
    loader = train_loader(task, args.data, args.train_split, collate, img_size=settings.img_size,
                          batch_size=settings.batch_size, hflip=settings.hflip,
                          crop_scale=(settings.crop_scale_min, 1.0), seed=args.seed, rank=dist_info.rank,
                          world_size=dist_info.world_size, num_workers=args.num_workers)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise UserError(f"{args.data}: split {args.train_split!r} has fewer rows than one batch per rank")
    total = settings.steps or max(1, math.ceil(settings.epochs * per_epoch))
    warmup = settings.warmup_steps if settings.steps else int(settings.warmup_epochs * per_epoch)
    groups = build_param_groups(model, settings.weight_decay, settings.layer_decay,
                                num_layers=model.backbone.config.depth, head_lr_scale=settings.head_lr_scale)
    optimizer = build_optimizer(groups, settings.lr, betas=settings.betas, eps=settings.eps)
    scheduler = build_scheduler(optimizer, total, min(warmup, total), settings.lr, settings.min_lr)
    train_model = model
    if dist_info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
        # static_graph: every step runs the same graph, which may leave parameters unused (mask_token, the
        # text experts in classification) and use the backbone twice (retrieval's image and text passes).
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())  # fp32 on CPU: no fast bf16 there
    mixup = _mixup(settings, len(header.get("labels") or [])) if task == "classification" else None
    ctx = StepContext(settings=settings, rng=np.random.default_rng(args.seed + 1000 * dist_info.rank),
                      gather=all_gather_with_grad if dist_info.distributed else None, rank=dist_info.rank,
                      mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size)
    step, epoch, losses = 0, 0, []
    resume_uri = checkpointing.resolve_resume(args.out) if args.ckpt_every_epochs > 0 else None
    if resume_uri:
        step, epoch, losses = _resume(resume_uri, train_model, optimizer, scheduler, ctx, settings, dist_info, args.seed)
    logger = MetricsLogger(args.out if dist_info.is_main else None, start_step=step, total_steps=total,
                           progress=not args.no_progress, desc=f"finetune {task}")
    print(f"finetune {task}: {total} steps of batch {settings.batch_size} x {dist_info.world_size} rank(s), "
          f"{per_epoch} steps per epoch, init {init_info['init']}, device {device}"
          + (f", resumed at step {step} from {resume_uri}" if resume_uri else ""))

    started = time.time()
    train_model.train()
    while step < total:
        loader.generator.manual_seed(args.seed + dist_info.rank + 7919 * epoch)
        for batch in loader:
            batch = to_device(batch, device)
            if mixup is not None:
                batch["image"], batch["soft_labels"] = mixup(batch["image"], batch["labels"])
            ctx.step = step
            with autocast:
                loss = spec.train_loss(train_model, batch, ctx)
            if not torch.isfinite(loss):
                raise RuntimeError(f"finetune {task}: loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            logger.advance()
            if step % args.log_every == 0 or step == total:
                logger.log(step, {"loss": float(np.mean(losses[-args.log_every:])),
                                  "lr": optimizer.param_groups[-1]["lr"]})
            if step >= total:
                break
        epoch += 1
        if args.ckpt_every_epochs > 0 and epoch % args.ckpt_every_epochs == 0 and step < total:
            # Epoch boundaries only: the next epoch's data order follows from (seed, rank, epoch) alone.
            _save_checkpoint(args, train_model, optimizer, scheduler, ctx, settings, dist_info, step, epoch,
                             losses)
    logger.close()
    train_seconds = time.time() - started

    result: dict = {}
    if dist_info.is_main:
        model = unwrap_model(train_model).eval()
        rows = data.read_rows(args.data, eval_split)
        if args.max_eval_examples:
            rows = rows[: args.max_eval_examples]
        ev = EvalContext(uri=args.data, rows=rows, header=header, tokenizer=tokenizer, settings=settings,
                         device=device, num_samples=args.num_samples, progress=not args.no_progress)
        with autocast:
            metrics, samples = spec.evaluate(model, ev)
        result = metrics_document(task, eval_split, metrics, args.data, spec.selection_key)
        result["train"] = {"steps": step, "epochs": step / per_epoch, "final_loss": float(np.mean(losses[-10:])),
                           "first_loss": float(np.mean(losses[:10])), "seconds": round(train_seconds, 1),
                           "world_size": dist_info.world_size, **init_info}
        result["settings"] = settings.to_dict()
        save_task_model(model, io.join(args.out, "model"), task_meta(task, settings, header, model.backbone))
        io.write_json(io.join(args.out, "metrics.json"), result)
        write_report(io.join(args.out, "report.html"), task=task, data_uri=args.data, metrics=result,
                     samples=samples, title=f"{task}: fine-tuned from {init_info['init']}")
        print(f"finetune {task}: {spec.selection_key} = {metrics[spec.selection_key]:.2f} on {eval_split}; "
              f"wrote {args.out}/model, metrics.json, report.html")
    barrier()
    cleanup_distributed()
    return result


def _save_checkpoint(args, train_model, optimizer, scheduler, ctx, settings, dist_info, step, epoch, losses):
    """OUT/checkpoints/step-N: model, optimizer, scheduler, every rank's RNGs (collective: all ranks call it)."""
    from beit3train import checkpointing
    from beit3train.distributed import all_gather_object, barrier, unwrap_model

    # Plain state dicts (no FSDP here): parameters a task never uses (mask_token, idle experts) have no
    # optimizer state, which the torch.distributed.checkpoint loaders would reject.
    model_sd = {k: v.detach().cpu() for k, v in unwrap_model(train_model).state_dict().items()}
    optim_sd = optimizer.state_dict()
    rng = checkpointing.gather_rng_states()
    task_rng = all_gather_object(ctx.rng.bit_generator.state)
    if dist_info.is_main:
        state = {"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step,
                 "epoch": epoch, "losses": list(losses), "rng": rng, "task_rng": task_rng,
                 "settings": settings.to_dict(), "world_size": dist_info.world_size, "seed": args.seed}
        checkpointing.save_checkpoint(args.out, step, state, keep_last=args.keep_last)
    barrier()


def _resume(uri, train_model, optimizer, scheduler, ctx, settings, dist_info, seed):
    """Load a fine-tuning checkpoint into the model, optimizer, scheduler and every RNG; (step, epoch, losses)."""
    from beit3core.errors import UserError
    from beit3train import checkpointing
    from beit3train.distributed import unwrap_model

    meta = checkpointing.load_checkpoint(uri)  # every rank reads it: fine-tuning checkpoints are small
    if meta["world_size"] != dist_info.world_size:
        raise UserError(f"{uri}: written by {meta['world_size']} rank(s); this job has {dist_info.world_size}")
    if meta["seed"] != seed:  # the data order after resuming follows from the seed
        raise UserError(f"{uri}: written with --seed {meta['seed']}; this job has --seed {seed}")
    current = settings.to_dict()
    changed = sorted(k for k in current if meta["settings"].get(k) != current[k])
    if changed:
        raise UserError(f"{uri}: settings differ from the checkpoint's ({', '.join(changed)}); use a new --out")
    unwrap_model(train_model).load_state_dict(meta["model"])
    optimizer.load_state_dict(meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    checkpointing.restore_rank_rng(meta["rng"], dist_info.rank)
    ctx.rng.bit_generator.state = meta["task_rng"][dist_info.rank]
    log.info("resuming from %s at step %d (epoch %d)", uri, meta["step"], meta["epoch"])
    return meta["step"], meta["epoch"], list(meta["losses"])


def metrics_document(task: str, split: str, metrics: dict, data_uri: str, selection_key: str) -> dict:
    """metrics.json: the metric values at the top level (so `--require acc>=50` can read them) plus context."""
    from beit3core import io

    doc = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    try:
        version = io.fingerprint(io.join(data_uri, "dataset.json"))
    except Exception:  # noqa: BLE001 - the fingerprint is informative only
        version = None
    doc.update(task=task, split=split, data=data_uri, dataset_version=version, selection_key=selection_key,
               selection_value=doc[selection_key])
    return doc


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    finetune(args, settings)
    return 0


if __name__ == "__main__":
    from beit3core.errors import run_main

    sys.exit(run_main(main, None))
