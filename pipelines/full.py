"""The whole BEiT-3 pipeline: validate -> tokenize (text, visual) -> pretrain -> fine-tune every task in parallel
-> evaluate -> register.

Compile (the committed `pipelines/full.yaml` must match; tests/test_pipeline.py checks it):

    python -m pipelines.full                      # writes pipelines/full.yaml

Run on a cluster (parameters are key=value, lists and dicts as JSON):

    kfp --endpoint URL run create -e beit3 -f pipelines/full.yaml dataset_uri=s3://bucket/data replicas=4

Caching is on, so a rerun with the same inputs reuses finished steps; `pretrained_model_uri` skips visual
tokenization and pretraining and fine-tunes from an existing checkpoint instead. S3 credentials reach every
pod from the `beit3-s3` Secret (kfp-kubernetes), never through parameters or this YAML.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import IMAGE
from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.pretrain.component import pretrain
from components.register.component import register
from components.tokenize_text.component import tokenize_text
from components.tokenize_visual.component import tokenize_visual
from components.validate_data.component import validate_data

PIPELINE_YAML = Path(__file__).with_name("full.yaml")
S3_SECRET = "beit3-s3"  # manifests/base/s3-secret.yaml
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
GPU = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")  # set by the NVIDIA GPU operator
FINETUNE_PARALLELISM = 4

# One entry per downstream task: where its data sits in the validated collection, fine-tuning flags,
# evaluation flags and the registration thresholds. Override with tasks='[...]' at run creation.
DEFAULT_TASKS = [
    {"task": "classification", "data": "tasks/classification", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["accuracy>=0.5"]},
    {"task": "vqa", "data": "tasks/vqa", "args": ["--epochs", "10"], "eval_args": [], "require": ["accuracy>=0.4"]},
    {"task": "nlvr2", "data": "tasks/nlvr2", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["accuracy>=0.55"]},
    {"task": "retrieval", "data": "tasks/retrieval", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["recall@1>=0.1"]},
    {"task": "captioning", "data": "tasks/captioning", "args": ["--epochs", "10"], "eval_args": [],
     "require": ["bleu4>=0.05"]},
]


def _on_platform(task: dsl.PipelineTask, image, *, gpus: int = 0, cpu: str = "2", memory: str = "8Gi",
                 namespace_env: bool = False) -> dsl.PipelineTask:
    """The per-step Kubernetes settings: image, S3 secret as env, resources, GPU placement."""
    task.set_container_image(image)
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_REQUIRED_KEYS})
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_OPTIONAL_KEYS}, optional=True)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    if gpus:
        task.set_accelerator_type(GPU).set_accelerator_limit(gpus)
        kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
        kubernetes.add_toleration(task, key=GPU, operator="Exists", effect="NoSchedule")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    if namespace_env:
        kubernetes.use_field_path_as_env(task, "NAMESPACE", "metadata.namespace")
    return task


def _tasks_branch(*, tasks, validated, text_tokens, image, model_name, model_version, registry, output_root,
                  pretrained=None, init_uri=""):
    """Fine-tune, evaluate and register every task, in parallel."""
    with dsl.ParallelFor(tasks, parallelism=FINETUNE_PARALLELISM) as task:
        extra = {"pretrained": pretrained} if pretrained is not None else {"init_uri": init_uri}
        ft = finetune(validated=validated, text_tokens=text_tokens, task=task, output_root=output_root, **extra)
        _on_platform(ft.set_display_name("fine-tune"), image, gpus=1, cpu="8", memory="64Gi")
        ev = evaluate(validated=validated, text_tokens=text_tokens, finetuned=ft.outputs["model"], task=task,
                      output_root=output_root)
        _on_platform(ev.set_display_name("evaluate"), image, gpus=1, cpu="8", memory="32Gi")
        reg = register(finetuned=ft.outputs["model"], evaluation=ev.outputs["evaluation"], validated=validated,
                       task=task, model_name=model_name, model_version=model_version, registry=registry,
                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        _on_platform(reg.set_display_name("register"), image, cpu="1", memory="2Gi", namespace_env=True)
        reg.set_retry(2)


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
    visual_args: list = [],
    arch: str = "beit3_base_patch16_224",
    layout: str = "",
    pretrain_steps: int = 1000,
    pretrain_args: list = [],
    pretrained_model_uri: str = "",
    launcher_backend: str = "pytorchjob",
    replicas: int = 1,
    gpus_per_replica: int = 8,
    nproc_per_replica: int = 0,
    tasks: list = DEFAULT_TASKS,
    model_name: str = "beit3",
    model_version: str = "0.1.0",
    registry: str = "kubeflow:http://model-registry-service.kubeflow.svc.cluster.local:8080",
    output_root: str = "",
):
    """Parameters: the dataset (`dataset_uri`, or `dvc_repo` + `dvc_rev` + `dvc_path`); the architecture
    (`arch`, a `beit3 models` name); the distributed run (`launcher_backend` pytorchjob | trainjob |
    local, `replicas`, `gpus_per_replica`); per-task settings (`tasks`); `pretrained_model_uri` to skip
    pretraining; `output_root` to write stage outputs under another prefix than the pipeline root."""
    val = validate_data(dataset_uri=dataset_uri, dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path,
                        max_reject_fraction=max_reject_fraction, output_root=output_root)
    _on_platform(val.set_display_name("validate data"), image, cpu="8", memory="32Gi")
    validated = val.outputs["validated"]

    txt = tokenize_text(validated=validated, vocab_size=text_vocab_size, max_len=text_max_len,
                        import_model=text_tokenizer_uri, output_root=output_root)
    _on_platform(txt.set_display_name("tokenize text"), image, cpu="8", memory="32Gi")
    text_tokens = txt.outputs["text_tokens"]
    common = dict(tasks=tasks, validated=validated, text_tokens=text_tokens, image=image, model_name=model_name,
                  model_version=model_version, registry=registry, output_root=output_root)

    with dsl.If(pretrained_model_uri == "", name="pretrain here"):
        vis = tokenize_visual(validated=validated, import_checkpoint=visual_tokenizer_uri,
                              codebook_size=visual_codebook_size, img_size=visual_img_size,
                              patch_size=visual_patch_size, epochs=visual_epochs, extra_args=visual_args,
                              output_root=output_root)
        _on_platform(vis.set_display_name("tokenize visual"), image, gpus=1, cpu="8", memory="64Gi")
        pre = pretrain(validated=validated, text_tokens=text_tokens, visual_tokens=vis.outputs["visual_tokens"],
                       arch=arch, layout=layout, steps=pretrain_steps, extra_args=pretrain_args,
                       backend=launcher_backend, image=image, replicas=replicas, gpus_per_replica=gpus_per_replica,
                       nproc_per_replica=nproc_per_replica, s3_secret=S3_SECRET,
                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, output_root=output_root)
        # this pod only submits and watches the job: no GPU of its own
        _on_platform(pre.set_display_name("pretrain"), image, cpu="1", memory="2Gi", namespace_env=True)
        # the job is owned by this pod, so it goes away with the pod even if the cancellation signal is lost
        kubernetes.use_field_path_as_env(pre, "POD_NAME", "metadata.name")
        kubernetes.use_field_path_as_env(pre, "POD_UID", "metadata.uid")
        _tasks_branch(pretrained=pre.outputs["model"], **common)
    with dsl.Else(name="from checkpoint"):
        _tasks_branch(init_uri=pretrained_model_uri, **common)


def compile_pipeline(path: str | Path = PIPELINE_YAML) -> Path:
    compiler.Compiler().compile(pipeline_func=full_pipeline, package_path=str(path))
    return Path(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="compile the full pipeline to YAML")
    parser.add_argument("--output", default=PIPELINE_YAML, help="where to write the compiled pipeline")
    print(compile_pipeline(parser.parse_args().output))
