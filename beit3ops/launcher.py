"""Run a training stage (`beit3 pretrain` / `beit3 finetune`) as a distributed job.

One job description (`LaunchConfig`), three back-ends:

* `pytorchjob` (default on a cluster): a Training Operator v1 `PyTorchJob` (kubeflow.org/v1) with one Master
  and `replicas - 1` Workers, `nprocPerNode` processes per pod, each pod running
  `torchrun --nproc-per-node N -m beit3train.<step> <flags>`; torchrun reads the node count, rank and
  master address from the `PET_*` variables the operator injects.
* `trainjob`: a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1) on the `torch-distributed`
  runtime, with the same command.
* `local`: the same command as `torchrun --standalone` processes on this machine, so the whole pipeline runs
  without a cluster.

Cluster jobs are validated against the CRD schema (`beit3ops.k8s_schema`) before they are submitted, then
watched until they finish: every condition change is logged, a failure raises `JobFailed` with the job's own
reason and message, and a timeout or a cancellation (SIGTERM, which KFP sends when a run is cancelled) deletes
the job before the step ends. S3 credentials reach the pods only as `secretKeyRef`s to a Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from beit3core.errors import UserError
from beit3ops import k8s_schema

log = logging.getLogger(__name__)

STEPS = ("pretrain", "finetune")
BACKENDS = ("local", "pytorchjob", "trainjob")
# Keys of the S3 Secret (manifests/base/s3-secret.yaml) -> environment variable in the training pods.
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
}
GPU_RESOURCE = "nvidia.com/gpu"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Resource:
    """How a job kind is addressed through the Kubernetes API, and which conditions end it."""

    group: str
    version: str
    plural: str
    kind: str
    success: str
    failure: str = "Failed"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


RESOURCES = {
    "pytorchjob": Resource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", success="Succeeded"),
    "trainjob": Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", success="Complete"),
}


class JobFailed(RuntimeError):
    """The job ended in failure; the message carries the job's own reason and message."""


class JobTimeout(RuntimeError):
    """The job did not finish within the timeout; it has been deleted."""


class JobCancelled(RuntimeError):
    """The step was cancelled (SIGTERM / Ctrl-C); the job has been deleted."""


@dataclass(frozen=True)
class LaunchConfig:
    """Everything that describes one distributed run of a training stage. Frozen, checked on creation."""

    step: str = "pretrain"
    args: tuple[str, ...] = ()  # the stage's own flags, passed through unchanged
    name: str = "beit3-pretrain"
    namespace: str = "default"
    image: str = ""  # required for cluster back-ends; the pipeline passes its `image` parameter
    replicas: int = 1  # pods (nodes): one Master plus replicas - 1 Workers
    nproc_per_node: int = 1  # torchrun processes per pod (usually = gpus_per_node)
    gpus_per_node: int = 0
    cpu: str | None = None  # request and limit per pod, e.g. "8"
    memory: str | None = None  # e.g. "64Gi"
    shm_size: str = "8Gi"  # /dev/shm (emptyDir, medium Memory) for dataloader workers
    s3_secret: str | None = "beit3-s3"  # Secret whose keys become AWS_* env vars; None: no S3 env
    env: tuple[tuple[str, str], ...] = ()  # extra plain env vars (never secrets)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()  # each a sorted tuple of toleration fields
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    backoff_limit: int = 0  # a training failure is not retried by the operator; KFP retries the step
    ttl_seconds_after_finished: int = 86400
    runtime: str = "torch-distributed"  # Trainer v2 ClusterTrainingRuntime
    active_deadline_seconds: int | None = None  # the operator stops the job after this even if no one watches
    owner_pod: tuple[str, str] | None = None  # (name, uid) of the pod that launches the job: deleting it deletes the job

    def __post_init__(self):
        if self.step not in STEPS:
            raise UserError(f"step {self.step!r}: must be one of {', '.join(STEPS)}")
        if not _NAME_RE.match(self.name) or len(self.name) > 50:
            raise UserError(
                f"--name {self.name!r}: must be a DNS-1035 label (lower-case letters, digits, '-') of at most 50 characters"
            )
        for flag, value, low in (
            ("--replicas", self.replicas, 1),
            ("--nproc-per-node", self.nproc_per_node, 1),
            ("--gpus-per-node", self.gpus_per_node, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise UserError(f"{flag} {value!r}: must be an integer >= {low}")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise UserError(f"--image-pull-policy {self.image_pull_policy!r}: must be Always, IfNotPresent or Never")
        secret_names = set(S3_SECRET_KEYS.values())
        for key, _ in self.env:
            if key in secret_names:
                raise UserError(f"--env {key}: S3 settings come from the Secret (--s3-secret), not from --env")

    @property
    def module(self) -> str:
        return f"beit3train.{self.step}"

    def command(self) -> list[str]:
        """The command every pod runs; torchrun takes nodes/rank/master from the PET_* environment."""
        return ["torchrun", f"--nproc-per-node={self.nproc_per_node}", "-m", self.module, *self.args]


def job_name(prefix: str, run_id: str = "") -> str:
    """A DNS-1035 job name from a prefix and a run id (KFP run ids are UUIDs), at most 50 characters."""
    raw = f"{prefix}-{run_id[:12]}" if run_id else prefix
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    name = re.sub(r"-+", "-", name)
    if not name or not name[0].isalpha():
        name = "j-" + name
    return name[:50].rstrip("-")


# ---------------------------------------------------------------------------------------------------------
# Spec builders (pure functions of the config)


def _env(cfg: LaunchConfig) -> list[dict]:
    env = [{"name": k, "value": v} for k, v in cfg.env]
    if cfg.s3_secret:
        for secret_key, env_name in S3_SECRET_KEYS.items():
            env.append(
                {
                    "name": env_name,
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": cfg.s3_secret,
                            "key": secret_key,
                            # endpoint and region may be absent (AWS S3 proper); the keys may not
                            "optional": env_name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"),
                        }
                    },
                }
            )
    return env


