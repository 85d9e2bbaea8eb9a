"""Model registration: `beit3 register`, gated on the evaluation metrics."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    finetuned: Input[Model],
    evaluation: Input[Artifact],
    validated: Input[Dataset],
    task: dict,
    model_name: str = "beit3",
    model_version: str = "0.1.0",
    registry: str = "kubeflow:http://model-registry-service.kubeflow.svc.cluster.local:8080",
    run_id: str = "",
    run_name: str = "",
) -> str:
    """Register `<model_name>-<task>` version `<model_version>-<run id>`; refused when the evaluation misses
    the task's thresholds (`task["require"]`, e.g. ["accuracy>=0.6"]). Returns the registered version."""
    from beit3core import io
    from beit3ops import kfp_io
    from beit3ops import model_registry as stage

    name = f"{model_name}-{task['task']}"
    version = f"{model_version}-{run_id[:8]}" if run_id else model_version
    argv = ["--model-dir", io.join(finetuned.uri, "model"), "--metrics", io.join(evaluation.uri, "metrics.json"),
            "--name", name, "--version", version, "--registry", registry, "--task", task["task"],
            "--dataset-version", validated.metadata.get("version", ""), "--run-id", run_id, "--run-name", run_name]
    for requirement in task.get("require", []):
        argv += ["--require", requirement]
    kfp_io.run_stage(stage.main, argv)
    return version
