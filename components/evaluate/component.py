"""Evaluation of a fine-tuned model on its task: `beit3 evaluate`."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    validated: Input[Dataset],
    text_tokens: Input[Dataset],
    finetuned: Input[Model],
    task: dict,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    output_root: str = "",
):
    """Writes `evaluation` (metrics.json + report.html), logs the metrics and publishes the report."""
    from beit3core import io
    from beit3train import evaluate as stage
    from beit3ops import kfp_io

    name = task["task"]
    out = kfp_io.output_target(evaluation, output_root)
    argv = ["--task", name, "--model-dir", io.join(finetuned.uri, "model"),
            "--data", io.join(validated.uri, task.get("data", f"tasks/{name}")),
            "--text-tokenizer", text_tokens.uri, "--out", out, *task.get("eval_args", [])]
    kfp_io.run_stage(stage.main, argv)
    kfp_io.log_metrics_file(metrics, io.join(out, "metrics.json"), exclude=("settings",))
    kfp_io.publish_html(io.join(out, "report.html"), report, output_root)
    evaluation.metadata["task"] = name