def _resources(cfg: LaunchConfig) -> dict:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if cfg.gpus_per_node:
        limits[GPU_RESOURCE] = str(cfg.gpus_per_node)
    if cfg.cpu:
        limits["cpu"] = requests["cpu"] = cfg.cpu
    if cfg.memory:
        limits["memory"] = requests["memory"] = cfg.memory
    out = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _tolerations(cfg: LaunchConfig) -> list[dict]:
    tolerations = [dict(t) for t in cfg.tolerations]
    if cfg.gpus_per_node and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU nodes are usually tainted nvidia.com/gpu:NoSchedule
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _labels(cfg: LaunchConfig) -> dict:
    return {"app.kubernetes.io/name": "beit3", "app.kubernetes.io/component": cfg.step}


_POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
_SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def _shm_volume(cfg: LaunchConfig) -> dict:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}


def _metadata(cfg: LaunchConfig) -> dict:
    meta = {"name": cfg.name, "namespace": cfg.namespace, "labels": _labels(cfg)}
    if cfg.owner_pod:
        # Garbage collection removes the job with the launching pod, in case the watcher never saw the
        # cancellation (a signal that did not reach it). blockOwnerDeletion needs no extra RBAC when false.
        name, uid = cfg.owner_pod
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": False, "blockOwnerDeletion": False}
        ]
    return meta


def pod_owner() -> tuple[str, str] | None:
    """(name, uid) of this pod from POD_NAME / POD_UID (set through the downward API), else None."""
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    return (name, uid) if name and uid else None


def _pod_spec_extras(cfg: LaunchConfig) -> dict:
    spec: dict = {}
    if cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    tolerations = _tolerations(cfg)
    if tolerations:
        spec["tolerations"] = tolerations
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    return spec


def build_pytorchjob(cfg: LaunchConfig) -> dict:
    """A kubeflow.org/v1 PyTorchJob for `cfg`: one Master, replicas - 1 Workers."""
    container = {
        "name": "pytorch",  # the operator only manages a container with this name
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": cfg.command(),
        "env": _env(cfg),
        "volumeMounts": [dict(_SHM_MOUNT)],
    }
    resources = _resources(cfg)
    if resources:
        container["resources"] = resources

    def replica(count: int) -> dict:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": _labels(cfg), "annotations": dict(_POD_ANNOTATIONS)},
                "spec": {
                    "containers": [copy.deepcopy(container)],
                    "volumes": [_shm_volume(cfg)],
                    **_pod_spec_extras(cfg),
                },
            },
        }

    replica_specs = {"Master": replica(1)}
    if cfg.replicas > 1:
        replica_specs["Worker"] = replica(cfg.replicas - 1)
    run_policy = {
        "cleanPodPolicy": "Running",
        "backoffLimit": cfg.backoff_limit,
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
    }
    if cfg.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = cfg.active_deadline_seconds
    return {
        "apiVersion": RESOURCES["pytorchjob"].api_version,
        "kind": "PyTorchJob",
        "metadata": _metadata(cfg),
        "spec": {"nprocPerNode": str(cfg.nproc_per_node), "runPolicy": run_policy, "pytorchReplicaSpecs": replica_specs},
    }


