"""The whole BEiT-3 pipeline: validate -> tokenize (text, visual) -> pretrain -> fine-tune every task in parallel
-> evaluate -> register.

Compile (the committed `pipelines/full.yaml` must match; tests/test_pipeline.py checks it):

    python -m pipelines.full                      # writes pipelines/full.yaml

Run on a cluster (parameters are key=value, lists and dicts as JSON):

    kfp --endpoint URL run create -e beit3 -f pipelines/full.yaml dataset_uri=s3://bucket/data replicas=4

Caching is on, so a rerun with the same inputs reuses finished steps (pretraining too: no per-run value is
one of its parameters); `pretrained_model_uri` skips visual tokenization and pretraining and fine-tunes from an
existing checkpoint instead. Steps hand each other URIs, so no pod downloads data it only points to; GPU
counts and placement are run parameters (0 GPUs: CPU nodes only); an exit handler deletes the run's
unfinished training jobs, also when the run is terminated. S3 credentials reach every
pod from the `beit3-s3` Secret (kfp-kubernetes), never through parameters or this YAML.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import pipeline_channel

from beit3ops import kfp_io, model_registry
from components import IMAGE
from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.pretrain.cleanup import delete_training_jobs
from components.pretrain.component import pretrain
from components.pretrain.placement import gpu_placement
from components.register.check import check_tasks
from components.register.component import register
from components.tokenize_text.component import tokenize_text
from components.tokenize_visual.component import tokenize_visual
from components.validate_data.component import validate_data

PIPELINE_YAML = Path(__file__).with_name("full.yaml")
S3_SECRET = "beit3-s3"  # manifests/own-namespace/s3-secret.yaml
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
# GPU placement defaults, all run parameters (gpus_per_step / gpus_per_replica = 0 drops them): the resource
# the NVIDIA device plugin advertises, the GPU operator's node label and the usual GPU node taint.
GPU = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# Local disk for steps that stage outputs (shards, checkpoints) or a DVC checkout in temporary folders before
# uploading: a size-limited emptyDir mounted over /tmp, where Python's tempfile (and KFP's own mktemp) write.
SCRATCH = "/tmp"
# The run id, from the label the KFP API server puts on every pod of a run (backend/src/apiserver/template/
# argo_template.go SetPodMetadataLabels(pipeline/runid)): read in the pod, so it is no parameter of the step
# and does not enter its cache key (backend/src/v2/cacheutils/cache.go hashes the parameter values).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
FINETUNE_PARALLELISM = 4

# One entry per downstream task: where its data sits in the validated collection, fine-tuning flags,
# evaluation flags and the registration thresholds, on the metrics the task's evaluation writes
# (beit3core.tasks METRICS; checked by compile_pipeline and again at run start). The levels are those of
# params.yaml: above chance on the bundled demo data; set your own for real data. Override with tasks='[...]'.
DEFAULT_TASKS = [
    {"task": "classification", "data": "tasks/classification", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["acc1>=30"]},
    {"task": "vqa", "data": "tasks/vqa", "args": ["--epochs", "10"], "eval_args": [], "require": ["vqa_score>=35"]},
    {"task": "nlvr2", "data": "tasks/nlvr2", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["acc>=55"]},
    {"task": "retrieval", "data": "tasks/retrieval", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["average_score>=10"]},
    {"task": "captioning", "data": "tasks/captioning", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["cider>=60"]},
]


def _on_platform(task: dsl.PipelineTask, image, *, placement=None, gpus=0, cpu: str = "2", memory: str = "8Gi",
                 namespace_env: bool = False, scratch: str = "") -> dsl.PipelineTask:
    """The per-step Kubernetes settings: image, S3 secret as env, resources, GPU placement (`placement`: the
    gpu_placement task, `gpus`: the run parameter with the count), local scratch disk."""
    task.set_container_image(image)
    # beit3-s3 where the namespace has one, else the profile's own KFP keys (beit3ops.kfp_io.use_kfp_credentials)
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS}, optional=True)
    kubernetes.use_secret_as_env(task, kfp_io.KFP_S3_SECRET, kfp_io.KFP_S3_ENV, optional=True)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    resource_values = [cpu, memory]
    if placement is not None:
        # resolved per run by the driver; an empty accelerator type (0 GPUs) sets no GPU limit at all
        accelerator = placement.outputs["accelerator_type"]
        task.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
        resource_values += [accelerator, gpus]
        kubernetes.add_node_selector_json(task, placement.outputs["node_selector"])
        kubernetes.add_toleration_json(task, placement.outputs["tolerations"])
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    if scratch:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=scratch)
    if namespace_env:
        kubernetes.use_field_path_as_env(task, "NAMESPACE", "metadata.namespace")
    # Run parameters used only in resources are not passed down into nested DAGs (loops, conditions) by kfp
    # 2.17 by themselves, and the driver could not resolve them there: register them as the task's inputs.
    task.register_pipeline_channels([v for v in resource_values if isinstance(v, pipeline_channel.PipelineChannel)])
    return task


def _tasks_branch(*, tasks, uris, image, placement, gpus, sizes, model_name, model_version,
                  registry, init_uri):
    """Fine-tune, evaluate and register every task, in parallel. `uris`: where the validated data and the text
    tokens are (fine-tuning streams them; the launcher copies no input artifact into its pod)."""
    with dsl.ParallelFor(tasks, parallelism=FINETUNE_PARALLELISM) as task:
        ft = finetune(validated_uri=uris["validated"], text_tokens_uri=uris["text_tokens"], task=task,
                      init_uri=init_uri)
        _on_platform(ft.set_display_name("fine-tune"), image, placement=placement, gpus=gpus, cpu=sizes["cpu"],
                     memory=sizes["gpu_memory"], scratch="100Gi")
        # evaluation and registration get URIs too: the launcher would copy the model folder into their pods
        ev = evaluate(validated_uri=uris["validated"], text_tokens_uri=uris["text_tokens"],
                      finetuned_uri=ft.outputs["run_uri"], task=task)
        _on_platform(ev.set_display_name("evaluate"), image, placement=placement, gpus=gpus, cpu=sizes["cpu"],
                     memory=sizes["memory"])
        reg = register(finetuned_uri=ft.outputs["run_uri"], evaluation_uri=ev.outputs["evaluation_uri"],
                       task=task, model_name=model_name, model_version=model_version, registry=registry,
                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        _on_platform(reg.set_display_name("register"), image, cpu="1", memory="2Gi", namespace_env=True)
        reg.set_retry(2)


def _stages(*, dataset_uri, dvc_repo, dvc_rev, dvc_path, max_reject_fraction, image, text_vocab_size, text_max_len,
            text_tokenizer_uri, visual_tokenizer_uri, visual_codebook_size, visual_img_size, visual_patch_size,
            visual_epochs, visual_args, arch, layout, pretrain_steps, pretrain_args, pretrained_model_uri,
            launcher_backend, replicas, gpus_per_replica, nproc_per_replica, cpu_per_replica, memory_per_replica,
            ephemeral_storage_per_replica, pretrain_backoff_limit, pretrain_timeout_s, pretrain_start_timeout_s,
            trainer_version, kueue_queue, gpus_per_step, accelerator_type, gpu_node_selector, gpu_tolerations,
            step_cpu, step_memory, gpu_step_memory, tasks, model_name, model_version, registry):
    """The pipeline's steps, inside its exit handler. Steps pass each other URIs (string outputs), not
    artifacts, wherever they only need to know where data is: the KFP launcher copies every input artifact
    in full into the pod before the step starts (backend/src/v2/component/launcher_v2.go)."""
    placement = gpu_placement(gpus=gpus_per_step, accelerator_type=accelerator_type, node_selector=gpu_node_selector,
                              tolerations=gpu_tolerations)
    _on_platform(placement.set_display_name("GPU placement"), image, cpu="500m", memory="512Mi")

    val = validate_data(dataset_uri=dataset_uri, dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path,
                        max_reject_fraction=max_reject_fraction)
    sizes = {"cpu": step_cpu, "memory": step_memory, "gpu_memory": gpu_step_memory}  # run parameters
    _on_platform(val.set_display_name("validate data"), image, cpu=step_cpu, memory=step_memory, scratch="200Gi")
    # thresholds on metrics a task never reports would refuse every registration hours later: check first
    checked = check_tasks(tasks=tasks)
    _on_platform(checked.set_display_name("check tasks"), image, cpu="250m", memory="512Mi")
    val.after(checked)

    txt = tokenize_text(validated_uri=val.outputs["validated_uri"], vocab_size=text_vocab_size,
                        max_len=text_max_len, import_model=text_tokenizer_uri)
    _on_platform(txt.set_display_name("tokenize text"), image, cpu=step_cpu, memory=step_memory, scratch="50Gi")
    uris = {"validated": val.outputs["validated_uri"], "text_tokens": txt.outputs["text_tokens_uri"]}
    common = {"tasks": tasks, "uris": uris, "image": image,
              "placement": placement, "gpus": gpus_per_step, "sizes": sizes, "model_name": model_name,
              "model_version": model_version, "registry": registry}

    with dsl.If(pretrained_model_uri == "", name="pretrain here"):
        vis = tokenize_visual(validated_uri=uris["validated"], import_checkpoint=visual_tokenizer_uri,
                              codebook_size=visual_codebook_size, img_size=visual_img_size,
                              patch_size=visual_patch_size, epochs=visual_epochs, extra_args=visual_args)
        _on_platform(vis.set_display_name("tokenize visual"), image, placement=placement, gpus=gpus_per_step,
                     cpu=step_cpu, memory=gpu_step_memory, scratch="50Gi")
        pre = pretrain(validated_uri=uris["validated"], text_tokens_uri=uris["text_tokens"],
                       visual_tokens_uri=vis.outputs["visual_tokens_uri"], arch=arch, layout=layout,
                       steps=pretrain_steps, extra_args=pretrain_args, backend=launcher_backend, image=image,
                       replicas=replicas, gpus_per_replica=gpus_per_replica, nproc_per_replica=nproc_per_replica,
                       cpu_per_replica=cpu_per_replica, memory_per_replica=memory_per_replica,
                       ephemeral_storage_per_replica=ephemeral_storage_per_replica, accelerator_type=accelerator_type,
                       gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, queue_name=kueue_queue,
                       backoff_limit=pretrain_backoff_limit, trainer_version=trainer_version, s3_secret=S3_SECRET,
                       timeout_s=pretrain_timeout_s, start_timeout_s=pretrain_start_timeout_s)
        # this pod only submits and watches the job: no GPU of its own
        _on_platform(pre.set_display_name("pretrain"), image, cpu="1", memory="2Gi", namespace_env=True)
        # the job is owned by this pod, so it goes away with the pod even if the cancellation signal is lost
        kubernetes.use_field_path_as_env(pre, "POD_NAME", "metadata.name")
        kubernetes.use_field_path_as_env(pre, "POD_UID", "metadata.uid")
        kubernetes.use_field_path_as_env(pre, "KFP_RUN_ID", RUN_ID_FIELD)  # a job label for the exit handler
        # A group of its own hands the model folder to the loop as a parent input: kfp.local 2.17 replaces every
        # task-output parameter of a loop task with the loop item (kfp/local/orchestrator/task_spec_utils.py,
        # create_parameter_loop_iteration_task_spec). Its condition is the branch's own, so it always holds.
        with dsl.If(pretrained_model_uri == "", name="pretrained model"):
            _tasks_branch(init_uri=pre.outputs["model_dir"], **common)
    with dsl.Else(name="from checkpoint"):
        _tasks_branch(init_uri=pretrained_model_uri, **common)


@dsl.pipeline(name="beit3-full", description="BEiT-3 end to end: data validation, tokenizers, distributed "
              "pretraining, per-task fine-tuning, evaluation and model registration.")
def full_pipeline(
    dataset_uri: str = "",
    dvc_repo: str = "",
    dvc_rev: str = "main",
    dvc_path: str = "data",
    max_reject_fraction: float = 0.05,
    image: str = IMAGE,
    text_vocab_size: int = 64000,
    text_max_len: int = 64,
    text_tokenizer_uri: str = "",
    visual_tokenizer_uri: str = "",
    visual_codebook_size: int = 8192,
    visual_img_size: int = 224,
    visual_patch_size: int = 16,
    visual_epochs: int = 1,
    visual_args: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    arch: str = "beit3_base_patch16_224",
    layout: str = "",
    pretrain_steps: int = 1000,
    pretrain_args: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    pretrained_model_uri: str = "",
    launcher_backend: str = "pytorchjob",
    replicas: int = 1,
    gpus_per_replica: int = 8,
    nproc_per_replica: int = 0,
    cpu_per_replica: str = "8",
    memory_per_replica: str = "64Gi",
    ephemeral_storage_per_replica: str = "50Gi",
    pretrain_backoff_limit: int = 3,
    pretrain_timeout_s: float = 604800.0,
    pretrain_start_timeout_s: float = 1800.0,
    trainer_version: str = "2.2",
    kueue_queue: str = "",
    gpus_per_step: int = 1,
    accelerator_type: str = GPU,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_tolerations: list = GPU_TOLERATIONS,
    step_cpu: str = "8",
    step_memory: str = "32Gi",
    gpu_step_memory: str = "64Gi",
    tasks: list = DEFAULT_TASKS,
    model_name: str = "beit3",
    model_version: str = "0.1.0",
    registry: str = "kubeflow:http://model-registry-service.kubeflow.svc.cluster.local:8080",
):
    """Parameters: the dataset (`dataset_uri`, or `dvc_repo` + `dvc_rev` + `dvc_path`); the architecture
    (`arch`, a `beit3 models` name); the distributed run (`launcher_backend` pytorchjob | trainjob |
    local, `replicas`, `gpus_per_replica`, `*_per_replica` requests, `pretrain_backoff_limit` pod restarts,
    `pretrain_start_timeout_s`, `trainer_version`, `kueue_queue`); GPUs of the other GPU steps (`gpus_per_step`)
    and GPU placement (`accelerator_type`, `gpu_node_selector`, `gpu_tolerations`; 0 GPUs drops them); cpu and
    memory of the data, tokenizer, fine-tuning and evaluation steps (`step_cpu`, `step_memory`,
    `gpu_step_memory` for visual tokenization and fine-tuning); per-task
    settings (`tasks`); `pretrained_model_uri` to skip pretraining. Outputs go under the pipeline root."""
    params = dict(locals())  # the run parameters, for the steps inside the exit handler
    # Exit handler: whatever ends the run (success, failure, termination), delete its unfinished training jobs.
    cleanup = delete_training_jobs()
    _on_platform(cleanup.set_display_name("delete unfinished training jobs"), image, cpu="500m", memory="512Mi",
                 namespace_env=True)
    kubernetes.use_field_path_as_env(cleanup, "KFP_RUN_ID", RUN_ID_FIELD)
    cleanup.set_caching_options(False)  # it must run in every run
    with dsl.ExitHandler(cleanup, name="beit3"):
        _stages(**params)


def compile_pipeline(path: str | Path = PIPELINE_YAML) -> Path:
    model_registry.check_tasks(DEFAULT_TASKS)  # the default thresholds name metrics evaluation writes
    compiler.Compiler().compile(pipeline_func=full_pipeline, package_path=str(path))
    return Path(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="compile the full pipeline to YAML")
    parser.add_argument("--output", default=PIPELINE_YAML, help="where to write the compiled pipeline")
    print(compile_pipeline(parser.parse_args().output))
