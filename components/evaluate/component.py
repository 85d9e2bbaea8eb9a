"""Evaluation of a fine-tuned model on its task: `beit3 evaluate`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Markdown, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    validated_uri: str,
    text_tokens_uri: str,
    finetuned_uri: str,
    task: dict,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    summary: Output[Markdown],
    report: Output[HTML],
) -> NamedTuple("Outputs", evaluation_uri=str):
    """Writes `evaluation` (metrics.json, report.html, confusion_matrix.json for classification and NLVR2) and
    shows it in the run's UI: the metrics (named `<task>.<metric>`, so the run's compare view keeps the tasks
    apart), the confusion matrix, a Markdown summary and the HTML report with sample predictions.

    Data, tokenizer and model arrive as URIs (`finetuned_uri`: the fine-tuning run folder) and are read by
    the stage, so the KFP launcher copies nothing into this pod. `evaluation_uri` is for registration."""
    from collections import namedtuple

    from beit3core import io
    from beit3core.tasks import TASKS
    from beit3ops import kfp_io
    from beit3train import evaluate as stage

    name = task["task"]
    out = kfp_io.output_target(evaluation)
    argv = ["--task", name, "--model-dir", io.join(finetuned_uri, "model"),
            "--data", io.join(validated_uri, task.get("data", f"tasks/{name}")),
            "--text-tokenizer", text_tokens_uri, "--out", out, *task.get("eval_args", [])]
    kfp_io.run_stage(stage.main, argv)
    doc = io.read_json(io.join(out, "metrics.json"))
    kfp_io.log_metrics(metrics, {k: doc[k] for k in TASKS[name].METRICS if k in doc}, prefix=f"{name}.")
    if io.exists(io.join(out, "confusion_matrix.json")):
        matrix = io.read_json(io.join(out, "confusion_matrix.json"))
        confusion.log_confusion_matrix(matrix["labels"], matrix["matrix"])
    kfp_io.publish_text(kfp_io.evaluation_markdown(doc, finetuned_uri), summary, suffix=".md")
    kfp_io.publish_html(io.join(out, "report.html"), report)
    evaluation.metadata["task"] = name
    return namedtuple("Outputs", ["evaluation_uri"])(out)