def build_trainjob(cfg: LaunchConfig) -> dict:
    """A trainer.kubeflow.org/v1alpha1 TrainJob for `cfg` on the `torch-distributed` runtime."""
    trainer = {
        "image": cfg.image,
        "command": cfg.command(),
        "env": _env(cfg),
        "numNodes": cfg.replicas,
        "numProcPerNode": cfg.nproc_per_node,  # an integer here, unlike v1's string
    }
    resources = _resources(cfg)
    if resources:
        trainer["resourcesPerNode"] = resources
    pod_spec = {
        # the torch-distributed runtime's replicated job and container are both named "node"
        "containers": [{"name": "node", "volumeMounts": [dict(_SHM_MOUNT)]}],
        "volumes": [_shm_volume(cfg)],
        **_pod_spec_extras(cfg),
    }
    patch = {
        "manager": "beit3.launcher",
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "spec": {
                                    "template": {
                                        "metadata": {"labels": _labels(cfg), "annotations": dict(_POD_ANNOTATIONS)},
                                        "spec": pod_spec,
                                    }
                                }
                            },
                        }
                    ]
                }
            }
        },
    }
    spec = {
        "runtimeRef": {"name": cfg.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    if cfg.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = cfg.active_deadline_seconds
    return {"apiVersion": RESOURCES["trainjob"].api_version, "kind": "TrainJob", "metadata": _metadata(cfg), "spec": spec}


def build_job(cfg: LaunchConfig, backend: str = "pytorchjob") -> dict:
    """The validated custom resource for a cluster back-end."""
    if not cfg.image:
        raise UserError("--image: a cluster job needs the container image (or set BEIT3_IMAGE)")
    if backend == "pytorchjob":
        job = build_pytorchjob(cfg)
    elif backend == "trainjob":
        job = build_trainjob(cfg)
    else:
        raise UserError(f"--backend {backend!r}: no job spec for this back-end (use pytorchjob or trainjob)")
    return k8s_schema.validate(job)


# ---------------------------------------------------------------------------------------------------------
# Submit and watch


class _Cancel(BaseException):
    """Raised from the signal handler; a BaseException so that no `except Exception` swallows it."""


@contextlib.contextmanager
def _cancel_on_signals(signals=(signal.SIGTERM,)):
    """Turn SIGTERM into a `_Cancel` exception for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Cancel(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _conditions(obj: dict) -> list[dict]:
    return list(((obj or {}).get("status") or {}).get("conditions") or [])


def _terminal(conditions: list[dict], res: Resource) -> dict | None:
    """The condition that ends the job (success or failure with status True), if any."""
    for cond in reversed(conditions):
        if cond.get("type") in (res.success, res.failure) and str(cond.get("status", "True")) == "True":
            return cond
    return None


def _api_status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


class JobWatcher:
    """Create a job, follow it to the end, delete it on timeout or cancellation.

    `api` is a `kubernetes.client.CustomObjectsApi` (or anything with its create/get/delete methods);
    `clock` and `sleep` are injectable so the loop can be tested without waiting.
    """

    def __init__(
        self,
        api,
        backend: str = "pytorchjob",
        *,
        timeout_s: float = 7 * 86400,
        poll_s: float = 10.0,
        max_api_errors: int = 6,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        if backend not in RESOURCES:
            raise UserError(f"--backend {backend!r}: must be pytorchjob or trainjob")
        self.api = api
        self.res = RESOURCES[backend]
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.max_api_errors = max_api_errors
        self.clock = clock
        self.sleep = sleep

    def _args(self, namespace: str) -> tuple:
        return (self.res.group, self.res.version, namespace, self.res.plural)

    def create(self, job: dict) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            self.api.create_namespaced_custom_object(*self._args(ns), body=job)
            log.info("created %s %s/%s", self.res.kind, ns, name)
        except Exception as exc:
            if _api_status(exc) != 409:
                raise
            # The step was retried (or resumed): follow the job that already exists instead of failing.
            log.info("%s %s/%s already exists: following it", self.res.kind, ns, name)

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(*self._args(namespace), name, propagation_policy="Background")
            log.info("deleted %s %s/%s", self.res.kind, namespace, name)
        except Exception as exc:  # deleting is best effort: report it, but keep the original error
            if _api_status(exc) == 404:
                log.info("%s %s/%s was already gone", self.res.kind, namespace, name)
            else:
                log.error("could not delete %s %s/%s: %s", self.res.kind, namespace, name, exc)

    def wait(self, namespace: str, name: str) -> dict:
        """Poll the job until a terminal condition; log each condition change; return the final object."""
        start = self.clock()
        seen: set[tuple] = set()
        errors = 0
        what = f"{self.res.kind} {namespace}/{name}"
        while True:
            try:
                obj = self.api.get_namespaced_custom_object(*self._args(namespace), name)
                errors = 0
            except _Cancel:
                raise
            except Exception as exc:
                if _api_status(exc) == 404:
                    raise JobFailed(f"{what} disappeared (deleted by someone else?)") from exc
                errors += 1
                log.warning("reading %s failed (%d/%d): %s", what, errors, self.max_api_errors, exc)
                if errors >= self.max_api_errors:
                    raise
                obj = None
            conditions = _conditions(obj) if obj else []
            for cond in conditions:
                key = (cond.get("type"), cond.get("status"), cond.get("reason"), cond.get("lastTransitionTime"))
                if key not in seen:
                    seen.add(key)
                    log.info(
                        "%s: %s=%s %s %s",
                        what,
                        cond.get("type"),
                        cond.get("status", "True"),
                        cond.get("reason", ""),
                        cond.get("message", ""),
                    )
            end = _terminal(conditions, self.res)
            if end is not None:
                if end["type"] == self.res.success:
                    return obj
                raise JobFailed(f"{what} failed: {end.get('reason', 'Failed')}: {end.get('message', '')}".rstrip(": "))
            if self.clock() - start >= self.timeout_s:
                raise JobTimeout(f"{what} did not finish within {self.timeout_s:g} s")
            self.sleep(self.poll_s)

    def run(self, job: dict) -> dict:
        """Create `job`, wait for it, and delete it when the wait ends in a timeout or a cancellation."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        with _cancel_on_signals():
            try:
                self.create(job)
                return self.wait(ns, name)
            except JobTimeout:
                self.delete(ns, name)
                raise
            except (_Cancel, KeyboardInterrupt) as exc:
                self.delete(ns, name)
                raise JobCancelled(f"{self.res.kind} {ns}/{name} cancelled ({exc or 'interrupt'}); job deleted") from None


def kubernetes_api():
    """A CustomObjectsApi from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace(default: str = "default") -> str:
    """The pod's namespace (NAMESPACE env, then the service-account file), else `default`."""
    if os.environ.get("NAMESPACE"):
        return os.environ["NAMESPACE"]
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or default
    except OSError:
        return default


# ---------------------------------------------------------------------------------------------------------
# Local back-end


def local_command(cfg: LaunchConfig) -> list[str]:
    """torchrun on this machine: one node, `nproc_per_node` processes, a free rendezvous port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={cfg.nproc_per_node}",
        "-m",
        cfg.module,
        *cfg.args,
    ]


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_local(cfg: LaunchConfig, *, timeout_s: float = 7 * 86400, env: dict | None = None) -> None:
    """Run the stage under torchrun here; raise JobFailed/JobTimeout/JobCancelled like the cluster path."""
    if cfg.replicas > 1:
        log.info("local back-end: running 1 node with %d processes (replicas=%d applies on a cluster)",
                 cfg.nproc_per_node, cfg.replicas)
    cmd = local_command(cfg)
    log.info("running %s", " ".join(cmd))
    run_env = dict(os.environ if env is None else env)
    run_env.update(dict(cfg.env))
    with _cancel_on_signals((signal.SIGTERM,)):
        proc = subprocess.Popen(cmd, env=run_env, start_new_session=True)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise JobTimeout(f"local {cfg.step} did not finish within {timeout_s:g} s; processes stopped") from None
        except (_Cancel, KeyboardInterrupt) as exc:
            _stop_group(proc)
            raise JobCancelled(f"local {cfg.step} cancelled ({exc or 'interrupt'}); processes stopped") from None
    if rc != 0:
        raise JobFailed(f"local {cfg.step} failed: torchrun exited with status {rc}")


def launch(cfg: LaunchConfig, backend: str = "pytorchjob", *, api=None, timeout_s: float = 7 * 86400,
           poll_s: float = 10.0) -> dict | None:
    """Run `cfg` on `backend` to completion. Returns the final job object (None for `local`)."""
    if backend == "local":
        run_local(cfg, timeout_s=timeout_s)
        return None
    job = build_job(cfg, backend)
    watcher = JobWatcher(api if api is not None else kubernetes_api(), backend, timeout_s=timeout_s, poll_s=poll_s)
    return watcher.run(job)


# ---------------------------------------------------------------------------------------------------------
# CLI: beit3 launch STEP --backend B [options] -- <stage flags>


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k, v


def _toleration(text: str) -> tuple[tuple[str, str], ...]:
    """KEY[=VALUE][:EFFECT] -> a toleration (operator Equal with a value, Exists without)."""
    effect = None
    if ":" in text:
        text, effect = text.rsplit(":", 1)
    fields = {"key": text, "operator": "Exists"}
    if "=" in text:
        k, v = text.split("=", 1)
        fields = {"key": k, "operator": "Equal", "value": v}
    if effect:
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise argparse.ArgumentTypeError(f"{effect!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
        fields["effect"] = effect
    return tuple(sorted(fields.items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="beit3 launch",
        description="Run a training stage as a PyTorchJob / TrainJob on Kubernetes, or under torchrun locally. "
        "Everything after `--` is passed to the stage unchanged.",
    )
    p.add_argument("step", choices=STEPS)
    p.add_argument("--backend", choices=BACKENDS, default="pytorchjob")
    p.add_argument("--name", help="job name (default: beit3-STEP-<KFP run id or time>)")
    p.add_argument("--run-id", default="", help="suffix for the default job name (e.g. the KFP run id)")
    p.add_argument("--namespace", help="default: the pod's namespace, else 'default'")
    p.add_argument("--image", default=os.environ.get("BEIT3_IMAGE", ""), help="container image (default: $BEIT3_IMAGE)")
    p.add_argument("--image-pull-policy", default="IfNotPresent")
    p.add_argument("--replicas", type=int, default=1, help="pods: 1 Master + REPLICAS-1 Workers")
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpu")
    p.add_argument("--memory")
    p.add_argument("--shm-size", default="8Gi")
    p.add_argument("--s3-secret", default="beit3-s3", help="Secret holding AWS_* keys ('' for none)")
    p.add_argument("--env", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--node-selector", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--toleration", type=_toleration, action="append", default=[], metavar="KEY[=VALUE][:EFFECT]")
    p.add_argument("--service-account")
    p.add_argument("--runtime", default="torch-distributed", help="TrainJob ClusterTrainingRuntime")
    p.add_argument("--timeout", type=float, default=7 * 86400, help="seconds before the job is deleted")
    p.add_argument("--poll-interval", type=float, default=10.0)
    p.add_argument("--dry-run", action="store_true", help="print the validated job YAML (or local command) and exit")
    return p


def config_from_args(ns: argparse.Namespace, stage_args: list[str]) -> LaunchConfig:
    name = ns.name or job_name(f"beit3-{ns.step}", ns.run_id or time.strftime("%m%d-%H%M%S"))
    return LaunchConfig(
        step=ns.step,
        args=tuple(stage_args),
        name=name,
        namespace=ns.namespace or current_namespace(),
        image=ns.image,
        image_pull_policy=ns.image_pull_policy,
        replicas=ns.replicas,
        nproc_per_node=ns.nproc_per_node,
        gpus_per_node=ns.gpus_per_node,
        cpu=ns.cpu,
        memory=ns.memory,
        shm_size=ns.shm_size,
        s3_secret=ns.s3_secret or None,
        env=tuple(ns.env),
        node_selector=tuple(ns.node_selector),
        tolerations=tuple(ns.toleration),
        service_account=ns.service_account,
        runtime=ns.runtime,
        active_deadline_seconds=int(ns.timeout) if ns.backend != "local" else None,
        owner_pod=pod_owner(),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, stage_args = argv[:i], argv[i + 1 :]
    ns = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(ns, stage_args)
    if ns.dry_run:
        if ns.backend == "local":
            print(" ".join(local_command(cfg)))
        else:
            import yaml

            print(yaml.safe_dump(build_job(cfg, ns.backend), sort_keys=False), end="")
        return 0
    try:
        launch(cfg, ns.backend, timeout_s=ns.timeout, poll_s=ns.poll_interval)
    except (JobFailed, JobTimeout, JobCancelled) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{cfg.step} finished ({ns.backend})")
    return 0


if __name__ == "__main__":
    from beit3core.errors import run_main

    sys.exit(run_main(main, None))
