"""The local back-end: the stage as `torchrun --standalone` processes on this machine, so the whole
pipeline runs without a cluster. It ends like a cluster job: JobFailed, JobTimeout or JobCancelled."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys

from beit3ops.launch.cancel import Cancel, cancel_on_signals
from beit3ops.launch.config import JobCancelled, JobFailed, JobTimeout, LaunchConfig

log = logging.getLogger(__name__)


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
    with cancel_on_signals((signal.SIGTERM,)):
        proc = subprocess.Popen(cmd, env=run_env, start_new_session=True)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise JobTimeout(f"local {cfg.step} did not finish within {timeout_s:g} s; processes stopped") from None
        except (Cancel, KeyboardInterrupt) as exc:
            _stop_group(proc)
            raise JobCancelled(f"local {cfg.step} cancelled ({exc or 'interrupt'}); processes stopped") from None
    if rc != 0:
        raise JobFailed(f"local {cfg.step} failed: torchrun exited with status {rc}")
