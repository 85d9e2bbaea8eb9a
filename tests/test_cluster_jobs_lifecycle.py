"""Training jobs under failure, retry and cancellation, against a fake Kubernetes API (no API server can run
here) that keeps the upstream rules the launcher depends on:

* the API server: `create` of an existing name is 409 AlreadyExists; `list` filters by an equality label
  selector (k8s.io/apimachinery/pkg/labels); a deleted object is gone;
* the scheduler / kubelet report why a pod does not run in its status (PodScheduled=False reason
  Unschedulable; container state waiting reason ImagePullBackOff), and the controllers record Warning events
  on the job when they cannot create pods (training-operator `FailedCreatePod`, the Job controller
  `FailedCreate`, with the quota admission message);
* the pod log API streams the container's output.
"""

from __future__ import annotations

import io as stdio
import itertools
import logging

import pytest

from beit3core.errors import UserError
from beit3ops.launch import specs
from beit3ops.launch.config import JobFailed, JobNotStarted, LaunchConfig, job_name
from beit3ops.launch.watch import JobWatcher, delete_live_jobs


class ApiError(Exception):
    def __init__(self, status, reason=""):
        super().__init__(f"({status}) {reason}")
        self.status = status


def _matches(labels: dict, selector: str) -> bool:
    """Equality-based label selector `k=v,k2=v2` (apimachinery labels.Parse, the subset the launcher uses)."""
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",") if term))


