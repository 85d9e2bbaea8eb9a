"""The job launcher: spec builders (validated against the strictified CRDs), the watch loop against a fake
CustomObjectsApi (success, failure with the job's reason, timeout -> delete, cancel -> delete), the local
torchrun back-end's process handling, and the `beit3 launch` CLI."""

from __future__ import annotations

import logging
import signal
import sys

import pytest
import yaml

from beit3core.errors import UserError
from beit3ops import k8s_schema
from beit3ops.launch import cli, local, specs, watch
from beit3ops.launch.config import (
    NAME_RE,
    JobCancelled,
    JobFailed,
    JobTimeout,
    LaunchConfig,
    job_name,
)
from beit3ops.launch.watch import JobWatcher


def _cfg(**kw) -> LaunchConfig:
    base = {
        "step": "pretrain",
        "args": ("--data", "s3://bucket/data", "--steps", "10"),
        "name": "beit3-pretrain-abc",
        "namespace": "ml",
        "image": "registry.example/beit3:1",
        "replicas": 3,
        "nproc_per_node": 4,
        "gpus_per_node": 4,
        "node_selector": (("nvidia.com/gpu.product", "H100"),),
    }
    base.update(kw)
    return LaunchConfig(**base)


# ------------------------------------------------------------------------------------------ spec builders


def test_pytorchjob_has_master_workers_gpus_shm_and_torchrun():
    job = specs.build_job(_cfg(), "pytorchjob")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4"  # a string in v1
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for rspec in replicas.values():
        pod = rspec["template"]
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        (c,) = pod["spec"]["containers"]
        assert c["name"] == "pytorch" and c["image"] == "registry.example/beit3:1"
        assert c["command"][:4] == ["torchrun", "--nproc-per-node=4", "-m", "beit3train.pretrain"]
        assert c["command"][4:] == ["--data", "s3://bucket/data", "--steps", "10"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["spec"]["volumes"]
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        # S3 credentials only as references to the Secret, never as values
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "beit3-s3", "key": key, "optional": False}


def test_single_replica_has_no_worker_and_cpu_job_has_no_gpu():
    job = specs.build_job(_cfg(replicas=1, gpus_per_node=0, nproc_per_node=2, cpu="4", memory="8Gi"))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert list(replicas) == ["Master"]
    c = replicas["Master"]["template"]["spec"]["containers"][0]
    # cpu and memory requested (quota admission), memory limited, no cpu limit unless asked for
    assert c["resources"] == {"limits": {"memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}}
    assert "tolerations" not in replicas["Master"]["template"]["spec"]


def test_trainjob_validates_and_carries_the_same_command():
    job = specs.build_job(_cfg(), "trainjob")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4  # an integer in v2
    assert trainer["command"] == _cfg().command()
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pod_spec["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_a_typo_in_a_generated_job_fails_validation(backend):
    job = specs.build_job(_cfg(), backend)
    if backend == "pytorchjob":
        job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    else:
        job["spec"]["trainer"]["numProcsPerNode"] = 4
    with pytest.raises(UserError, match="was unexpected"):
        k8s_schema.validate(job)


def test_wrong_types_fail_validation():
    job = specs.build_pytorchjob(_cfg())
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    job["spec"]["nprocPerNode"] = 4
    errors = k8s_schema.validation_errors(job)
    assert any("replicas: 'two' is not of type 'integer'" in e for e in errors)
    assert any(e.startswith("spec.nprocPerNode: 4 is not of type 'string'") for e in errors)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["pytorchReplicaSpecs"]["Master"].__setitem__("replicas", 2), "Master.replicas: must be exactly 1"),
        (
            lambda s: s["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].__setitem__("name", "main"),
            "Worker: needs a container named 'pytorch'",
        ),
        (lambda s: s["pytorchReplicaSpecs"].__setitem__("Chief", s["pytorchReplicaSpecs"]["Worker"]), "Chief: replica type"),
        (lambda s: s["runPolicy"].__setitem__("cleanPodPolicy", "Sometimes"), "cleanPodPolicy: 'Sometimes'"),
        (lambda s: s.__setitem__("nprocPerNode", "eight"), "nprocPerNode: 'eight'"),
    ],
)
def test_webhook_rules_the_schema_cannot_express(mutate, expected):
    job = specs.build_pytorchjob(_cfg())
    assert k8s_schema.schema_errors(job) == []
    mutate(job["spec"])
    errors = k8s_schema.validation_errors(job)
    assert any(expected in e for e in errors), errors


def test_upstream_minimal_example_passes_and_strictify_leaves_preserved_nodes_open():
    example = yaml.safe_load(
        """
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata: {name: beit3-pretrain}
spec:
  nprocPerNode: "8"
  runPolicy: {cleanPodPolicy: Running, backoffLimit: 3, ttlSecondsAfterFinished: 3600}
  pytorchReplicaSpecs:
    Master: {replicas: 1, restartPolicy: OnFailure, template: {spec: {containers: [{name: pytorch, image: IMG}]}}}
    Worker: {replicas: 3, restartPolicy: OnFailure, template: {spec: {containers: [{name: pytorch, image: IMG}]}}}
"""
    )
    assert k8s_schema.validation_errors(example) == []
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "string"}}},
            "b": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"y": {}}},
            "c": {"type": "string", "enum": [{"properties": {}}]},
        },
    }
    strict = k8s_schema.strictify(schema)
    assert strict["additionalProperties"] is False and strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["b"]
    assert strict["properties"]["c"]["enum"] == [{"properties": {}}]
    assert "additionalProperties" not in schema  # the input is not modified


