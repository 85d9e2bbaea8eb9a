"""Model registration: `beit3 register`, gated on the evaluation metrics."""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    finetuned_uri: str,
    evaluation_uri: str,
    task: dict,
    model_name: str = "beit3",
    model_version: str = "0.1.0",
    registry: str = "kubeflow:http://model-registry-service.kubeflow.svc.cluster.local:8080",
    run_id: str = "",
    run_name: str = "",
) -> str:
    """Register `<model_name>-<task>` version `<model_version>-<run id>`; refused when the evaluation misses
    the task's thresholds (`task["require"]`, e.g. ["vqa_score>=35"], on the task's own metric names).
    `registry` "none" (or "") checks the gate only. Returns the version.

    The model and the evaluation arrive as URIs (the fine-tuning run folder, the evaluation folder): the
    KFP launcher copies nothing into this pod, and the registry records the model's own storage URI. A
    retried step completes a registration that stopped half-way (beit3ops.model_registry)."""
    from beit3core import io
    from beit3ops import kfp_io
    from beit3ops import model_registry as stage

    name = f"{model_name}-{task['task']}"
    version = f"{model_version}-{run_id[:8]}" if run_id else model_version
    metrics_uri = io.join(evaluation_uri, "metrics.json")
    argv = ["--model-dir", io.join(finetuned_uri, "model"), "--metrics", metrics_uri, "--name", name,
            "--version", version, "--registry", registry or "none", "--task", task["task"],
            "--run-id", run_id, "--run-name", run_name]
    kfp_io.use_kfp_credentials()
    if io.exists(metrics_uri):  # the evaluated dataset's fingerprint, as the lineage's dataset version
        argv += ["--dataset-version", str(io.read_json(metrics_uri).get("dataset_version") or "")]
    for requirement in task.get("require", []):
        argv += ["--require", requirement]
    kfp_io.run_stage(stage.main, argv)
    return version
