"""Submit a cluster job and follow it to the end, plus the Kubernetes API helpers the launcher needs.

Every condition change is logged; a failure raises `JobFailed` with the job's own reason and message, and a
timeout or a cancellation (SIGTERM, which KFP sends when a run is cancelled) deletes the job before the step
ends. A job whose pods have not started within `start_timeout_s` (unschedulable, image pull errors, pods the
quota refuses) is deleted and fails with the cluster's reasons; the master pod's log is streamed into this
process's output. A retried step adopts the live job that writes the same output (label `beit3.dev/output`)
instead of starting a second one; otherwise each attempt creates a job of its own name. The `kubernetes`
client is imported only when an API object is made.
"""

from __future__ import annotations

import logging
import os
import time

from beit3core.errors import UserError
from beit3ops.launch.cancel import Cancel, cancel_on_signals
from beit3ops.launch.config import (
    LABEL_OUTPUT,
    LABEL_RUN,
    JobCancelled,
    JobFailed,
    JobNotStarted,
    JobTimeout,
)
from beit3ops.launch.pods import (
    MAIN_CONTAINER,
    CoreApi,
    LogFollower,
    job_event_reasons,
    pod_started,
    pod_waiting_reasons,
)
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

    `api` is a `kubernetes.client.CustomObjectsApi` (or anything with its create/get/list/delete methods);
    `core` a `pods.CoreApi` (pods, events, logs; None: no start check and no log streaming); `clock` and
    `sleep` are injectable so the loop can be tested without waiting.
    """

    def __init__(
        self,
        api,
        backend: str = "pytorchjob",
        *,
        core: CoreApi | None = None,
        timeout_s: float = 7 * 86400,
        start_timeout_s: float = 1800.0,
        poll_s: float = 10.0,
        max_api_errors: int = 6,
        clock=time.monotonic,
        sleep=time.sleep,
        log_out=None,
    ):
        if backend not in RESOURCES:
            raise UserError(f"--backend {backend!r}: must be pytorchjob or trainjob")
        self.api = api
        self.core = core
        self.backend = backend
        self.res = RESOURCES[backend]
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self.max_api_errors = max_api_errors
        self.clock = clock
        self.sleep = sleep
        self.log_out = log_out

    def _args(self, namespace: str) -> tuple:
        return (self.res.group, self.res.version, namespace, self.res.plural)

    def live_jobs(self, namespace: str, selector: str) -> list[dict]:
        """Jobs matching a label selector that have not ended (no terminal condition)."""
        found = self.api.list_namespaced_custom_object(*self._args(namespace), label_selector=selector)
        return [j for j in (found or {}).get("items") or [] if _terminal(_conditions(j), self.res) is None]

    def adoptable(self, job: dict) -> str | None:
        """The name of a live job that writes the same output as `job` (an earlier attempt of this step whose
        launcher pod died), else None."""
        labels = job["metadata"].get("labels") or {}
        if not labels.get(LABEL_OUTPUT):
            return None
        selector = f"{LABEL_OUTPUT}={labels[LABEL_OUTPUT]}"
        if labels.get(LABEL_RUN):
            selector += f",{LABEL_RUN}={labels[LABEL_RUN]}"
        live = self.live_jobs(job["metadata"]["namespace"], selector)
        return live[0]["metadata"]["name"] if live else None

    def create(self, job: dict) -> str:
        """Create `job`, or adopt a live job of the same output; returns the name of the job to follow."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        adopted = self.adoptable(job)
        if adopted:
            log.info("%s %s/%s writes the same output and is still live: following it instead of creating %s",
                     self.res.kind, ns, adopted, name)
            return adopted
        try:
            self.api.create_namespaced_custom_object(*self._args(ns), body=job)
            log.info("created %s %s/%s", self.res.kind, ns, name)
        except Exception as exc:
            if _api_status(exc) != 409:
                raise
            # The same attempt re-entered (an explicit --name): follow the job that already exists.
            log.info("%s %s/%s already exists: following it", self.res.kind, ns, name)
        return name

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(*self._args(namespace), name, propagation_policy="Background")
            log.info("deleted %s %s/%s", self.res.kind, namespace, name)
        except Exception as exc:  # noqa: BLE001 - deleting is best effort: report it, keep the original error
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

    def _not_started_reasons(self, namespace: str, name: str, pods: list[dict], seen: set[str]) -> list[str]:
        """The cluster's reasons why the job's pods are not running yet; new ones are logged."""
        reasons = [r for p in pods for r in pod_waiting_reasons(p)]
        try:
            reasons += job_event_reasons(self.core.warning_events(namespace), name)
        except Exception as exc:  # noqa: BLE001 - events only explain; without them the pods' reasons remain
            if "events" not in seen:
                seen.add("events")
                log.warning("cannot read events in %s (%s): reasons come from the pods only", namespace, exc)
        for reason in reasons:
            if reason not in seen:
                seen.add(reason)
                log.warning("%s %s/%s not running yet: %s", self.res.kind, namespace, name, reason)
        return reasons

    def _pods(self, namespace: str, name: str) -> list[dict] | None:
        """The job's pods; None (and no more pod checks) when the account may not list pods."""
        try:
            return self.core.pods(namespace, name)
        except Cancel:
            raise
        except Exception as exc:  # noqa: BLE001 - without pod access the job's conditions still decide
            log.warning("cannot list the pods of %s/%s (%s): no start check and no log streaming", namespace, name,
                        exc)
            self.core = None
            return None

    def wait(self, namespace: str, name: str) -> dict:
        """Poll the job until a terminal condition; log each condition change and stream the master's log;
        fail with the cluster's reasons if no pod runs within `start_timeout_s`. Returns the final object."""
        start = self.clock()
        seen: set[tuple] = set()
        seen_reasons: set[str] = set()
        started = self.core is None
        follower = LogFollower(self.core, namespace, MAIN_CONTAINER[self.backend], self.log_out) if self.core else None
        errors = 0
        what = f"{self.res.kind} {namespace}/{name}"
        while True:
            obj, errors = self._get(namespace, name, errors)
            conditions = _conditions(obj) if obj else []
            _log_new(what, conditions, seen)
            end = _terminal(conditions, self.res)
            if end is not None:
                if follower:
                    follower.join()
                if end["type"] == self.res.success:
                    return obj
                raise JobFailed(f"{what} failed: {end.get('reason', 'Failed')}: {end.get('message', '')}".rstrip(": "))
            pods = self._pods(namespace, name) if self.core is not None else None
            if pods is not None:
                follower.poll(pods)
                started = started or any(pod_started(p) for p in pods)
                if not started:
                    reasons = self._not_started_reasons(namespace, name, pods, seen_reasons)
                    if self.clock() - start >= self.start_timeout_s:
                        why = "; ".join(dict.fromkeys(reasons)) or "no pod was created and no reason was reported"
                        raise JobNotStarted(f"{what} did not start within {self.start_timeout_s:g} s: {why}")
            if self.clock() - start >= self.timeout_s:
                raise JobTimeout(f"{what} did not finish within {self.timeout_s:g} s")
            self.sleep(self.poll_s)

    def run(self, job: dict) -> dict:
        """Create `job`, wait for it, and delete it when the wait ends in a timeout or a cancellation."""
        ns = job["metadata"]["namespace"]
        name = job["metadata"]["name"]
        with cancel_on_signals():
            try:
                name = self.create(job)
                return self.wait(ns, name)
            except (JobTimeout, JobNotStarted):
                self.delete(ns, name)  # frees the quota and the nodes it holds
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