def test_unknown_kind_is_reported():
    assert "unknown custom resource" in k8s_schema.validation_errors({"apiVersion": "v1", "kind": "Pod"})[0]


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"name": "Beit3_Pretrain"}, "--name"),
        ({"replicas": 0}, "--replicas"),
        ({"nproc_per_node": -1}, "--nproc-per-node"),
        ({"memory": "lots"}, "--memory"),
        ({"queue_name": "team queue"}, "--queue-name"),
        ({"step": "tokenize"}, "step"),
        ({"env": (("AWS_SECRET_ACCESS_KEY", "x"),)}, "--env AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_settings_are_user_errors_naming_the_flag(kw, flag):
    with pytest.raises(UserError, match=flag):
        _cfg(**kw)


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_deadline_and_owner_pod_make_jobs_go_away_without_the_watcher(backend, monkeypatch):
    monkeypatch.setenv("POD_NAME", "beit3-full-abc-pretrain-123")
    monkeypatch.setenv("POD_UID", "0f1e2d3c-aaaa-bbbb-cccc-000000000001")
    job = specs.build_job(_cfg(active_deadline_seconds=3600, owner_pod=watch.pod_owner()), backend)
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "v1", "kind": "Pod", "name": "beit3-full-abc-pretrain-123",
                   "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001", "controller": False, "blockOwnerDeletion": False}
    deadline = job["spec"]["runPolicy"] if backend == "pytorchjob" else job["spec"]
    assert deadline["activeDeadlineSeconds"] == 3600
    monkeypatch.delenv("POD_UID")
    assert watch.pod_owner() is None
    assert "ownerReferences" not in specs.build_job(_cfg(), backend)["metadata"]


def test_cluster_jobs_need_an_image():
    with pytest.raises(UserError, match="--image"):
        specs.build_job(_cfg(image=""), "pytorchjob")


def test_job_name_is_a_dns_label():
    name = job_name("beit3-pretrain", "3F2A9C1E-7B6D-4C2A-9E1F-0A1B2C3D4E5F")
    assert name == "beit3-pretrain-3f2a9c1e-7b6"
    assert NAME_RE.match(name) and len(name) <= 50
    assert NAME_RE.match(job_name("9x", "")) is not None


# ------------------------------------------------------------------------------------------ watch loop


class ApiError(Exception):
    """Stands in for kubernetes.client.ApiException: the watcher only reads `.status`."""

    def __init__(self, status, reason=""):
        super().__init__(f"({status}) {reason}")
        self.status = status


def _cond(type_, status="True", reason="", message="", t="2026-01-01T00:00:00Z"):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": t}


