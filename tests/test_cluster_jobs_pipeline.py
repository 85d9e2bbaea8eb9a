"""The compiled pipeline (pipelines/full.py compiled to a temporary file) read the way the KFP 2.16 backend
reads it: which inputs the launcher downloads into each pod, what enters the pretraining step's cache key,
the exit handler that deletes a terminated run's training jobs, and GPU placement as run parameters that the
driver resolves (0 GPUs: no GPU settings at all)."""

from __future__ import annotations

import re

import pytest
import yaml
from kfp.dsl import Metrics, Model

from components.pretrain.component import pretrain
from components.pretrain.placement import gpu_placement
from pipelines import full

PER_RUN_PLACEHOLDERS = ("{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}", "{{$.pipeline_task_uuid}}",
                        "{{$.pipeline_job_create_time_utc}}", "{{$.pipeline_job_schedule_time_utc}}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("c1") / "full.yaml"
    full.compile_pipeline(path)
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return tasks


def launcher_downloads(spec) -> dict[str, list[str]]:
    """Executor -> the input artifacts its pod receives. The KFP launcher copies every one of them in full
    before user code starts, even when the code only uses `.uri` (kubeflow/pipelines
    backend/src/v2/component/launcher_v2.go, the TODO "Selectively copy artifacts"; objectstore.DownloadBlob
    lists and fetches the whole prefix)."""
    return {comp["executorLabel"]: sorted((comp.get("inputDefinitions") or {}).get("artifacts") or {})
            for comp in spec["components"].values() if "executorLabel" in comp}


def test_no_step_downloads_a_dataset_or_checkpoint_folder(compiled):
    spec, _ = compiled
    downloads = launcher_downloads(spec)
    table = "\n".join(f"{name}: {', '.join(arts) or '-'}" for name, arts in sorted(downloads.items()))
    for name in ("exec-validate-data", "exec-tokenize-text", "exec-tokenize-visual", "exec-pretrain",
                 "exec-finetune", "exec-finetune-2", "exec-gpu-placement", "exec-delete-training-jobs"):
        assert downloads[name] == [], table
    # Nothing reads the pretraining run folder (checkpoints, optimizer state) as an artifact: fine-tuning
    # gets the exported model folder's URI.
    for task in _tasks(spec).values():
        for art in ((task.get("inputs") or {}).get("artifacts") or {}).values():
            assert (art.get("taskOutputArtifact") or {}).get("producerTask") != "pretrain", task


def test_steps_that_need_local_disk_declare_it(compiled):
    """Stages stage shards and checkpoints in temporary folders before uploading them (beit3core/data/staging.py,
    beit3train/checkpointing.py): those steps mount a size-limited emptyDir over /tmp."""
    _, k8s = compiled
    for name in ("exec-validate-data", "exec-tokenize-text", "exec-tokenize-visual", "exec-finetune"):
        scratch = [m for m in k8s[name].get("emptyDirMounts", []) if m["volumeName"] == "scratch"]
        assert scratch and scratch[0]["sizeLimit"].endswith("Gi") and scratch[0]["mountPath"] == "/tmp", name


def _values(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v)
    else:
        yield obj


def test_pretraining_cache_key_has_no_per_run_value(compiled):
    """kubeflow/pipelines backend/src/v2/cacheutils/cache.go hashes the resolved input parameter values: the
    run id passed as a parameter (`dsl.PIPELINE_JOB_ID_PLACEHOLDER`) made every rerun pretrain again. The
    job's run label now comes from the pod's own `pipeline/runid` label (downward API)."""
    spec, k8s = compiled
    tasks = _tasks(spec)
    for name in ("gpu-placement", "validate-data", "tokenize-text", "tokenize-visual", "pretrain"):
        task = tasks[name]
        assert task["cachingOptions"] == {"enableCache": True}, name
        leaked = [v for v in _values(task["inputs"]) if any(p in str(v) for p in PER_RUN_PLACEHOLDERS)]
        assert leaked == [], (name, leaked)
    assert {"name": "KFP_RUN_ID", "fieldPath": full.RUN_ID_FIELD} in k8s["exec-pretrain"]["fieldPathAsEnv"]
    # the label the KFP API server sets on every pod of a run (backend/src/apiserver/template/argo_template.go)
    assert full.RUN_ID_FIELD == "metadata.labels['pipeline/runid']"


def test_an_exit_handler_deletes_the_runs_unfinished_jobs(compiled):
    """A terminated run gives the launcher under a second after SIGTERM and ownerReference GC waits for the
    workflow's TTL; KFP compiles an ExitHandler's exit task into an Argo exit lifecycle hook that runs
    whatever ended the DAG (backend/src/v2/compiler/argocompiler/dag.go, ALL_UPSTREAM_TASKS_COMPLETED)."""
    spec, k8s = compiled
    root = spec["root"]["dag"]["tasks"]
    exit_task = root["delete-training-jobs"]
    (handler,) = [n for n in root if n != "delete-training-jobs"]
    assert exit_task["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert exit_task["dependentTasks"] == [handler] and exit_task["cachingOptions"] == {}
    inner = _tasks({"root": {"dag": {"tasks": {}}}, "components": {
        k: v for k, v in spec["components"].items() if k != "comp-delete-training-jobs"}})
    assert "pretrain" in inner and "validate-data" in inner  # every step runs inside the handler
    assert {"name": "KFP_RUN_ID", "fieldPath": full.RUN_ID_FIELD} in k8s["exec-delete-training-jobs"]["fieldPathAsEnv"]
    assert {"name": "NAMESPACE", "fieldPath": "metadata.namespace"} in k8s["exec-delete-training-jobs"]["fieldPathAsEnv"]


_CHANNEL = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")


def driver_pod_settings(executor: dict, k8s_config: dict, inputs: dict) -> dict:
    """What the KFP driver puts in the pod for a GPU step, given the task's resolved input values
    (backend/src/v2/driver/driver.go initPodSpecPatch: an accelerator limit only when both its resolved type
    and count are non-empty; k8s.go: nodeSelectorJson and tolerationJson resolved from inputs, an empty
    list adds no toleration)."""

    def resolve(value):
        match = _CHANNEL.match(str(value))
        return inputs[match.group(1)] if match else value

    acc = executor["container"]["resources"].get("accelerator") or {}
    kind, count = resolve(acc.get("resourceType", "")), str(resolve(acc.get("resourceCount", "")))
    limits = {kind: count} if kind and count else {}
    node_selector = resolve_json(k8s_config.get("nodeSelector", {}).get("nodeSelectorJson"), inputs) or {}
    tolerations = []
    for tol in k8s_config.get("tolerations", []):
        value = resolve_json(tol.get("tolerationJson"), inputs)
        tolerations += value if isinstance(value, list) else [value] if value else []
    return {"limits": limits, "nodeSelector": node_selector, "tolerations": tolerations}


def resolve_json(spec, inputs):
    return inputs[spec["componentInputParameter"]] if spec else None


@pytest.mark.parametrize("gpus", [0, 2])
def test_gpu_placement_is_a_run_parameter_and_zero_gpus_drops_every_gpu_setting(compiled, gpus):
    spec, k8s = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("gpus_per_step", "accelerator_type", "gpu_node_selector", "gpu_tolerations", "gpus_per_replica",
                 "cpu_per_replica", "memory_per_replica", "kueue_queue", "trainer_version", "pretrain_backoff_limit",
                 "pretrain_start_timeout_s"):
        assert name in params, name
    assert params["pretrain_backoff_limit"]["defaultValue"] > 0
    out = gpu_placement.python_func(gpus=gpus, accelerator_type=params["accelerator_type"]["defaultValue"],
                                    node_selector=params["gpu_node_selector"]["defaultValue"],
                                    tolerations=params["gpu_tolerations"]["defaultValue"])
    inputs = {"pipelinechannel--gpu-placement-accelerator_type": out.accelerator_type,
              "pipelinechannel--gpus_per_step": gpus,
              "pipelinechannel--gpu-placement-node_selector": out.node_selector,
              "pipelinechannel--gpu-placement-tolerations": out.tolerations}
    for name in ("exec-tokenize-visual", "exec-finetune", "exec-evaluate"):
        pod = driver_pod_settings(spec["deploymentSpec"]["executors"][name], k8s[name], inputs)
        if gpus:
            assert pod == {"limits": {"nvidia.com/gpu": "2"}, "nodeSelector": {"nvidia.com/gpu.present": "true"},
                           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
        else:
            assert pod == {"limits": {}, "nodeSelector": {}, "tolerations": []}, name


def test_step_sizes_are_run_parameters_so_a_small_quota_can_hold_them(compiled):
    """The CPU overlay's quota (8 cpu requested per namespace) could never admit steps with fixed 8-cpu / 64Gi
    requests; the driver resolves `resourceCpuRequest` / `resourceMemory*` channels per run (driver.go
    getPodResource)."""
    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    expect = {"exec-validate-data": "step_memory", "exec-tokenize-text": "step_memory", "exec-evaluate": "step_memory",
              "exec-tokenize-visual": "gpu_step_memory", "exec-finetune": "gpu_step_memory"}
    for name, memory in expect.items():
        res = executors[name]["container"]["resources"]
        assert res["resourceCpuRequest"] == "{{$.inputs.parameters['pipelinechannel--step_cpu']}}", name
        assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"] == \
            f"{{{{$.inputs.parameters['pipelinechannel--{memory}']}}}}", name


def test_every_resource_placeholder_reaches_its_task(compiled):
    """The driver resolves `{{$.inputs.parameters['X']}}` in resources from the task's executor input and fails
    without it (backend/src/v2/driver/resolve.go resolvePodSpecInputRuntimeParameter: "executorInput did not
    contain ... input parameter"): X must be an input of the task, and an input of every DAG it is nested in."""
    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for comp_name, comp in spec["components"].items():
        if "dag" not in comp:
            continue
        own = set((comp.get("inputDefinitions") or {}).get("parameters") or {})
        for task_name, task in comp["dag"]["tasks"].items():
            target = spec["components"][task["componentRef"]["name"]]
            params = (task.get("inputs") or {}).get("parameters") or {}
            for value in params.values():  # inputs handed down from this DAG must exist in this DAG
                parent = value.get("componentInputParameter")
                assert parent is None or parent in own, (comp_name, task_name, parent)
            if "executorLabel" in target:
                resources = executors[target["executorLabel"]]["container"].get("resources") or {}
                for placeholder in _values(resources):
                    match = _CHANNEL.match(str(placeholder))
                    assert match is None or match.group(1) in params, (task_name, placeholder)


def test_output_root_is_gone(compiled):
    """An output URI outside the pipeline root fails in the launcher after the work is done
    (launcher_v2.go uploadOutputArtifacts -> bucketConfig.KeyFromURI "does not have expected bucket prefix"):
    outputs go under the pipeline root, which a run sets (kfp-launcher ConfigMap or pipeline_root=)."""
    spec, _ = compiled
    assert "output_root" not in spec["root"]["inputDefinitions"]["parameters"]
    for comp in spec["components"].values():
        assert "output_root" not in ((comp.get("inputDefinitions") or {}).get("parameters") or {}), comp


class _Api:
    def __init__(self):
        self.jobs = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.jobs.append(body)

    def list_namespaced_custom_object(self, *a, **kw):
        return {"items": []}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        done = "Complete" if plural == "trainjobs" else "Succeeded"  # TrainJob / PyTorchJob success conditions
        return {"status": {"conditions": [{"type": done, "status": "True"}]}}


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_pretrain_step_on_cpu_nodes_sets_no_gpu_settings_on_the_job(backend, tmp_path, monkeypatch):
    from beit3ops.launch import cli as launch_cli

    api = _Api()
    monkeypatch.setattr(launch_cli, "kubernetes_apis", lambda: (api, None))
    monkeypatch.setenv("NAMESPACE", "team")
    pretrain.python_func(
        validated_uri="s3://b/v", text_tokens_uri="s3://b/t", visual_tokens_uri="s3://b/vt",
        model=Model(name="model", uri=str(tmp_path / "run")), metrics=Metrics(name="m", uri=str(tmp_path / "m")),
        backend=backend, image="reg/beit3:1", replicas=2, gpus_per_replica=0, cpu_per_replica="6",
        memory_per_replica="24Gi", gpu_node_selector=full.GPU_NODE_SELECTOR, gpu_tolerations=full.GPU_TOLERATIONS,
        queue_name="cpu-queue", timeout_s=60,
    )
    (job,) = api.jobs
    text = yaml.safe_dump(job)
    assert "nvidia.com/gpu" not in text and "nodeSelector" not in text and "tolerations" not in text
    assert "'cpu': '6'" in str(job) and "'memory': '24Gi'" in str(job)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"
    if backend == "pytorchjob":
        assert job["spec"]["nprocPerNode"] == "1"
    else:
        assert job["spec"]["trainer"]["numProcPerNode"] == 1
