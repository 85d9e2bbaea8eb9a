"""`beit3 evaluate`: evaluate a fine-tuned task model on a split and write OUT/metrics.json and OUT/report.html.

    beit3 evaluate --task T --model-dir FT/model --data VALIDATED/tasks/T --text-tokenizer TOK --out OUT [--split test]

For classification and NLVR2 it also writes OUT/confusion_matrix.json ({"labels": [...], "matrix": [[...]]},
rows: true label, columns: predicted), which the pipeline shows as KFP ClassificationMetrics. For captioning it
writes every prediction to OUT/predictions.jsonl ({"image", "generated", "references"} per image) and, on data
`beit3 data synth` made, adds `objects_named` to the metrics: the percent of generated captions that name every
object's colour and shape and no other (beit3core.data.caption_objects), beside CIDEr (fine-tuning's own
evaluation reports it too).

Under torchrun (`python -m torch.distributed.run --nproc_per_node N -m beit3train.evaluate ...`) each rank
predicts a contiguous block of the rows (captioning's beam search, retrieval's embeddings) and rank 0 gathers
the outputs, scores them as one process would, and writes.

The model folder is what `beit3 finetune` wrote (task.json names the task, its settings and vocabularies); the
evaluation uses the settings it was trained with (image size, text length, beam search), overridable here.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from beit3core import data, io
from beit3core.data.caption_objects import is_synthetic, objects_named_percent
from beit3core.data.task_stream import SplitSource
from beit3core.errors import ArgumentParser, UserError, run_main
from beit3core.task_checkpoint import load_task_model
from beit3core.tasks import TASK_NAMES, TASKS, TaskSettings
from beit3core.tasks.common import EvalContext, merge_outputs
from beit3core.tasks.data import check_kind
from beit3core.tasks.report import metrics_document, write_report
from beit3core.tokenizers import TextTokenizer
from beit3train.config import config_from, make_parser, setting
from beit3train.distributed import DistInfo, gather_object, resolve_device, run_distributed
from beit3train.runtime import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """`beit3 evaluate`'s flags."""

    task: str = setting(help="the task the model was fine-tuned for", choices=TASK_NAMES)
    model_dir: str = setting(help="the model folder `beit3 finetune` wrote (RUN/model)")
    data: str = setting(help="validated task dataset")
    text_tokenizer: str = setting(help="`beit3 tokenize text` output, a tokenizer folder or .model")
    out: str = setting(help="output folder (local or s3://)")
    split: str | None = setting(None, "split to evaluate (default: test, else val, else the last split)")
    device: str = setting("auto", "auto: CUDA when available", choices=("auto", "cpu", "cuda"))
    batch_size: int | None = setting(None, "evaluation batch size (default: the model's eval batch size)")
    num_beams: int | None = setting(None, "beam size of captioning (default: the model's)")
    num_samples: int = setting(8, "sample predictions shown in the report")
    threads: int | None = setting(None, "torch intra-op threads (0: every core this process may use; unset: "
                                  "torch's default)")
    max_examples: int = setting(0, "evaluate on the first N rows only (0: all)")
    progress: bool = setting(True, "progress bars")

    def __post_init__(self):
        if min(self.num_samples, self.threads or 0, self.max_examples) < 0:
            raise UserError("--num-samples, --threads and --max-examples must be >= 0")


def build_parser() -> ArgumentParser:
    return make_parser(EvaluateConfig, "beit3 evaluate", "evaluate a fine-tuned BEiT-3 task model")


def parse_args(argv: list[str] | None) -> EvaluateConfig:
    return config_from(EvaluateConfig, vars(build_parser().parse_args(argv)))


# Tasks whose predictions are one label of a fixed set, and that label set. The labels come from each
# task's per-row sample lines ("label", "predicted"), so the matrix needs no second pass over the data.
CONFUSION_LABELS = {"classification": lambda header: list(header["labels"]), "nlvr2": lambda header: ["False", "True"]}
CONFUSION_MAX_LABELS = 100  # beyond this a matrix is unreadable in the KFP UI and too big for its metadata


def confusion_matrix(samples: list[dict], labels: list[str]) -> list[list[int]]:
    """counts[true][predicted] from sample predictions carrying ("label", x) and ("predicted", y) lines."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for sample in samples:
        lines = dict(sample["lines"])
        counts[index[lines["label"]]][index[lines["predicted"]]] += 1
    return counts


def usable_cores() -> int:
    """This process's share of the cores it may run on: its CPU affinity (a container's cpuset, `taskset`; not
    the host's count) divided among the ranks torchrun starts on this node (LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: `threads`, every usable core when it is 0, torch's default when None; returns
    the number torch uses."""
    if threads is not None:
        torch.set_num_threads(threads or usable_cores())
    return torch.get_num_threads()


def loader_workers(workers: int | None, device_type: str = "cpu") -> int:
    """DataLoader workers: `workers`, or when None sized from the usable cores. On CPU one per 8 cores: decoding
    and augmenting a batch costs about 1/8 of a tiny model's training step (measured on the demo's VQA data: 0.06
    of 0.45 CPU-seconds on one thread), so fewer cores keep the loading in the main process rather than take a
    core from torch. On a GPU the cores have nothing else to do: all but the main process's one, at most 8."""
    if workers is not None:
        return workers
    return max(1, min(8, usable_cores() - 1)) if device_type == "cuda" else usable_cores() // 8


