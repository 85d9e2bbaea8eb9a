"""Pretraining: `beit3 pretrain` as a PyTorchJob / TrainJob on the cluster, or local torchrun processes."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    validated_uri: str,
    text_tokens_uri: str,
    visual_tokens_uri: str,
    model: Output[Model],
    metrics: Output[Metrics],
    arch: str = "beit3_base_patch16_224",
    layout: str = "",
    steps: int = 1000,
    extra_args: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    backend: str = "pytorchjob",
    image: str = "",
    replicas: int = 1,
    gpus_per_replica: int = 8,
    nproc_per_replica: int = 0,
    cpu_per_replica: str = "8",
    memory_per_replica: str = "64Gi",
    ephemeral_storage_per_replica: str = "",
    accelerator_type: str = "nvidia.com/gpu",
    gpu_node_selector: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    gpu_tolerations: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    queue_name: str = "",
    backoff_limit: int = 3,
    trainer_version: str = "2.2",
    s3_secret: str = "beit3-s3",
    timeout_s: float = 604800.0,
    start_timeout_s: float = 1800.0,
) -> NamedTuple("Outputs", model_dir=str):
    """Launch the distributed pretraining run and wait for it; `model` is its run folder (model/, checkpoints/,
    tb/, metrics.jsonl, summary.json), written by the job straight to the artifact's URI; `model_dir` is the
    exported model folder that fine-tuning starts from. `backend`: pytorchjob | trainjob | local.

    The data arrive as URIs (this pod only launches the job, so it downloads nothing) and no parameter
    changes per run, so a rerun with the same inputs is served from the cache. `gpus_per_replica=0` drops every
    GPU setting (resource, node selector, tolerations) from the job's pods. A retried step starts a job of its
    own name, or adopts the live job that writes the same run folder; the job resumes from that folder's
    newest checkpoint either way."""
    import os
    from collections import namedtuple

    from beit3core import io
    from beit3ops import kfp_io
    from beit3ops.launch import LaunchConfig, current_namespace, job_name, pod_owner
    from beit3ops.launch import cli as launcher

    kfp_io.use_kfp_credentials()  # this step's own storage access, and what the job's pods inherit below
    run_uri = model.uri
    args = ["--data", validated_uri, "--text-tokenizer", text_tokens_uri, "--visual-tokens", visual_tokens_uri,
            "--out", run_uri, "--arch", arch, "--steps", steps]
    if layout:
        args += ["--layout", layout]
    args += list(extra_args)
    on_cluster = backend != "local"
    gpus = gpus_per_replica if on_cluster else 0
    cfg = LaunchConfig(
        step="pretrain",
        args=tuple(str(a) for a in args),
        name=job_name("beit3-pretrain"),  # new for every attempt; a live job of the same output is adopted
        namespace=current_namespace(),
        image=image,
        replicas=replicas,
        nproc_per_node=nproc_per_replica or max(gpus_per_replica, 1),
        gpus_per_node=gpus,
        gpu_resource=accelerator_type,
        cpu=cpu_per_replica,
        memory=memory_per_replica,
        ephemeral_storage=ephemeral_storage_per_replica or None,
        node_selector=tuple(sorted(gpu_node_selector.items())) if gpus else (),
        tolerations=tuple(tuple(sorted(t.items())) for t in gpu_tolerations) if gpus else (),
        queue_name=queue_name,
        backoff_limit=backoff_limit,
        trainer_version=trainer_version,
        **kfp_io.job_s3_settings(s3_secret),  # beit3-s3, or the profile's keys this step runs on
        active_deadline_seconds=int(timeout_s) if on_cluster else None,
        owner_pod=pod_owner(),  # POD_NAME / POD_UID from the downward API (pipelines/full.py)
        run_id=os.environ.get("KFP_RUN_ID", ""),  # the pod's pipeline/runid label, for the exit handler
    )
    launcher.launch(cfg, backend, timeout_s=timeout_s, start_timeout_s=start_timeout_s)
    kfp_io.log_metrics_file(metrics, io.join(run_uri, "summary.json"), required=False)
    model.metadata.update({"arch": arch, "layout": layout, "steps": steps, "backend": backend,
                           "framework": "pytorch"})
    return namedtuple("Outputs", ["model_dir"])(io.join(run_uri, "model"))
