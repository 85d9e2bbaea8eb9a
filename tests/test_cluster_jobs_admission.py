"""Training jobs against the admission rules a real cluster enforces (no API server can run here, so a fake
applies the upstream rules to the pods the operators would create from our jobs):

* Kubernetes defaulting (`pkg/apis/core/v1/defaults.go` SetDefaults_Pod: a limit without a request sets the
  request) and ResourceQuota admission (`pkg/quota/v1/evaluator/core/pods.go` Constraints /
  enforcePodContainerConstraints / podComputeUsageHelper): under a quota on requests.cpu, requests.memory or
  limits.memory every container must set that field, else "failed quota: ...: must specify ...";
* the Trainer v2.2+ TrainJob webhook (kubeflow/trainer `pkg/runtime/framework/plugins/jobset/jobset.go`
  ValidateObjects: `validation.IsDomainPrefixedPath` on `runtimePatches[].manager`), and `runtimePatches`
  existing only from Trainer v2.2;
* processes per GPU (torchrun `--nproc-per-node`, PyTorchJob `nprocPerNode`, TrainJob `numProcPerNode`);
* the launch CLI's one-line errors (exit status 2) and the Kueue queue label.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beit3core.errors import UserError, run_main
from beit3ops import k8s_schema
from beit3ops.launch import cli, specs
from beit3ops.launch.config import LaunchConfig

ROOT = Path(__file__).resolve().parents[1]
# pods.go: the quota-tracked compute resources every container must declare when a quota names them
VALIDATION_SET = {"requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "cpu", "memory"}


def _quota_hard() -> dict:
    """The `spec.hard` of the ResourceQuota that manifests/ ships (every overlay includes it)."""
    quotas = [d for p in sorted((ROOT / "manifests").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
              if isinstance(d, dict) and d.get("kind") == "ResourceQuota"]
    assert quotas, "manifests/ ships no ResourceQuota"
    return quotas[0]["spec"]["hard"]


class QuotaRefused(Exception):
    pass


def _default(container: dict) -> dict:
    """SetDefaults_Pod: for each resource with a limit and no request, the request is the limit."""
    c = copy.deepcopy(container)
    res = c.setdefault("resources", {})
    limits, requests = res.get("limits") or {}, res.setdefault("requests", {})
    for name, value in limits.items():
        requests.setdefault(name, value)
    return c


def admit_under_quota(pod_spec: dict, hard: dict) -> None:
    """ResourceQuota admission of one pod (pods.go Constraints): raise QuotaRefused like the API server."""
    required = set(hard) & VALIDATION_SET
    missing = set()
    for container in (pod_spec.get("initContainers") or []) + pod_spec["containers"]:
        res = _default(container)["resources"]
        usage = set()
        for name in (res.get("requests") or {}):
            if name in ("cpu", "memory"):
                usage |= {name, f"requests.{name}"}
        for name in (res.get("limits") or {}):
            if name in ("cpu", "memory"):
                usage.add(f"limits.{name}")
        missing |= required - usage
    if missing:
        raise QuotaRefused(f"failed quota: beit3-quota: must specify {','.join(sorted(missing))}")


def pods_of(job: dict) -> list[dict]:
    """The pod specs the operator creates: a PyTorchJob's replica templates as they are; for a TrainJob, the
    torch-distributed runtime's `node` container with the TrainJob's trainer settings and runtime patch."""
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    trainer = job["spec"]["trainer"]
    node = {"name": "node", "image": trainer["image"], "command": trainer["command"],
            "resources": trainer.get("resourcesPerNode") or {}}
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    patched = patch["template"]["spec"]["template"]["spec"]
    node["volumeMounts"] = patched["containers"][0].get("volumeMounts", [])
    return [{**{k: v for k, v in patched.items() if k != "containers"}, "containers": [node]}]


def _cfg(**kw) -> LaunchConfig:
    base = {"name": "beit3-pretrain-x", "namespace": "ml", "image": "reg/beit3:1", "replicas": 2,
            "gpus_per_node": 8, "args": ("--out", "s3://b/run")}
    base.update(kw)
    return LaunchConfig(**base)


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_training_pods_are_admitted_under_the_namespace_quota(backend):
    """Upstream: kubernetes pkg/quota/v1/evaluator/core/pods.go (Constraints). Before the fix a job with
    only GPU limits (no cpu/memory) was refused: "must specify limits.memory,requests.cpu,requests.memory"."""
    hard = _quota_hard()
    assert set(hard) & VALIDATION_SET, "the quota tracks compute resources"
    job = specs.build_job(_cfg(), backend)  # the defaults, nothing given for cpu or memory
    for pod in pods_of(job):
        admit_under_quota(pod, hard)
        (c,) = pod["containers"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"]
    # the rule itself: the same pod without cpu/memory is refused
    bare = copy.deepcopy(pods_of(job)[0])
    bare["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "8"}}
    with pytest.raises(QuotaRefused, match="must specify limits.memory,requests.cpu,requests.memory"):
        admit_under_quota(bare, hard)


def test_cpu_and_memory_are_settings_and_quantities_are_checked():
    job = specs.build_job(_cfg(cpu="16", memory="128Gi", cpu_limit="32", ephemeral_storage="200Gi"))
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "16", "memory": "128Gi", "ephemeral-storage": "200Gi"},
                              "limits": {"memory": "128Gi", "cpu": "32", "ephemeral-storage": "200Gi",
                                         "nvidia.com/gpu": "8"}}
    with pytest.raises(UserError, match="--cpu '8 cores'"):
        _cfg(cpu="8 cores")


@pytest.mark.parametrize(
    "manager, ok",
    [
        # apimachinery validation_test.go TestIsDomainPrefixedPath cases
        ("a/b", True), ("a/b/c/d", True), ("a.com/foo", True), ("a.b.c.d/foo", True), ("beit3.dev/launcher", True),
        ("a.b.c.d/foo/bar%20", True),
        ("beit3.launcher", False), ("a", False), ("/b", False), ("a/", False), ("-a/b", False), ("A.com/b", False),
        ("a.com/b c", False), ("", False),
    ],
)
def test_runtime_patch_manager_must_be_a_domain_prefixed_path(manager, ok):
    """Upstream: kubeflow/trainer v2.2.0 pkg/runtime/framework/plugins/jobset/jobset.go l.129
    (IsDomainPrefixedPath); the CRD schema does not see it, so schema validation alone let `beit3.launcher` by."""
    job = specs.build_trainjob(_cfg())
    assert job["spec"]["runtimePatches"][0]["manager"] == specs.PATCH_MANAGER
    assert k8s_schema.validation_errors(job) == []
    job["spec"]["runtimePatches"][0]["manager"] = manager
    errors = k8s_schema.trainjob_rule_errors(job)
    assert (errors == []) is ok, errors
    assert (k8s_schema.schema_errors(job) == []) or not manager  # the schema has no opinion on the value


def test_trainjob_webhook_refuses_env_on_node_and_unknown_containers():
    """Upstream: jobset.go ValidateObjects (containers of a patch must exist in the runtime job; no env on `node`)."""
    job = specs.build_trainjob(_cfg())
    assert "env" not in job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    pod["containers"].append({"name": "sidecar"})
    errors = k8s_schema.trainjob_rule_errors(job)
    assert any("must not have envs" in e for e in errors) and any("'sidecar'" in e for e in errors), errors


@pytest.mark.parametrize("version, ok", [("2.2", True), ("v2.2.1", True), ("2.3.0", True), ("v2.10", True),
                                         ("2.1", False), ("v2.0.1", False), ("1.9", False), ("two", False)])
def test_trainer_versions_without_runtime_patches_are_refused(version, ok, capsys):
    """Upstream: kubeflow/trainer pkg/apis/trainer/v1alpha1/trainjob_types.go gains `runtimePatches` in
    v2.2.0 (v2.0 podSpecOverrides, v2.1 podTemplateOverrides): an older cluster would prune the field."""
    argv = ["pretrain", "--backend", "trainjob", "--dry-run", "--image", "reg/beit3:1", "--namespace", "ml",
            "--trainer-version", version, "--", "--out", "s3://b/r"]
    rc = run_main(cli.main, argv)
    err = capsys.readouterr().err
    if ok:
        assert rc == 0, err
    else:
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --trainer-version"), err


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob", "local"])
def test_one_process_per_gpu_by_default(backend, capsys):
    """`beit3 launch --gpus-per-node 8` started one process per node before; torchrun needs
    --nproc-per-node = GPUs (the Training Operator passes PET_NPROC_PER_NODE from nprocPerNode)."""
    argv = ["pretrain", "--backend", backend, "--dry-run", "--image", "reg/beit3:1", "--namespace", "ml",
            "--gpus-per-node", "8", "--", "--out", "s3://b/r"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    if backend == "local":
        assert "--nproc-per-node=8" in out.split()
        return
    job = yaml.safe_load(out)
    if backend == "pytorchjob":
        assert job["spec"]["nprocPerNode"] == "8"
        command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    else:
        assert job["spec"]["trainer"]["numProcPerNode"] == 8
        command = job["spec"]["trainer"]["command"]
    assert "--nproc-per-node=8" in command
    assert LaunchConfig(gpus_per_node=0).nproc_per_node == 1 and LaunchConfig(gpus_per_node=2, nproc_per_node=1)\
        .nproc_per_node == 1  # CPU: 1; an explicit value wins


def test_pods_restart_on_failure_and_kueue_labels_are_an_option(capsys):
    """PyTorchJob runPolicy.backoffLimit > 0 (training-operator release-1.9 common_types.go: restarts of
    failed pods); Kueue admits a job by the `kueue.x-k8s.io/queue-name` label (kueue pkg/controller/constants)."""
    argv = ["pretrain", "--dry-run", "--image", "reg/beit3:1", "--namespace", "ml", "--replicas", "4",
            "--gpus-per-node", "8", "--queue-name", "team-a", "--", "--out", "s3://b/r"]
    assert cli.main(argv) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/queue-name" not in specs.build_job(_cfg())["metadata"]["labels"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--timeout", "-5"], "error: beit3 launch: argument --timeout: '-5': must be a positive number of seconds"),
        (["--start-timeout", "0"], "error: beit3 launch: argument --start-timeout"),
        (["--toleration", "nvidia.com/gpu=a b:NoSchedule"], "error: beit3 launch: argument --toleration"),
        (["--toleration", ":NoSchedule"], "error: beit3 launch: argument --toleration"),
        (["--toleration", "gpu:Sometimes"], "'Sometimes': effect must be"),
        (["--memory", "64GB"], "error: --memory '64GB': not a Kubernetes quantity"),
    ],
)
def test_bad_launch_flags_are_one_line_exit_2(argv, message, capsys):
    rc = run_main(cli.main, ["pretrain", "--dry-run", "--image", "i", "--namespace", "ml", *argv, "--", "--out", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_cluster_launch_without_a_kubeconfig_is_one_line_exit_2(tmp_path):
    """No in-cluster service account and no kubeconfig: `launch --backend pytorchjob` said so in a traceback."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "beit3ops.launch.cli", "pretrain", "--backend", "pytorchjob",
                           "--image", "i", "--namespace", "ml", "--", "--out", "s3://b/r"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --backend: no Kubernetes cluster configured") and \
        proc.stderr.count("\n") == 1, proc.stderr