class FakeCluster:
    """CustomObjectsApi for PyTorchJobs / TrainJobs plus the `pods.CoreApi` reads, over one in-memory store."""

    def __init__(self):
        self.objects: dict[tuple, dict] = {}  # (plural, namespace, name) -> object
        self.pod_store: dict[str, list[dict]] = {}  # job name -> pods
        self.events: list[dict] = []
        self.logs: dict[str, list[str]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.on_create = None  # hook: the "controller" that reacts to a new job

    # CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists")
        self.objects[key] = {**body, "status": {}}
        self.created.append(body["metadata"]["name"])
        if self.on_create:
            self.on_create(self, body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        try:
            return self.objects[(plural, namespace, name)]
        except KeyError:
            raise ApiError(404, "NotFound") from None

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        return {"items": [o for (p, ns, _), o in self.objects.items() if p == plural and ns == namespace
                          and _matches(o["metadata"].get("labels") or {}, label_selector)]}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        if self.objects.pop((plural, namespace, name), None) is None:
            raise ApiError(404, "NotFound")
        self.deleted.append(name)

    # pods.CoreApi
    def pods(self, namespace, job):
        return list(self.pod_store.get(job, []))

    def warning_events(self, namespace):
        return list(self.events)

    def log_lines(self, namespace, pod, container):
        yield from self.logs.get(pod, [])

    # helpers
    def set_conditions(self, name, *types, plural="pytorchjobs", namespace="ml"):
        self.objects[(plural, namespace, name)]["status"] = {
            "conditions": [{"type": t, "status": "True", "reason": f"Job{t}", "message": ""} for t in types]}


def _clock():
    t = itertools.count(0, 10)
    now = [0.0]

    def clock():
        return now[0]

    def sleep(s):
        now[0] = float(next(t) + s)

    return clock, sleep


def _watcher(cluster, backend="pytorchjob", **kw):
    clock, sleep = _clock()
    kw.setdefault("start_timeout_s", 60)
    return JobWatcher(cluster, backend, core=cluster, poll_s=10, clock=clock, sleep=sleep, **kw)


def _cfg(name, **kw) -> LaunchConfig:
    base = {"name": name, "namespace": "ml", "image": "reg/beit3:1", "gpus_per_node": 8, "replicas": 2,
            "args": ("--out", "s3://b/runs/pretrain/model"), "run_id": "run-1"}
    base.update(kw)
    return LaunchConfig(**base)


def _running_pod(name, job, *, master=True, phase="Running", restarts=0, uid=None):
    return {"metadata": {"name": name, "uid": uid or name,
                         "labels": {"beit3.dev/job": job,
                                    "training.kubeflow.org/replica-type": "master" if master else "worker"}},
            "status": {"phase": phase, "containerStatuses": [{"name": "pytorch", "restartCount": restarts}]}}


def test_each_attempt_gets_its_own_job_name():
    """Deterministic names made a retried step follow the failed job of the attempt before (409 on create)."""
    names = {job_name("beit3-pretrain") for _ in range(20)}
    assert len(names) == 20 and all(len(n) <= 50 for n in names)


def test_a_retry_adopts_the_live_job_of_the_same_output():
    cluster = FakeCluster()
    first = specs.build_job(_cfg("beit3-pretrain-a1"))
    cluster.create_namespaced_custom_object("kubeflow.org", "v1", "ml", "pytorchjobs", first)
    cluster.set_conditions("beit3-pretrain-a1", "Created", "Running")  # its launcher pod died, the job runs on
    cluster.pod_store["beit3-pretrain-a1"] = [_running_pod("beit3-pretrain-a1-master-0", "beit3-pretrain-a1")]

    def finish_on_third_poll(n=[0]):  # noqa: B006 - a counter across calls
        n[0] += 1
        if n[0] == 3:
            cluster.set_conditions("beit3-pretrain-a1", "Created", "Running", "Succeeded")

    watcher = _watcher(cluster)
    watcher.sleep = lambda s, _f=finish_on_third_poll: _f()
    obj = watcher.run(specs.build_job(_cfg("beit3-pretrain-a2")))  # the retry: a new name, the same output
    assert obj["metadata"]["name"] == "beit3-pretrain-a1"
    assert cluster.created == ["beit3-pretrain-a1"]  # no second job writing the same checkpoints


def test_a_retry_after_a_failed_job_starts_a_new_one():
    cluster = FakeCluster()
    cluster.create_namespaced_custom_object("kubeflow.org", "v1", "ml", "pytorchjobs",
                                            specs.build_job(_cfg("beit3-pretrain-a1")))
    cluster.set_conditions("beit3-pretrain-a1", "Created", "Failed")

    def controller(c, body):
        c.pod_store[body["metadata"]["name"]] = [_running_pod(f"{body['metadata']['name']}-master-0",
                                                         body["metadata"]["name"])]
        c.set_conditions(body["metadata"]["name"], "Created", "Running", "Succeeded")

    cluster.on_create = controller
    obj = _watcher(cluster).run(specs.build_job(_cfg("beit3-pretrain-a2")))
    assert obj["metadata"]["name"] == "beit3-pretrain-a2" and cluster.created == ["beit3-pretrain-a1",
                                                                                  "beit3-pretrain-a2"]
    # a job of another output (another run's step) is never adopted
    cluster.on_create = None
    cluster.set_conditions("beit3-pretrain-a2", "Created", "Running")
    other = specs.build_job(_cfg("beit3-pretrain-b1", args=("--out", "s3://b/other")))
    assert _watcher(cluster).adoptable(other) is None


@pytest.mark.parametrize(
    "pods, events, reason",
    [
        ([{"metadata": {"name": "j-master-0", "labels": {}}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}}],
         [], "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
        ([{"metadata": {"name": "j-master-0", "labels": {}}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "pytorch", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                      "message": 'Back-off pulling image "reg/beit3:1"'}}}]}}],
         [], 'container pytorch: ImagePullBackOff: Back-off pulling image "reg/beit3:1"'),
        ([], [{"involvedObject": {"kind": "PyTorchJob", "name": "j"}, "type": "Warning", "reason": "FailedCreatePod",
               "message": 'Error creating: pods "j-master-0" is forbidden: exceeded quota: beit3-quota, requested: '
                          'requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=0, limited: '
                          'requests.nvidia.com/gpu=0'}],
         "FailedCreatePod: Error creating: pods \"j-master-0\" is forbidden: exceeded quota"),
    ],
)
def test_a_job_that_does_not_start_fails_with_the_clusters_reason_and_is_deleted(pods, events, reason):
    cluster = FakeCluster()
    cluster.pod_store["j"] = pods
    cluster.events = events + [{"involvedObject": {"kind": "PyTorchJob", "name": "other"}, "type": "Warning",
                                "reason": "Noise", "message": "another job"}]
    watcher = _watcher(cluster, start_timeout_s=60)
    with pytest.raises(JobNotStarted, match="did not start within 60 s") as err:
        watcher.run(specs.build_job(_cfg("j")))
    assert reason in str(err.value) and "another job" not in str(err.value)
    assert cluster.deleted == ["j"]  # the quota and the pending pods are released
    assert isinstance(err.value, JobFailed)  # the step fails (exit status 1 from `beit3 launch`)