def caption_predictions(samples: list[dict]) -> list[dict]:
    """{"image", "generated", "references"} per captioning sample (its "generated" and "reference" lines)."""
    return [{"image": s["images"][0], "generated": next(v for k, v in s["lines"] if k == "generated"),
             "references": [v for k, v in s["lines"] if k == "reference"]} for s in samples]


def default_test_split(splits: list[str]) -> str:
    return next((s for s in ("test", "val", "dev") if s in splits), splits[-1])


def evaluate_split(model: nn.Module, task: str, data_uri: str, split: str, *, header: dict,
                   tokenizer: TextTokenizer, settings: TaskSettings, device: torch.device, max_examples: int = 0,
                   num_samples: int = 8, all_samples: bool = False, progress: bool = True,
                   dist_info: DistInfo = DistInfo()) -> tuple[dict, list[dict], int] | None:
    """(metrics, sample predictions: `num_samples` of them or, with `all_samples`, one per row, rows evaluated)
    of `model` on the first `max_examples` rows (0: all) of `split`, read in shard order, under the device's
    autocast. Captioning on synthetic data also gets `objects_named`. Fine-tuning's end-of-run evaluation is this
    one.

    Distributed (every rank calls it): each rank predicts its contiguous block of the rows, rank 0 gathers the
    outputs and scores them all, as one process would (same rows, same order); the other ranks get None."""
    source = SplitSource(data_uri, split, header)  # read in order, shard by shard (beit3core.data.task_stream)
    if not source.rows:
        raise UserError(f"{data_uri}: split {split!r} is empty")
    objects = task == "captioning" and is_synthetic(header)  # the object metric reads every caption
    ev = EvalContext(source=source, max_rows=max_examples, header=header, tokenizer=tokenizer, settings=settings,
                     device=device, num_samples=2**62 if all_samples or objects else num_samples, progress=progress,
                     rank=dist_info.rank, world_size=dist_info.world_size)
    with autocast(device):
        outputs = TASKS[task].predict(model, ev)
    shares = gather_object(outputs)
    if shares is None:
        return None
    metrics, samples = TASKS[task].score(merge_outputs(shares), ev)
    if objects:
        predictions = caption_predictions(samples)
        metrics["objects_named"] = objects_named_percent([p["generated"] for p in predictions],
                                                         [p["references"] for p in predictions])
    return metrics, samples if all_samples else samples[:num_samples], ev.num_rows


def evaluate(cfg: EvaluateConfig, dist_info: DistInfo = DistInfo()) -> dict:
    """OUT/metrics.json and OUT/report.html of the model folder on the split; returns the metrics document.
    Under torchrun every rank evaluates its share of the rows and rank 0 scores and writes ({} elsewhere)."""
    set_threads(cfg.threads)
    header = check_kind(cfg.data, cfg.task)
    model, meta = load_task_model(cfg.model_dir, cfg.task)
    for key in ("labels", "answers"):
        if meta.get(key) and header.get(key) and list(header[key]) != list(meta[key]):
            raise UserError(f"{cfg.data}/dataset.json: field {key!r} differs from the model's {key} "
                            f"({cfg.model_dir}/task.json); evaluate on data with the same vocabulary")
    settings = meta["settings"].replace(eval_batch_size=cfg.batch_size, num_beams=cfg.num_beams)
    split = cfg.split or default_test_split(data.splits(cfg.data))
    device = dist_info.device if dist_info.distributed else resolve_device(cfg.device)
    model.to(device).eval()
    labels = CONFUSION_LABELS[cfg.task](header) if cfg.task in CONFUSION_LABELS else None
    if labels is not None and len(labels) > CONFUSION_MAX_LABELS:
        labels = None
    every_row = labels is not None or cfg.task == "captioning"  # the matrix / predictions.jsonl need all rows
    evaluated = evaluate_split(
        model, cfg.task, cfg.data, split, header=header, tokenizer=TextTokenizer.load(cfg.text_tokenizer),
        settings=settings, device=device, max_examples=cfg.max_examples,
        num_samples=cfg.num_samples, all_samples=every_row, progress=cfg.progress, dist_info=dist_info)
    if evaluated is None:  # not rank 0
        return {}
    metrics, samples, count = evaluated
    if labels is not None:
        io.write_json(io.join(cfg.out, "confusion_matrix.json"),
                      {"labels": labels, "matrix": confusion_matrix(samples, labels)})
    if cfg.task == "captioning":
        io.write_jsonl(io.join(cfg.out, "predictions.jsonl"), caption_predictions(samples))
    samples = samples[:cfg.num_samples]
    doc = {**metrics_document(cfg.task, split, metrics, cfg.data), "model_dir": cfg.model_dir}
    io.write_json(io.join(cfg.out, "metrics.json"), doc)
    write_report(io.join(cfg.out, "report.html"), task=cfg.task, data_uri=cfg.data, metrics=doc, samples=samples,
                 title=f"{cfg.task}: {cfg.model_dir} on {split}")
    selection = TASKS[cfg.task].SELECTION_METRIC
    print(f"evaluate {cfg.task}: {selection} = {metrics[selection]:.2f} on {split} ({count} rows); "
          f"wrote {cfg.out}/metrics.json, report.html")
    return doc


def main(argv: list[str] | None = None) -> int:
    run_distributed(evaluate, parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
