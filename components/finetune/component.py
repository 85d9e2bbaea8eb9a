"""Fine-tuning on one downstream task: `beit3 finetune`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    validated_uri: str,
    text_tokens_uri: str,
    task: dict,
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    init_uri: str = "random",
) -> NamedTuple("Outputs", run_uri=str):
    """Fine-tune from `init_uri` (the pretraining step's `model_dir`, a pretrain run's model/ folder or an
    official .pth; "random" for none). `task`: {"task": "vqa", "data": "tasks/vqa", "args": ["--steps", "100"]}.

    Data and the initial model arrive as URIs and are streamed by the stage, so the KFP launcher downloads
    nothing into this pod (it would copy every input artifact in full). `run_uri` is the run folder (model/,
    metrics.json, report.html) for the steps after it."""
    from collections import namedtuple

    from beit3core import io
    from beit3ops import kfp_io
    from beit3train import finetune as stage

    name = task["task"]
    out = kfp_io.output_target(model)
    argv = ["--task", name, "--data", io.join(validated_uri, task.get("data", f"tasks/{name}")),
            "--text-tokenizer", text_tokens_uri, "--init", init_uri, "--out", out, *task.get("args", [])]
    kfp_io.run_stage(stage.main, argv)
    kfp_io.log_metrics_file(metrics, io.join(out, "metrics.json"), exclude=("settings",))
    if io.exists(io.join(out, "report.html")):
        kfp_io.publish_html(io.join(out, "report.html"), report)
    model.metadata.update({"task": name, "init": init_uri, "framework": "pytorch"})
    return namedtuple("Outputs", ["run_uri"])(out)
