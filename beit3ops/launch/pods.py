"""The pods of a training job, read through the Kubernetes core API: why a job has not started yet (the
cluster's own reasons), which pod is the master, and its log streamed into this process's output.

A job is found by the `beit3.dev/job` label that `specs` puts on every pod template. The reasons are the ones
Kubernetes reports: the scheduler's `PodScheduled=False` condition (`Unschedulable`: "0/4 nodes are
available: 4 Insufficient nvidia.com/gpu"), the kubelet's container `waiting` state (`ImagePullBackOff`,
`ErrImagePull`, `CreateContainerConfigError`, ...), and the controllers' Warning events when they cannot
create pods (`FailedCreatePod` from the Training Operator, `FailedCreate` from the Job controller under a
JobSet, e.g. "exceeded quota" or "must specify requests.cpu").
"""

from __future__ import annotations

import json
import logging
import sys
import threading

from beit3ops.launch.config import LABEL_JOB

log = logging.getLogger(__name__)

# The container that runs torchrun: PyTorchJob requires `pytorch`, the torch-distributed runtime names it `node`.
MAIN_CONTAINER = {"pytorchjob": "pytorch", "trainjob": "node"}


class CoreApi:
    """The three core-API reads the watcher needs, as plain dicts (API field names), over a
    `kubernetes.client.CoreV1Api`. Tests stand in a fake with the same methods."""

    def __init__(self, core):
        self.core = core

    def pods(self, namespace: str, job: str) -> list[dict]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={job}", _preload_content=False)
        return json.loads(resp.data).get("items") or []

    def warning_events(self, namespace: str) -> list[dict]:
        resp = self.core.list_namespaced_event(namespace, field_selector="type=Warning", _preload_content=False)
        return json.loads(resp.data).get("items") or []

    def log_lines(self, namespace: str, pod: str, container: str):
        resp = self.core.read_namespaced_pod_log(pod, namespace, container=container, follow=True,
                                                 _preload_content=False)
        pending = b""
        for chunk in resp.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")


def pod_started(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def pod_waiting_reasons(pod: dict) -> list[str]:
    """Why a pod is not running: unschedulable, or a container waiting on something other than its start."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    reasons = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reasons.append(f"pod {name}: {cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": "))
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            reasons.append(f"pod {name} container {cs.get('name')}: {reason}: {waiting.get('message', '')}".rstrip(": "))
    return reasons


def job_event_reasons(events: list[dict], job: str) -> list[str]:
    """Warning events about the job or the objects its controller made (`<job>-...`), oldest first."""
    picked = []
    for ev in events:
        obj = ev.get("involvedObject") or {}
        if obj.get("name") == job or str(obj.get("name", "")).startswith(f"{job}-"):
            when = ev.get("lastTimestamp") or ev.get("eventTime") or ""
            picked.append((when, f"{obj.get('kind', '?')} {obj.get('name')}: {ev.get('reason')}: {ev.get('message', '')}"))
    return [text for _, text in sorted(picked, key=lambda p: p[0])]


def is_master(pod: dict) -> bool:
    """Rank 0's pod: the PyTorchJob Master replica, or index 0 of the TrainJob's first replicated job."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if "training.kubeflow.org/replica-type" in labels:
        return labels["training.kubeflow.org/replica-type"].lower() == "master"
    return labels.get("jobset.sigs.k8s.io/job-index", "0") == "0" and \
        labels.get("batch.kubernetes.io/job-completion-index", "0") == "0"


class LogFollower:
    """Streams the master pod's log into this process's stdout (the KFP step's log), one thread per
    container run; a restarted container (new pod, or a higher restartCount) is followed again."""

    def __init__(self, core: CoreApi, namespace: str, container: str, out=None):
        self.core, self.namespace, self.container = core, namespace, container
        self.out = out or sys.stdout
        self._followed: set[tuple] = set()
        self._thread: threading.Thread | None = None

    def poll(self, pods: list[dict]) -> None:
        """Start following the running master pod unless it is followed already."""
        if self._thread is not None and self._thread.is_alive():
            return
        for pod in pods:
            if not is_master(pod) or (pod.get("status") or {}).get("phase") != "Running":
                continue
            meta = pod.get("metadata") or {}
            restarts = sum(cs.get("restartCount", 0) for cs in (pod.get("status") or {}).get("containerStatuses") or [])
            key = (meta.get("uid") or meta.get("name"), restarts)
            if key in self._followed:
                return
            self._followed.add(key)
            self._thread = threading.Thread(target=self._follow, args=(meta.get("name"),), daemon=True)
            self._thread.start()
            return

    def _follow(self, pod: str) -> None:
        try:
            for line in self.core.log_lines(self.namespace, pod, self.container):
                print(f"[{pod}] {line}", file=self.out, flush=True)
        except Exception as exc:  # noqa: BLE001 - a broken stream must not end the watch; the job status decides
            log.warning("log stream of %s ended: %s", pod, exc)

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
