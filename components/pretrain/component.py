"""Pretraining: `beit3 pretrain` as a PyTorchJob / TrainJob on the cluster, or local torchrun processes."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    validated: Input[Dataset],
    text_tokens: Input[Dataset],
    visual_tokens: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    arch: str = "beit3_base_patch16_224",
    layout: str = "",
    steps: int = 1000,
    extra_args: list = [],
    backend: str = "pytorchjob",
    image: str = "",
    replicas: int = 1,
    gpus_per_replica: int = 8,
    nproc_per_replica: int = 0,
    node_selector: dict = {},
    s3_secret: str = "beit3-s3",
    run_id: str = "",
    timeout_s: float = 604800.0,
    output_root: str = "",
):
    """Launch the distributed pretraining run and wait for it; `model` is its run folder (model/, checkpoints/,
    tb/, metrics.jsonl, summary.json). `backend`: pytorchjob | trainjob | local."""
    from beit3core import io
    from beit3ops import kfp_io
    from beit3ops.launch import LaunchConfig, current_namespace, job_name, pod_owner
    from beit3ops.launch import cli as launcher

    run_uri = kfp_io.output_target(model, output_root)
    args = ["--data", validated.uri, "--text-tokenizer", text_tokens.uri, "--visual-tokens", visual_tokens.uri,
            "--out", run_uri, "--arch", arch, "--steps", steps]
    if layout:
        args += ["--layout", layout]
    args += list(extra_args)
    on_cluster = backend != "local"
    cfg = LaunchConfig(
        step="pretrain",
        args=tuple(str(a) for a in args),
        name=job_name("beit3-pretrain", run_id),
        namespace=current_namespace(),
        image=image,
        replicas=replicas,
        nproc_per_node=nproc_per_replica or max(gpus_per_replica, 1),
        gpus_per_node=gpus_per_replica if on_cluster else 0,
        node_selector=tuple(sorted(node_selector.items())),
        s3_secret=s3_secret or None,
        active_deadline_seconds=int(timeout_s) if on_cluster else None,
        owner_pod=pod_owner(),  # POD_NAME / POD_UID from the downward API (pipelines/full.py)
    )
    launcher.launch(cfg, backend, timeout_s=timeout_s)
    kfp_io.log_metrics_file(metrics, io.join(run_uri, "summary.json"), required=False)
    model.metadata.update({"arch": arch, "layout": layout, "steps": steps, "backend": backend,
                           "framework": "pytorch"})
