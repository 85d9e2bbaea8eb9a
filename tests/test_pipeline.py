"""pipelines/full.py compiles to the committed pipelines/full.yaml, and the compiled spec carries what the cluster
needs: the DAG order, parallel fine-tuning, the skip-pretraining branch, caching, the S3 Secret on every task,
GPU requests, node selectors and tolerations on the GPU steps, one image parameter for all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipelines import full

ROOT = Path(__file__).resolve().parents[1]
COMPONENT_FILES = sorted((ROOT / "components").glob("*/component.py"))
STAGES = ["validate_data", "tokenize_text", "tokenize_visual", "pretrain", "finetune", "evaluate", "register"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("compiled") / "full.yaml"
    full.compile_pipeline(path)
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform


def test_committed_yaml_is_up_to_date(compiled):
    committed = list(yaml.safe_load_all(full.PIPELINE_YAML.read_text()))
    assert committed == list(compiled), "pipelines/full.yaml is out of date: run `python -m pipelines.full`"


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task in the root DAG and in nested DAGs, keyed by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return tasks


def test_one_folder_per_stage():
    assert [p.parent.name for p in COMPONENT_FILES] == sorted(STAGES)


def test_dag_order_branches_and_parallel_loop(compiled):
    spec, _ = compiled
    tasks = _all_tasks(spec)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["tokenize-text"] == {"validate-data"}
    assert deps["tokenize-visual"] == set()  # inside the branch: its input comes from the parent DAG
    assert deps["pretrain"] == {"tokenize-visual"}
    assert deps["evaluate"] == {"finetune"} and deps["register"] == {"evaluate", "finetune"}
    # the two branches: pretrain here, or fine-tune from pretrained_model_uri
    conditions = sorted(t["triggerPolicy"]["condition"] for t in tasks.values()
                        if "condition" in t.get("triggerPolicy", {}))
    assert conditions == [
        "!(inputs.parameter_values['pipelinechannel--pretrained_model_uri'] == '')",
        "inputs.parameter_values['pipelinechannel--pretrained_model_uri'] == ''",
        "inputs.parameter_values['pipelinechannel--pretrained_model_uri'] == ''",  # the inner group (full.py)
    ]
    loops = [t for t in tasks.values() if "parameterIterator" in t]
    assert len(loops) == 2
    # fine-tuning waits for pretraining in the first branch (through the "pretrained model" group)
    (group,) = [name for name, d in deps.items() if d == {"pretrain"}]
    assert any(t.startswith("for-loop-") for t in spec["components"][f"comp-{group}"]["dag"]["tasks"])
    for loop in loops:
        assert loop["parameterIterator"]["items"]["inputParameter"].endswith("tasks")
        assert loop["iteratorPolicy"]["parallelismLimit"] == full.FINETUNE_PARALLELISM


def test_every_task_is_cached_and_runs_the_image_parameter(compiled):
    spec, _ = compiled
    for name, task in _all_tasks(spec).items():
        if "componentRef" in task and task["componentRef"]["name"].startswith("comp-") and "dag" not in spec[
            "components"
        ][task["componentRef"]["name"]]:
            # the exit handler must run in every run, so it is the one step never served from the cache
            expected = {} if name == "delete-training-jobs" else {"enableCache": True}
            assert task["cachingOptions"] == expected, name
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        assert "pip install" not in " ".join(container["command"]), name  # the image already holds kfp
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == full.IMAGE


def test_s3_secret_on_every_task_and_no_credentials_in_the_yaml(compiled):
    spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, cfg in executors.items():
        envs = {k["envVar"]: (s["secretName"], s["optional"]) for s in cfg["secretAsEnv"] for k in s["keyToEnv"]}
        # beit3-s3 where the namespace has one; else the Secret a Kubeflow profile already has (its keys are
        # `accesskey` / `secretkey`: kubeflow/manifests pipelines-profile-controller/sync.py), both optional
        # so a pod starts with either
        assert envs == {
            "AWS_ACCESS_KEY_ID": ("beit3-s3", True),
            "AWS_SECRET_ACCESS_KEY": ("beit3-s3", True),
            "AWS_ENDPOINT_URL": ("beit3-s3", True),
            "AWS_DEFAULT_REGION": ("beit3-s3", True),
            "KFP_S3_ACCESS_KEY": ("mlpipeline-minio-artifact", True),
            "KFP_S3_SECRET_KEY": ("mlpipeline-minio-artifact", True),
        }, name
        keys = {k["secretKey"]: k["envVar"] for s in cfg["secretAsEnv"] for k in s["keyToEnv"]
                if s["secretName"] == "mlpipeline-minio-artifact"}
        assert keys == {"accesskey": "KFP_S3_ACCESS_KEY", "secretkey": "KFP_S3_SECRET_KEY"}, name
    for executor in spec["deploymentSpec"]["executors"].values():
        for env in executor["container"].get("env", []):
            assert not env["name"].startswith("AWS_"), env
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if "secret" in p.lower() or "key" in p.lower() or "password" in p.lower()]


def test_gpu_steps_request_gpus_with_placement_and_the_launcher_step_does_not(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # GPU count, accelerator, node selector and tolerations are run parameters, resolved by the driver
    # (tests/test_cluster_jobs_pipeline.py covers gpus_per_step=0)
    for name in ("exec-tokenize-visual", "exec-finetune", "exec-finetune-2", "exec-evaluate", "exec-evaluate-2"):
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc == {"resourceType": "{{$.inputs.parameters['pipelinechannel--gpu-placement-accelerator_type']}}",
                       "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpus_per_step']}}"}, name
        assert k8s[name]["nodeSelector"] == {
            "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu-placement-node_selector"}}
        assert k8s[name]["tolerations"] == [
            {"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu-placement-tolerations"}}]
        assert {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory"} in k8s[name]["emptyDirMounts"]
    for name in ("exec-pretrain", "exec-validate-data", "exec-register"):
        assert "accelerator" not in executors[name]["container"]["resources"], name
        assert "tolerations" not in k8s[name]
    assert k8s["exec-pretrain"]["fieldPathAsEnv"] == [
        {"name": "NAMESPACE", "fieldPath": "metadata.namespace"},
        {"name": "POD_NAME", "fieldPath": "metadata.name"},
        {"name": "POD_UID", "fieldPath": "metadata.uid"},
        {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"},
    ]


def test_pipeline_parameters(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("dataset_uri", "dvc_repo", "dvc_rev", "arch", "replicas", "gpus_per_replica", "tasks",
                 "pretrained_model_uri", "launcher_backend"):
        assert name in params, name
    assert params["launcher_backend"]["defaultValue"] == "pytorchjob"
    assert [t["task"] for t in params["tasks"]["defaultValue"]] == [t["task"] for t in full.DEFAULT_TASKS]


def test_component_modules_import_only_kfp_at_top_level_and_call_a_stage_main():
    for path in COMPONENT_FILES:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                continue
            assert all(n.split(".")[0] in ("kfp", "components", "typing") for n in names), (path, names)
        (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        body_imports = {n.module for n in ast.walk(func) if isinstance(n, ast.ImportFrom)}
        assert body_imports & {"beit3core.data", "beit3core.tokenizers", "beit3train", "beit3ops"}, path
        calls = [n for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        assert any(c.func.attr in ("run_stage", "launch") for c in calls), path
