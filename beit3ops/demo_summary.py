"""What `make demo` prints at the end, and the pretrained-vs-random comparison stage.

    python -m beit3ops.demo_summary compare artifacts --out artifacts/comparison
    python -m beit3ops.demo_summary show artifacts

The comparison reads every seed of each arm: the pretrained arm is artifacts/finetune/TASK (the `finetune`
stage's run, seed 0) plus artifacts/finetune_pretrained/TASK-seedN, the random arm artifacts/finetune_random/
TASK-seedN (dvc.yaml's matrix stages). Each arm is reported as the mean, the sample standard deviation and the
min..max of its seeds' selection metric. A difference is stated only when it holds for every seed: every seed of
one arm scored above every seed of the other (with 3 seeds a side, an ordering that arises by chance once in 20
when the init makes no difference); otherwise the table says the seeds overlap.
"""

from __future__ import annotations

import os
import re
import statistics
import sys

from beit3core import io
from beit3core.errors import ArgumentParser, UserError, run_main
from beit3core.pretrain.grounding import describe_grounding

MIN_SEEDS = 3  # per arm, before any difference is stated
RULE = "A difference is stated only when every seed of one arm scored above every seed of the other"
ARMS = ("pretrained", "random")
SEED_RUN = re.compile(r"^(?P<task>.+)-seed(?P<seed>\d+)$")  # a matrix stage's run folder: TASK-seedN
EXTRA_METRICS = {"captioning": ("objects_named",)}  # shown beside the selection metric


def spread(values: list[float]) -> dict:
    """{"n", "mean", "std" (sample standard deviation, n - 1; None below 2 values), "min", "max"}."""
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def verdict(pretrained: list[float], random: list[float]) -> str:
    """Which init is better, stated only when every seed of one arm beat every seed of the other."""
    if min(len(pretrained), len(random)) < MIN_SEEDS:
        return f"no claim: fewer than {MIN_SEEDS} seeds per arm"
    if min(pretrained) > max(random):
        return "pretrained better on every seed"
    if min(random) > max(pretrained):
        return "random better on every seed"
    return "no claim: the seeds overlap"


def _arm_runs(artifacts: str) -> dict[str, dict[str, list[str]]]:
    """{task: {arm: [metrics.json uris]}} for every task with random-init runs."""
    runs: dict[str, dict[str, list[str]]] = {}
    for arm, folder in (("pretrained", "finetune_pretrained"), ("random", "finetune_random")):
        root = io.join(artifacts, folder)
        for uri in io.ls(root) if io.exists(root) else []:
            match = SEED_RUN.match(os.path.basename(uri))
            if match is None:
                raise UserError(f"{uri}: not a TASK-seedN run folder")
            runs.setdefault(match["task"], {a: [] for a in ARMS})[arm].append(io.join(uri, "metrics.json"))
    if not any(r["random"] for r in runs.values()):
        raise UserError(f"{io.join(artifacts, 'finetune_random')}: no random-init runs to compare")
    for task, arms in runs.items():
        arms["pretrained"].insert(0, io.join(artifacts, "finetune", task, "metrics.json"))
    return runs


def _seed_values(task: str, arm: str, uris: list[str]) -> tuple[dict[int, float], str, dict]:
    """({seed: selection value}, the metric's name, the run settings) of one arm; every run must share them."""
    values, key, settings = {}, None, None
    for uri in uris:
        if not io.exists(uri):
            raise UserError(f"{uri}: missing; run `dvc repro` for every seed of {task}")
        m = io.read_json(uri)
        seed = int(m.get("train", {}).get("seed", 0))
        if seed in values:
            raise UserError(f"{uri}: seed {seed} of {task} ({arm}) appears twice")
        if settings is not None and m.get("settings") != settings:
            raise UserError(f"{uri}: settings differ from the other {arm} runs of {task}; every seed must run "
                            "the same recipe")
        key, settings = m["selection_key"], m.get("settings")
        values[seed] = m[key]
    return values, key, settings


