"""What `make demo` prints at the end, and the pretrained-vs-random comparison stage.

    python -m beit3ops.demo_summary compare artifacts --out artifacts/comparison
    python -m beit3ops.demo_summary show artifacts
"""

from __future__ import annotations

import os
import sys

from beit3core import io
from beit3core.errors import ArgumentParser, UserError, run_main
from beit3core.pretrain.grounding import describe_grounding
from beit3core.tasks.report import write_comparison


def compare(artifacts: str, out: str) -> dict:
    """Every task fine-tuned from random init too is compared with its run from the pretrained model."""
    random_root = io.join(artifacts, "finetune_random")
    tasks = [os.path.basename(u) for u in io.ls(random_root)]
    if not tasks:
        raise UserError(f"{random_root}: no random-init runs to compare")
    return write_comparison({t: io.join(artifacts, "finetune", t, "metrics.json") for t in tasks},
                            {t: io.join(artifacts, "finetune_random", t, "metrics.json") for t in tasks}, out)


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
            m = io.read_json(io.join(task_dir, "metrics.json"))
            key = m.get("selection_key")
            lines.append(f"  {os.path.basename(task_dir):15s} {key} = {m.get(key)}")
    comparison = io.join(artifacts, "comparison", "comparison.md")
    if io.exists(comparison):
        lines += ["pretrained vs random init at the same budget:", io.read_text(comparison)]
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