def test_a_slow_but_started_job_is_not_stopped_and_the_master_log_streams_into_the_step_log():
    cluster = FakeCluster()
    out = stdio.StringIO()
    polls = []

    def controller(c, body):
        c.pod_store["j"] = [_running_pod("j-worker-0", "j", master=False),
                       _running_pod("j-master-0", "j")]
        c.logs["j-master-0"] = ["step 1 loss 9.1", "step 2 loss 8.7"]
        c.logs["j-worker-0"] = ["worker noise"]
        c.set_conditions("j", "Created", "Running")

    def sleep(s):
        polls.append(s)
        if len(polls) == 20:  # long after start_timeout_s: running jobs are not limited by it
            cluster.set_conditions("j", "Created", "Running", "Succeeded")

    cluster.on_create = controller
    watcher = _watcher(cluster, start_timeout_s=30, log_out=out)
    watcher.sleep = sleep
    watcher.clock = lambda: 10.0 * len(polls)
    watcher.run(specs.build_job(_cfg("j")))
    assert out.getvalue().splitlines() == ["[j-master-0] step 1 loss 9.1", "[j-master-0] step 2 loss 8.7"]
    assert cluster.deleted == []


def test_the_exit_handler_deletes_only_the_runs_unfinished_jobs():
    cluster = FakeCluster()
    for name, run, done in (("a", "run-1", False), ("b", "run-1", True), ("c", "run-2", False)):
        cluster.create_namespaced_custom_object("kubeflow.org", "v1", "ml", "pytorchjobs",
                                                specs.build_job(_cfg(name, run_id=run)))
        cluster.set_conditions(name, "Created", "Succeeded" if done else "Running")
    cluster.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs",
                                            specs.build_job(_cfg("t", run_id="run-1"), "trainjob"))
    assert delete_live_jobs(cluster, "ml", "run-1") == ["PyTorchJob/a", "TrainJob/t"]
    assert sorted(n for _, _, n in cluster.objects) == ["b", "c"]
    with pytest.raises(UserError, match="run id"):
        delete_live_jobs(cluster, "ml", "")


def test_the_cleanup_component_needs_no_cluster_outside_a_run_and_deletes_inside_one(monkeypatch):
    from beit3ops.launch import watch
    from components.pretrain.cleanup import delete_training_jobs

    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    monkeypatch.setattr(watch, "kubernetes_apis", lambda: pytest.fail("no cluster access without a run id"))
    assert delete_training_jobs.python_func() == ""
    cluster = FakeCluster()
    cluster.create_namespaced_custom_object("kubeflow.org", "v1", "team", "pytorchjobs",
                                            specs.build_job(_cfg("live", namespace="team", run_id="run-9")))
    monkeypatch.setattr(watch, "kubernetes_apis", lambda: (cluster, None))
    monkeypatch.setenv("KFP_RUN_ID", "run-9")
    monkeypatch.setenv("NAMESPACE", "team")
    assert delete_training_jobs.python_func() == "PyTorchJob/live"


def test_without_rights_on_pods_and_events_the_job_conditions_still_decide(caplog):
    """An account without `list pods` / `list events` (403 from the API server's RBAC authorizer) loses the
    start check and the log stream, not the step."""
    cluster = FakeCluster()

    def forbidden(*a, **kw):
        raise ApiError(403, "Forbidden")

    cluster.pods = forbidden
    cluster.warning_events = forbidden

    def controller(c, body):
        c.set_conditions(body["metadata"]["name"], "Created")

    cluster.on_create = controller
    watcher = _watcher(cluster, start_timeout_s=0)
    watcher.sleep = lambda s: cluster.set_conditions("j", "Created", "Running", "Succeeded")
    with caplog.at_level(logging.WARNING, logger="beit3ops.launch"):
        obj = watcher.run(specs.build_job(_cfg("j")))
    assert obj["status"]["conditions"][-1]["type"] == "Succeeded"
    assert "cannot list the pods of ml/j" in caplog.text


def test_a_long_prefix_never_cuts_the_unique_part():
    """Kubernetes object names of a PyTorchJob/TrainJob are DNS-1035 labels (<= 63; ours <= 50 so the
    operator's pod names fit): a long step prefix is cut, the random part that tells attempts apart is kept."""
    names = {job_name("beit3-" + "x" * 60) for _ in range(20)}
    assert len(names) == 20 and all(len(n) <= 50 and n[0].isalpha() and not n.endswith("-") for n in names)