def compare_seeds(artifacts: str) -> dict:
    """{task: {"metric", "pretrained": {seeds, spread}, "random": {...}, "difference", "verdict"}}."""
    doc = {}
    for task, arms in sorted(_arm_runs(artifacts).items()):
        if not arms["random"]:
            raise UserError(f"{io.join(artifacts, 'finetune_random')}: no random-init runs of {task}")
        pre, key, pre_settings = _seed_values(task, "pretrained", arms["pretrained"])
        rnd, rnd_key, rnd_settings = _seed_values(task, "random", arms["random"])
        if rnd_key != key or rnd_settings != pre_settings:
            raise UserError(f"{task}: the random-init runs used other settings than the pretrained ones; both arms "
                            "must run the same recipe and budget")
        if set(pre) != set(rnd):
            raise UserError(f"{task}: pretrained seeds {sorted(pre)} and random seeds {sorted(rnd)} differ "
                            "(params.yaml finetune.compare)")
        a, b = spread(list(pre.values())), spread(list(rnd.values()))
        doc[task] = {"metric": key, "pretrained": {"seeds": pre, **a}, "random": {"seeds": rnd, **b},
                     "difference": a["mean"] - b["mean"], "verdict": verdict(list(pre.values()), list(rnd.values()))}
    return doc


def _cell(s: dict) -> str:
    std = "–" if s["std"] is None else f"{s['std']:.2f}"
    return f"{s['mean']:.2f} ± {std} ({s['min']:.2f}..{s['max']:.2f}, n={s['n']})"


def comparison_markdown(doc: dict) -> str:
    lines = ["mean ± sample std (min..max, n seeds) of each arm's selection metric",
             "", "| task | metric | pretrained | random | difference of means | verdict |",
             "|---|---|---|---|---:|---|"]
    lines += [f"| {t} | {d['metric']} | {_cell(d['pretrained'])} | {_cell(d['random'])} | {d['difference']:+.2f} | "
              f"{d['verdict']} |" for t, d in sorted(doc.items())]
    lines += ["", f"{RULE} (and only with {MIN_SEEDS} or more seeds per arm)."]
    return "\n".join(lines) + "\n"


def compare(artifacts: str, out: str) -> dict:
    """OUT/comparison.md and OUT/comparison.json over the seeds of both arms of every compared task."""
    doc = compare_seeds(artifacts)
    io.write_text(io.join(out, "comparison.md"), comparison_markdown(doc))
    io.write_json(io.join(out, "comparison.json"), {"rule": RULE, "min_seeds": MIN_SEEDS, "tasks": doc})
    return doc


def evaluation_line(task: str, metrics: dict) -> str:
    """`task  key = value` plus the task's extra metrics (captioning: objects_named beside CIDEr)."""
    key = metrics.get("selection_key")
    extra = "".join(f", {k} = {metrics[k]}" for k in EXTRA_METRICS.get(task, ()) if k in metrics)
    return f"  {task:15s} {key} = {metrics.get(key)}{extra}"


def show(artifacts: str) -> str:
    """A plain-text digest of the demo's results, from the files the stages wrote."""
    lines = []
    summary = io.join(artifacts, "pretrain", "summary.json")
    if io.exists(summary):
        s = io.read_json(summary)
        lines.append("pretraining: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in sorted(s.items()) if not isinstance(v, (dict, list))))
        if s.get("grounding"):
            lines.append("  " + describe_grounding(s["grounding"]))
    eval_root = io.join(artifacts, "eval")
    if io.exists(eval_root):
        lines.append("evaluation (test split):")
        for task_dir in io.ls(eval_root):
            lines.append(evaluation_line(os.path.basename(task_dir), io.read_json(io.join(task_dir, "metrics.json"))))
    comparison = io.join(artifacts, "comparison", "comparison.md")
    if io.exists(comparison):
        lines += ["pretrained vs random init at the same budget (val split):", io.read_text(comparison)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m beit3ops.demo_summary", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("compare")
    c.add_argument("artifacts")
    c.add_argument("--out", required=True)
    s = sub.add_parser("show")
    s.add_argument("artifacts")
    args = p.parse_args(argv)
    if args.action == "compare":
        compare(args.artifacts, args.out)
        print(io.read_text(io.join(args.out, "comparison.md")))
    else:
        print(show(args.artifacts))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