def kubernetes_apis() -> tuple:
    """(CustomObjectsApi, CoreApi) from the in-cluster service account, else from the kubeconfig
    ($KUBECONFIG or ~/.kube/config). No configuration at all is a UserError, not a traceback."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:  # pragma: no cover - the image and the venv carry it
        raise UserError(f"--backend: the kubernetes Python client is not installed ({exc})") from None
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (ConfigException, OSError, TypeError) as exc:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise UserError(f"--backend: no Kubernetes cluster configured (not in a pod, and {where} is not usable: "
                        f"{' '.join(str(exc).split())}); use --backend local or set KUBECONFIG") from None
    return client.CustomObjectsApi(), CoreApi(client.CoreV1Api())


def delete_live_jobs(api, namespace: str, run_id: str) -> list[str]:
    """Delete the unfinished jobs (both kinds) labelled with `run_id`: the exit handler's cleanup after a
    terminated run. Finished jobs stay for inspection until their TTL. Returns the deleted names."""
    if not run_id:
        raise UserError("run id: empty; the step reads it from its pod label pipeline/runid")
    deleted = []
    for backend in RESOURCES:
        watcher = JobWatcher(api, backend)
        try:
            live = watcher.live_jobs(namespace, f"{LABEL_RUN}={run_id}")
        except Exception as exc:
            if _api_status(exc) == 404:  # the CRD is not installed: nothing of that kind can exist
                continue
            raise
        for job in live:
            watcher.delete(namespace, job["metadata"]["name"])
            deleted.append(f"{watcher.res.kind}/{job['metadata']['name']}")
    return deleted


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