class FakeCustomObjectsApi:
    """A scripted CustomObjectsApi: each get returns the next status (the last one repeats)."""

    def __init__(self, statuses, *, create_error=None, on_get=None):
        self.statuses = list(statuses)
        self.create_error = create_error
        self.on_get = on_get
        self.created, self.deleted, self.gets = [], [], 0
        self.objects = {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body["metadata"]["name"]))
        if self.create_error:
            raise self.create_error
        self.objects[body["metadata"]["name"]] = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        if self.on_get:
            self.on_get(self.gets)
        step = self.statuses[min(self.gets - 1, len(self.statuses) - 1)]
        if isinstance(step, Exception):
            raise step
        return {"metadata": {"name": name}, "status": {"conditions": step}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deleted.append((group, version, namespace, plural, name, kw.get("propagation_policy")))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def _watcher(api, backend="pytorchjob", timeout_s=100.0):
    clock = FakeClock()
    return JobWatcher(api, backend, timeout_s=timeout_s, poll_s=10, clock=clock, sleep=clock.sleep), clock


def test_watch_success_logs_each_condition_once(caplog):
    created = _cond("Created", reason="PyTorchJobCreated", message="job created")
    running = _cond("Running", reason="PyTorchJobRunning", t="2026-01-01T00:01:00Z")
    done = _cond("Succeeded", reason="PyTorchJobSucceeded", message="finished", t="2026-01-01T00:02:00Z")
    api = FakeCustomObjectsApi([[], [created], [created, running], [created, running], [created, running, done]])
    watcher, clock = _watcher(api)
    job = specs.build_job(_cfg())
    with caplog.at_level(logging.INFO, logger="beit3ops.launch"):
        obj = watcher.run(job)
    assert obj["status"]["conditions"][-1]["type"] == "Succeeded"
    assert api.created == [("kubeflow.org", "v1", "ml", "pytorchjobs", "beit3-pretrain-abc")]
    assert api.deleted == [] and api.gets == 5 and clock.now == 40
    text = caplog.text
    for reason in ("PyTorchJobCreated", "PyTorchJobRunning", "PyTorchJobSucceeded"):
        assert text.count(reason) == 1, text


def test_watch_failure_raises_the_jobs_own_reason_and_keeps_the_job():
    failed = _cond("Failed", reason="PyTorchJobFailed", message="pod beit3-pretrain-abc-worker-1 exited with code 137")
    api = FakeCustomObjectsApi([[_cond("Running")], [_cond("Running"), failed]])
    watcher, _ = _watcher(api)
    with pytest.raises(JobFailed, match=r"PyTorchJobFailed: pod beit3-pretrain-abc-worker-1 exited with code 137"):
        watcher.run(specs.build_job(_cfg()))
    assert api.deleted == []  # kept for inspection; ttlSecondsAfterFinished cleans it up


def test_watch_timeout_deletes_the_job():
    api = FakeCustomObjectsApi([[_cond("Created")], [_cond("Created"), _cond("Running")]])
    watcher, clock = _watcher(api, timeout_s=35)
    with pytest.raises(JobTimeout, match="did not finish within 35 s"):
        watcher.run(specs.build_job(_cfg()))
    assert clock.now == 40
    assert api.deleted == [("kubeflow.org", "v1", "ml", "pytorchjobs", "beit3-pretrain-abc", "Background")]


def test_sigterm_cancels_and_deletes_the_job():
    def cancel_on_third_poll(n):
        if n == 3:
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    api = FakeCustomObjectsApi([[_cond("Running")]], on_get=cancel_on_third_poll)
    watcher, _ = _watcher(api, "trainjob")
    with pytest.raises(JobCancelled, match="SIGTERM"):
        watcher.run(specs.build_job(_cfg(), "trainjob"))
    assert api.deleted == [("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", "beit3-pretrain-abc", "Background")]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored


def test_trainjob_complete_is_success_and_failed_false_is_not_failure():
    api = FakeCustomObjectsApi([[_cond("Failed", status="False")], [_cond("Complete", reason="JobsCompleted")]])
    watcher, _ = _watcher(api, "trainjob")
    assert watcher.run(specs.build_job(_cfg(), "trainjob"))["status"]["conditions"][0]["type"] == "Complete"


def test_existing_job_is_followed_and_transient_errors_are_retried():
    api = FakeCustomObjectsApi(
        [ApiError(500), ApiError(503), [_cond("Succeeded")]], create_error=ApiError(409, "AlreadyExists")
    )
    watcher, _ = _watcher(api)
    watcher.run(specs.build_job(_cfg()))
    assert api.gets == 3 and api.deleted == []


def test_persistent_api_errors_and_vanished_jobs_fail():
    api = FakeCustomObjectsApi([ApiError(500)])
    watcher, _ = _watcher(api)
    with pytest.raises(ApiError):
        watcher.run(specs.build_job(_cfg()))
    assert api.gets == watcher.max_api_errors
    api = FakeCustomObjectsApi([[_cond("Running")], ApiError(404)])
    watcher, _ = _watcher(api)
    with pytest.raises(JobFailed, match="disappeared"):
        watcher.run(specs.build_job(_cfg()))


def test_create_errors_other_than_conflict_propagate():
    api = FakeCustomObjectsApi([[]], create_error=ApiError(403, "Forbidden"))
    watcher, _ = _watcher(api)
    with pytest.raises(ApiError, match="403"):
        watcher.run(specs.build_job(_cfg()))
    assert api.gets == 0


def test_launch_uses_the_given_api():
    api = FakeCustomObjectsApi([[_cond("Succeeded")]])
    obj = cli.launch(_cfg(), "pytorchjob", api=api, poll_s=0)
    assert obj["status"]["conditions"][0]["type"] == "Succeeded"
    assert api.objects["beit3-pretrain-abc"]["kind"] == "PyTorchJob"


# ------------------------------------------------------------------------------------------ local back-end


def test_local_command_is_torchrun_standalone():
    cmd = local.local_command(_cfg(nproc_per_node=2))
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:7] == ["-m", "beit3train.pretrain"] and cmd[7:] == list(_cfg().args)


