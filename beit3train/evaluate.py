"""`beit3 evaluate`: evaluate a fine-tuned task model on a split and write OUT/metrics.json and OUT/report.html.

    beit3 evaluate --task T --model FT/model --data VALIDATED/tasks/T --text-tokenizer TOK --out OUT [--split test]

The model folder is what `beit3 finetune` wrote (task.json names the task, its settings and vocabularies); the
evaluation uses the settings it was trained with (image size, text length, beam search), overridable here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from beit3core.tasks import TASK_NAMES

    p = argparse.ArgumentParser(prog="beit3 evaluate", description="evaluate a fine-tuned BEiT-3 task model")
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--model", required=True, help="the model folder `beit3 finetune` wrote (RUN/model)")
    p.add_argument("--data", required=True, help="validated task dataset")
    p.add_argument("--text-tokenizer", required=True)
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--split", default=None, help="default: test, else val, else the last split")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--max-examples", type=int, default=0, help="evaluate on the first N rows only (0: all)")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_task_model(uri: str, task: str | None = None):
    """(task model, task.json) from a `beit3 finetune` model folder, weights loaded strictly."""
    from beit3core import io
    from beit3core.checkpoint import load_pretrained
    from beit3core.errors import UserError
    from beit3core.models import Beit3Config, Beit3Model
    from beit3core.tasks import TaskSettings, build_task_model

    for name in ("config.json", "task.json", "model.safetensors"):
        if not io.exists(io.join(uri, name)):
            raise UserError(f"{io.join(uri, name)}: no such file (not a `beit3 finetune` model folder)")
    config = io.read_json(io.join(uri, "config.json"))
    meta = io.read_json(io.join(uri, "task.json"))
    if config.get("architecture") != "Beit3TaskModel":
        raise UserError(f"{io.join(uri, 'config.json')}: field 'architecture': expected 'Beit3TaskModel'")
    if task is not None and meta.get("task") != task:
        raise UserError(f"{io.join(uri, 'task.json')}: field 'task' is {meta.get('task')!r}, but --task is {task!r}")
    backbone = Beit3Model(Beit3Config.from_dict(config["config"]))
    model = build_task_model(meta["task"], backbone, meta)
    load_pretrained(model, uri, strict=True)
    settings = meta["settings"]
    settings["betas"] = tuple(settings["betas"])
    meta["settings"] = TaskSettings(**settings)
    return model, meta


def default_test_split(splits: list[str]) -> str:
    return next((s for s in ("test", "val", "dev") if s in splits), splits[-1])


def evaluate(args) -> dict:
    import torch

    from beit3core import data, io
    from beit3core.errors import UserError
    from beit3core.tasks import TASKS
    from beit3core.tasks.common import EvalContext
    from beit3core.tasks.data import check_kind
    from beit3core.tasks.report import write_report
    from beit3core.tokenizers import TextTokenizer
    from beit3train.distributed import resolve_device
    from beit3train.finetune import metrics_document

    if args.threads:
        torch.set_num_threads(args.threads)
    header = check_kind(args.data, args.task)
    model, meta = load_task_model(args.model, args.task)
    for key in ("labels", "answers"):
        if meta.get(key) and header.get(key) and list(header[key]) != list(meta[key]):
            raise UserError(f"{args.data}/dataset.json: field {key!r} differs from the model's {key} "
                            f"({args.model}/task.json); evaluate on data with the same vocabulary")
    settings = meta["settings"].replace(eval_batch_size=args.batch_size, num_beams=args.num_beams)
    tokenizer = TextTokenizer.load(args.text_tokenizer)
    splits = data.splits(args.data)
    split = args.split or default_test_split(splits)
    rows = data.read_rows(args.data, split)
    if args.max_examples:
        rows = rows[: args.max_examples]
    if not rows:
        raise UserError(f"{args.data}: split {split!r} is empty")
    device = resolve_device(args.device)
    model.to(device).eval()
    ev = EvalContext(uri=args.data, rows=rows, header=header, tokenizer=tokenizer, settings=settings, device=device,
                     num_samples=args.num_samples, progress=not args.no_progress)
    spec = TASKS[args.task]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        metrics, samples = spec.evaluate(model, ev)
    doc = metrics_document(args.task, split, metrics, args.data, spec.selection_key)
    doc["model"] = args.model
    io.write_json(io.join(args.out, "metrics.json"), doc)
    write_report(io.join(args.out, "report.html"), task=args.task, data_uri=args.data, metrics=doc, samples=samples,
                 title=f"{args.task}: {args.model} on {split}")
    print(f"evaluate {args.task}: {spec.selection_key} = {metrics[spec.selection_key]:.2f} on {split} "
          f"({len(rows)} rows); wrote {args.out}/metrics.json, report.html")
    return doc


def main(argv: list[str] | None = None) -> int:
    evaluate(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    from beit3core.errors import run_main

    sys.exit(run_main(main, None))
