"""One distributed run of a training stage (`LaunchConfig`), its job name, and how a run can end badly."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass

from beit3core.errors import UserError

STEPS = ("pretrain", "finetune")
BACKENDS = ("local", "pytorchjob", "trainjob")
# Keys of the S3 Secret (manifests/own-namespace/s3-secret.yaml) -> environment variable in the training pods.
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
}
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1035 label
# A Kubernetes resource quantity (k8s.io/apimachinery/pkg/api/resource/quantity.go): number, optional suffix.
QUANTITY_RE = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
# A label value (k8s.io/apimachinery/pkg/util/validation IsValidLabelValue), at most 63 characters.
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Labels every generated job (and its pods) carries: how a retried step finds a live job of the same output,
# how the exit handler finds the jobs of a run, and how the watcher finds the job's pods.
LABEL_JOB = "beit3.dev/job"
LABEL_RUN = "beit3.dev/run-id"
LABEL_OUTPUT = "beit3.dev/output"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # kueue: pkg/controller/constants


class JobFailed(RuntimeError):
    """The job ended in failure; the message carries the job's own reason and message."""


class JobNotStarted(JobFailed):
    """No pod of the job started in time; the message carries the cluster's reasons. It has been deleted."""


class JobTimeout(RuntimeError):
    """The job did not finish within the timeout; it has been deleted."""


class JobCancelled(RuntimeError):
    """The step was cancelled (SIGTERM / Ctrl-C); the job has been deleted."""


def _check_quantity(flag: str, value: str | None) -> None:
    if value is not None and not QUANTITY_RE.match(str(value)):
        raise UserError(f"{flag} {value!r}: not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")


@dataclass(frozen=True)
class LaunchConfig:
    """Everything that describes one distributed run of a training stage. Frozen, checked on creation."""

    step: str = "pretrain"
    args: tuple[str, ...] = ()  # the stage's own flags, passed through unchanged
    name: str = "beit3-pretrain"
    namespace: str = "default"
    image: str = ""  # required for cluster back-ends; the pipeline passes its `image` parameter
    replicas: int = 1  # pods (nodes): one Master plus replicas - 1 Workers
    nproc_per_node: int = 0  # torchrun processes per pod; 0: one per GPU (1 without GPUs)
    gpus_per_node: int = 0
    gpu_resource: str = "nvidia.com/gpu"  # the extended resource the device plugin advertises
    # Requests of every training container: a namespace ResourceQuota on requests.cpu / requests.memory /
    # limits.memory refuses containers without them ("must specify ..."), so they are always set.
    cpu: str = "4"
    memory: str = "32Gi"  # request and limit: the limit makes a quota on limits.memory admit the pod
    cpu_limit: str | None = None  # no CPU limit by default (throttling slows dataloaders); set for limits.cpu quotas
    ephemeral_storage: str | None = None  # local disk request (checkpoints are staged locally before upload)
    shm_size: str = "8Gi"  # /dev/shm (emptyDir, medium Memory) for dataloader workers
    s3_secret: str | None = "beit3-s3"  # Secret whose keys become AWS_* env vars; None: no S3 env
    # (key in the Secret, env var) pairs taken from it; a profile's mlpipeline-minio-artifact names them otherwise
    s3_secret_keys: tuple[tuple[str, str], ...] = tuple(S3_SECRET_KEYS.items())
    env: tuple[tuple[str, str], ...] = ()  # extra plain env vars (never secrets)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()  # each a sorted tuple of toleration fields
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    # Failed pods are restarted by the operator this many times; the stage resumes from its own checkpoints.
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 86400
    runtime: str = "torch-distributed"  # Trainer v2 ClusterTrainingRuntime
    trainer_version: str = "2.2"  # Kubeflow Trainer release the TrainJob is written for (runtimePatches: >= 2.2)
    active_deadline_seconds: int | None = None  # the operator stops the job after this even if no one watches
    owner_pod: tuple[str, str] | None = None  # (name, uid) of the pod that launches the job: deleting it deletes the job
    run_id: str = ""  # the KFP run (pod label pipeline/runid): the exit handler deletes the run's live jobs
    queue_name: str = ""  # Kueue LocalQueue: the job waits for quota and starts all its pods at once

    def __post_init__(self):
        if self.step not in STEPS:
            raise UserError(f"step {self.step!r}: must be one of {', '.join(STEPS)}")
        if not NAME_RE.match(self.name) or len(self.name) > 50:
            raise UserError(
                f"--name {self.name!r}: must be a DNS-1035 label (lower-case letters, digits, '-') of at most 50 characters"
            )
        for flag, value, low in (
            ("--replicas", self.replicas, 1),
            ("--nproc-per-node", self.nproc_per_node, 0),
            ("--gpus-per-node", self.gpus_per_node, 0),
            ("--backoff-limit", self.backoff_limit, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"{flag} {value!r}: must be an integer >= {low}")
        if self.nproc_per_node == 0:
            # one process per GPU: the same default as the pipeline's nproc_per_replica=0
            object.__setattr__(self, "nproc_per_node", self.gpus_per_node or 1)
        for flag, value in (("--cpu", self.cpu), ("--memory", self.memory), ("--cpu-limit", self.cpu_limit),
                            ("--ephemeral-storage", self.ephemeral_storage), ("--shm-size", self.shm_size)):
            _check_quantity(flag, value)
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise UserError(f"--image-pull-policy {self.image_pull_policy!r}: must be Always, IfNotPresent or Never")
        for flag, value in (("run id", self.run_id), ("--queue-name", self.queue_name)):
            if len(value) > 63 or not LABEL_VALUE_RE.match(value):
                raise UserError(f"{flag} {value!r}: must be a Kubernetes label value (at most 63 characters)")
        from_secret = {env for _, env in self.s3_secret_keys} if self.s3_secret else set()
        for key, _ in self.env:
            if key in from_secret or key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                raise UserError(f"--env {key}: S3 settings come from the Secret (--s3-secret), not from --env")

    @property
    def module(self) -> str:
        return f"beit3train.{self.step}"

    def command(self) -> list[str]:
        """The command every pod runs; torchrun takes nodes/rank/master from the PET_* environment."""
        return ["torchrun", f"--nproc-per-node={self.nproc_per_node}", "-m", self.module, *self.args]

    @property
    def output(self) -> str:
        """The stage's `--out` (where it writes and resumes from), or '' when the flags name none."""
        args = list(self.args)
        for i, arg in enumerate(args):
            if arg == "--out" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--out="):
                return arg.split("=", 1)[1]
        return ""

    @property
    def output_key(self) -> str:
        """A label value naming (step, output): jobs with the same key write, and resume from, the same place."""
        return hashlib.sha256(f"{self.step}\0{self.output}".encode()).hexdigest()[:16] if self.output else ""


def job_name(prefix: str, unique: str = "") -> str:
    """A DNS-1035 job name from a prefix and a suffix, at most 50 characters. Without a suffix one is made
    from the time and a random part, so a retried step never collides with the job of an earlier attempt."""
    def clean(text: str) -> str:
        return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")

    # 8 random hex digits: 20 attempts in the same second collide with odds ~1e-8 (4 digits: ~0.3%)
    suffix = clean(unique[:12] if unique else f"{time.strftime('%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}")
    head = clean(prefix)
    if not (head or suffix)[:1].isalpha():
        head = clean("j-" + head)
    # a long prefix is cut, never the suffix that makes the name unique
    head = head[:max(0, 50 - len(suffix) - 1)].rstrip("-")
    return f"{head}-{suffix}" if head and suffix else (head or suffix)
