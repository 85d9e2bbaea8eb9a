"""Fine-tuning on one downstream task: `beit3 finetune`."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    validated: Input[Dataset],
    text_tokens: Input[Dataset],
    task: dict,
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    pretrained: Input[Model] = None,
    init_uri: str = "",
    output_root: str = "",
):
    """Fine-tune from the pretraining run (`pretrained`) or from `init_uri` (a pretrain run's model/ folder or
    an official .pth). `task`: {"task": "vqa", "data": "tasks/vqa", "args": ["--steps", "100", ...]}."""
    from beit3core import io
    from beit3train import finetune as stage
    from beit3ops import kfp_io

    name = task["task"]
    init = init_uri or (io.join(pretrained.uri, "model") if pretrained is not None else "random")
    out = kfp_io.output_target(model, output_root)
    argv = ["--task", name, "--data", io.join(validated.uri, task.get("data", f"tasks/{name}")),
            "--text-tokenizer", text_tokens.uri, "--init", init, "--out", out, *task.get("args", [])]
    kfp_io.run_stage(stage.main, argv)
    kfp_io.log_metrics_file(metrics, io.join(out, "metrics.json"), exclude=("settings",))
    if io.exists(io.join(out, "report.html")):
        kfp_io.publish_html(io.join(out, "report.html"), report, output_root)
    model.metadata.update({"task": name, "init": init, "framework": "pytorch"})
