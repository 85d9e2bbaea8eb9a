"""`beit3 launch STEP --backend B [options] -- <stage flags>`: run a training stage to completion.

`launch()` runs a `LaunchConfig` on a back-end: a cluster job (built by `specs`, followed by `watch`) or
local torchrun processes (`local`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import yaml

from beit3core.errors import ArgumentParser, run_main
from beit3ops.launch.config import (
    BACKENDS,
    STEPS,
    JobCancelled,
    JobFailed,
    JobTimeout,
    LaunchConfig,
    job_name,
)
from beit3ops.launch.local import local_command, run_local
from beit3ops.launch.specs import build_job
from beit3ops.launch.watch import (
    JobWatcher,
    current_namespace,
    kubernetes_apis,
    pod_owner,
)


def launch(cfg: LaunchConfig, backend: str = "pytorchjob", *, api=None, core=None, timeout_s: float = 7 * 86400,
           start_timeout_s: float = 1800.0, poll_s: float = 10.0) -> dict | None:
    """Run `cfg` on `backend` to completion. Returns the final job object (None for `local`).

    `api` / `core`: a CustomObjectsApi and a `pods.CoreApi` (default: from the cluster configuration)."""
    if backend == "local":
        run_local(cfg, timeout_s=timeout_s)
        return None
    job = build_job(cfg, backend)
    if api is None:
        api, core = kubernetes_apis()
    watcher = JobWatcher(api, backend, core=core, timeout_s=timeout_s, start_timeout_s=start_timeout_s,
                         poll_s=poll_s)
    return watcher.run(job)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k, v


# A label/taint key: [DNS-1123 subdomain/]name (k8s.io/apimachinery IsQualifiedName).
_TAINT_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_TAINT_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _toleration(text: str) -> tuple[tuple[str, str], ...]:
    """KEY[=VALUE][:EFFECT] -> a toleration (operator Equal with a value, Exists without)."""
    spec, effect = text, None
    if ":" in spec:
        spec, effect = spec.rsplit(":", 1)
    key, has_value, value = spec.partition("=")
    if not _TAINT_KEY.match(key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY[=VALUE][:EFFECT] with KEY a taint key such as "
                                         "nvidia.com/gpu")
    if has_value and not _TAINT_VALUE.match(value):
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a label value (letters, digits, '-', '_', '.')")
    fields = {"key": key, "operator": "Equal", "value": value} if has_value else {"key": key, "operator": "Exists"}
    if effect is not None:
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise argparse.ArgumentTypeError(f"{effect!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
        fields["effect"] = effect
    return tuple(sorted(fields.items()))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="beit3 launch",
        description="Run a training stage as a PyTorchJob / TrainJob on Kubernetes, or under torchrun locally. "
        "Everything after `--` is passed to the stage unchanged.",
    )
    p.add_argument("step", choices=STEPS)
    p.add_argument("--backend", choices=BACKENDS, default="pytorchjob")
    p.add_argument("--name", help="job name (default: beit3-STEP-<time>-<random>, new for every attempt)")
    p.add_argument("--run-id", default=os.environ.get("KFP_RUN_ID", ""),
                   help="the KFP run id, a label on the job (default: $KFP_RUN_ID); the run's exit handler "
                   "deletes the run's unfinished jobs")
    p.add_argument("--namespace", help="default: the pod's namespace, else 'default'")
    p.add_argument("--image", default=os.environ.get("BEIT3_IMAGE", ""), help="container image (default: $BEIT3_IMAGE)")
    p.add_argument("--image-pull-policy", default="IfNotPresent")
    p.add_argument("--replicas", type=int, default=1, help="pods: 1 Master + REPLICAS-1 Workers")
    p.add_argument("--nproc-per-node", type=int, default=0, help="processes per pod (default: one per GPU, 1 on CPU)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpu", default="4", help="cpu request of every training container (a quota needs it)")
    p.add_argument("--memory", default="32Gi", help="memory request and limit of every training container")
    p.add_argument("--cpu-limit", help="cpu limit (for namespaces whose quota sets limits.cpu)")
    p.add_argument("--ephemeral-storage", help="local disk request and limit per pod, e.g. 100Gi")
    p.add_argument("--shm-size", default="8Gi")
    p.add_argument("--s3-secret", default="beit3-s3", help="Secret holding AWS_* keys ('' for none)")
    p.add_argument("--env", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--node-selector", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--toleration", type=_toleration, action="append", default=[], metavar="KEY[=VALUE][:EFFECT]")
    p.add_argument("--service-account")
    p.add_argument("--runtime", default="torch-distributed", help="TrainJob ClusterTrainingRuntime")
    p.add_argument("--trainer-version", default="2.2",
                   help="Kubeflow Trainer release of the cluster (TrainJob needs >= 2.2: spec.runtimePatches)")
    p.add_argument("--backoff-limit", type=int, default=3, help="times the operator restarts failed pods")
    p.add_argument("--queue-name", default="", help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)")
    p.add_argument("--timeout", type=_seconds, default=7 * 86400, help="seconds before the job is deleted")
    p.add_argument("--start-timeout", type=_seconds, default=1800.0,
                   help="seconds the job's pods may stay unstarted (unschedulable, image pull errors, quota) "
                   "before the job is deleted and the launch fails with the cluster's reasons")
    p.add_argument("--poll-interval", type=_seconds, default=10.0)
    p.add_argument("--dry-run", action="store_true", help="print the validated job YAML (or local command) and exit")
    return p


# Flags whose value is the LaunchConfig field of the same name, as it is.
_AS_IS = ("step", "image", "image_pull_policy", "replicas", "nproc_per_node", "gpus_per_node", "cpu", "memory",
          "cpu_limit", "ephemeral_storage", "shm_size", "service_account", "runtime", "trainer_version",
          "backoff_limit", "run_id", "queue_name")


def config_from_args(ns: argparse.Namespace, stage_args: list[str]) -> LaunchConfig:
    name = ns.name or job_name(f"beit3-{ns.step}")
    return LaunchConfig(
        args=tuple(stage_args),
        name=name,
        namespace=ns.namespace or current_namespace(),
        s3_secret=ns.s3_secret or None,
        env=tuple(ns.env),
        node_selector=tuple(ns.node_selector),
        tolerations=tuple(ns.toleration),
        active_deadline_seconds=int(ns.timeout) if ns.backend != "local" else None,
        owner_pod=pod_owner(),
        **{field: getattr(ns, field) for field in _AS_IS},
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
            print(yaml.safe_dump(build_job(cfg, ns.backend), sort_keys=False), end="")
        return 0
    try:
        launch(cfg, ns.backend, timeout_s=ns.timeout, start_timeout_s=ns.start_timeout, poll_s=ns.poll_interval)
    except (JobFailed, JobTimeout, JobCancelled) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{cfg.step} finished ({ns.backend})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
