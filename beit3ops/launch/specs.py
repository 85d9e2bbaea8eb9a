"""Kubernetes custom resources for a `LaunchConfig`: a Training Operator v1 `PyTorchJob` or a Trainer v2
`TrainJob`, as pure functions of the config, validated against the CRD schema and the admission rules that
the schema does not express (`beit3ops.k8s_schema`).

S3 credentials reach the pods only as `secretKeyRef`s to a Kubernetes Secret. Every container requests cpu
and memory (a namespace ResourceQuota refuses it otherwise). TrainJobs are written for Kubeflow Trainer >= 2.2
(`spec.runtimePatches`; v2.0 had `podSpecOverrides`, v2.1 `podTemplateOverrides`): older releases are refused.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from beit3core.errors import UserError
from beit3ops import k8s_schema
from beit3ops.launch.config import (
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    LABEL_OUTPUT,
    LABEL_RUN,
    LaunchConfig,
)

# runtimePatches[].manager: the Trainer webhook requires a domain-prefixed path (IsDomainPrefixedPath).
PATCH_MANAGER = "beit3.dev/launcher"
# Trainer releases whose TrainJob has spec.runtimePatches (kubeflow/trainer v2.2.0 pkg/apis/trainer/v1alpha1).
MIN_TRAINER_VERSION = (2, 2)


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

def _env(cfg: LaunchConfig) -> list[dict]:
    env = [{"name": k, "value": v} for k, v in cfg.env]
    if cfg.s3_secret:
        for secret_key, env_name in cfg.s3_secret_keys:
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
    """Requests for cpu and memory always (quota admission), the memory limit equal to its request, GPUs as
    limits (Kubernetes sets extended-resource requests equal to limits)."""
    requests = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits = {"memory": cfg.memory}
    if cfg.cpu_limit:
        limits["cpu"] = cfg.cpu_limit
    if cfg.ephemeral_storage:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = cfg.ephemeral_storage
    if cfg.gpus_per_node:
        limits[cfg.gpu_resource] = str(cfg.gpus_per_node)
    return {"limits": limits, "requests": requests}


def _tolerations(cfg: LaunchConfig) -> list[dict]:
    tolerations = [dict(t) for t in cfg.tolerations]
    if cfg.gpus_per_node and not any(t.get("key") == cfg.gpu_resource for t in tolerations):
        # GPU nodes are usually tainted nvidia.com/gpu:NoSchedule
        tolerations.append({"key": cfg.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _labels(cfg: LaunchConfig) -> dict:
    labels = {"app.kubernetes.io/name": "beit3", "app.kubernetes.io/component": cfg.step, LABEL_JOB: cfg.name}
    if cfg.run_id:
        labels[LABEL_RUN] = cfg.run_id
    if cfg.output_key:
        labels[LABEL_OUTPUT] = cfg.output_key
    return labels


_POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
_SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def _shm_volume(cfg: LaunchConfig) -> dict:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}


def _metadata(cfg: LaunchConfig) -> dict:
    meta = {"name": cfg.name, "namespace": cfg.namespace, "labels": _labels(cfg)}
    if cfg.queue_name:
        # Kueue admits the whole job at once (gang) when its LocalQueue has quota; pods wait suspended until then
        meta["labels"][KUEUE_QUEUE_LABEL] = cfg.queue_name
    if cfg.owner_pod:
        # Garbage collection removes the job with the launching pod, in case the watcher never saw the
        # cancellation (a signal that did not reach it). blockOwnerDeletion needs no extra RBAC when false.
        name, uid = cfg.owner_pod
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": False, "blockOwnerDeletion": False}
        ]
    return meta


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


def parse_trainer_version(text: str) -> tuple[int, int]:
    """'2.2', 'v2.3.0' -> (2, 2), (2, 3); a release without runtimePatches is a UserError naming the flag."""
    match = re.match(r"^v?(\d+)\.(\d+)(\.\d+)?(-[0-9A-Za-z.]+)?$", str(text).strip())
    if not match:
        raise UserError(f"--trainer-version {text!r}: expected a Kubeflow Trainer release such as 2.2 or v2.3.0")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_TRAINER_VERSION:
        raise UserError(
            f"--trainer-version {text}: TrainJobs from this launcher need Kubeflow Trainer >= 2.2 (spec.runtimePatches; "
            "v2.0 had podSpecOverrides, v2.1 podTemplateOverrides); upgrade Trainer or use --backend pytorchjob"
        )
    return version


def build_trainjob(cfg: LaunchConfig) -> dict:
    """A trainer.kubeflow.org/v1alpha1 TrainJob for `cfg` on the `torch-distributed` runtime (Trainer >= 2.2)."""
    parse_trainer_version(cfg.trainer_version)
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
        "manager": PATCH_MANAGER,
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
