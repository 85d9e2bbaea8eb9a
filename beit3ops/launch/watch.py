"""Submit a cluster job and follow it to the end, plus the Kubernetes API helpers the launcher needs.

Every condition change is logged; a failure raises `JobFailed` with the job's own reason and message, and a
timeout or a cancellation (SIGTERM, which KFP sends when a run is cancelled) deletes the job before the step
ends. The `kubernetes` client is imported only when an API object is made.
"""

from __future__ import annotations

import logging
import os
import time

from beit3core.errors import UserError
from beit3ops.launch.cancel import Cancel, cancel_on_signals
from beit3ops.launch.config import JobCancelled, JobFailed, JobTimeout
from beit3ops.launch.specs import RESOURCES, Resource

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


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

    def _get(self, namespace: str, name: str, errors: int) -> tuple[dict | None, int]:
        """The job object (None after a transient API error) and the count of consecutive errors."""
        try:
            return self.api.get_namespaced_custom_object(*self._args(namespace), name), 0
        except Cancel:
            raise
        except Exception as exc:
            what = f"{self.res.kind} {namespace}/{name}"
            if _api_status(exc) == 404:
                raise JobFailed(f"{what} disappeared (deleted by someone else?)") from exc
            errors += 1
            log.warning("reading %s failed (%d/%d): %s", what, errors, self.max_api_errors, exc)
            if errors >= self.max_api_errors:
                raise
            return None, errors

    def wait(self, namespace: str, name: str) -> dict:
        """Poll the job until a terminal condition; log each condition change; return the final object."""
        start = self.clock()
        seen: set[tuple] = set()
        errors = 0
        what = f"{self.res.kind} {namespace}/{name}"
        while True:
            obj, errors = self._get(namespace, name, errors)
            conditions = _conditions(obj) if obj else []
            _log_new(what, conditions, seen)
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
        with cancel_on_signals():
            try:
                self.create(job)
                return self.wait(ns, name)
            except JobTimeout:
                self.delete(ns, name)
                raise
            except (Cancel, KeyboardInterrupt) as exc:
                self.delete(ns, name)
                raise JobCancelled(f"{self.res.kind} {ns}/{name} cancelled ({exc or 'interrupt'}); job deleted") from None


def _log_new(what: str, conditions: list[dict], seen: set[tuple]) -> None:
    """Log each condition not logged before (a condition is known by type, status, reason and time)."""
    for cond in conditions:
        key = (cond.get("type"), cond.get("status"), cond.get("reason"), cond.get("lastTransitionTime"))
        if key not in seen:
            seen.add(key)
            log.info("%s: %s=%s %s %s", what, cond.get("type"), cond.get("status", "True"), cond.get("reason", ""),
                     cond.get("message", ""))


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


def pod_owner() -> tuple[str, str] | None:
    """(name, uid) of this pod from POD_NAME / POD_UID (set through the downward API), else None."""
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    return (name, uid) if name and uid else None
