"""One distributed run of a training stage (`LaunchConfig`), its job name, and how a run can end badly."""

from __future__ import annotations

import re
from dataclasses import dataclass

from beit3core.errors import UserError

STEPS = ("pretrain", "finetune")
BACKENDS = ("local", "pytorchjob", "trainjob")
# Keys of the S3 Secret (manifests/base/s3-secret.yaml) -> environment variable in the training pods.
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
}
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1035 label


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
        if not NAME_RE.match(self.name) or len(self.name) > 50:
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