def _fake_local(monkeypatch, code):
    monkeypatch.setattr(local, "local_command", lambda cfg: [sys.executable, "-c", code])


def test_local_success_failure_and_timeout(monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    _fake_local(monkeypatch, f"import os; open({str(marker)!r}, 'w').write(os.environ['EXTRA'])")
    local.run_local(_cfg(env=(("EXTRA", "yes"),)))
    assert marker.read_text() == "yes"

    _fake_local(monkeypatch, "import sys; sys.exit(3)")
    with pytest.raises(JobFailed, match="status 3"):
        local.run_local(_cfg())

    _fake_local(monkeypatch, "import time; time.sleep(60)")
    with pytest.raises(JobTimeout):
        local.run_local(_cfg(), timeout_s=0.5)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_dry_run_prints_a_valid_job(capsys):
    rc = cli.main(
        ["finetune", "--backend", "pytorchjob", "--dry-run", "--name", "ft-1", "--image", "reg/beit3:1", "--namespace", "ml", "--replicas", "2",
         "--gpus-per-node", "1", "--toleration", "dedicated=ml:NoSchedule", "--", "--task", "vqa"]
    )
    assert rc == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert k8s_schema.validation_errors(job) == []
    c = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert c["command"][-4:] == ["-m", "beit3train.finetune", "--task", "vqa"]
    tol = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in tol


def test_cli_reports_a_failed_job(monkeypatch, capsys):
    def fail(cfg, backend, **kw):
        raise JobFailed("PyTorchJob ml/x failed: OOMKilled: worker-0")

    monkeypatch.setattr(cli, "launch", fail)
    assert cli.main(["pretrain", "--namespace", "ml", "--", "--steps", "1"]) == 1
    assert "OOMKilled: worker-0" in capsys.readouterr().err


def test_cli_bad_flag_value_is_a_user_error():
    with pytest.raises(UserError, match="--replicas 0"):
        cli.main(["pretrain", "--replicas", "0", "--dry-run"])
