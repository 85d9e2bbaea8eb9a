"""The Model Registry client (`beit3 register`): record an evaluated model with its lineage, and refuse
models that fail the gate. (`beit3core.models.registry` is unrelated: the table of model architectures.)

A registration records the model's artifact URI, name, version, format, its evaluation metrics, the dataset
version it was trained on and the pipeline run that produced it. It is refused (a `RegistrationRefused`, a
user error: exit status 2) when the evaluation metrics are missing or any `--require METRIC>=VALUE`
threshold is not met. A threshold must name a metric the task's evaluation writes (`TASKS[task].METRICS`).

Back-ends, chosen by the registry address:

* `kubeflow:http://HOST:PORT` (or `https://`): the Kubeflow Model Registry over its REST API, either API
  generation (`/api/model_registry/v1alpha3` or `/v1`: detected, or pinned with $MODEL_REGISTRY_API /
  --registry-api). The model is registered under a URI a serving system can pull (minio:// becomes s3://,
  plus KServe's storage path and, from $MODEL_REGISTRY_STORAGE_KEY, its storage key). The access token,
  when the server needs one, comes only from the environment (`MODEL_REGISTRY_TOKEN`), never from arguments.
* `local:PATH` (default `local:artifacts/model_registry.json`): a JSON file (local or s3://) that
  `beit3 register list` prints without a cluster; what `dvc repro` uses.
* `none` (or empty): no registry is configured; the gate is still checked, nothing is recorded.

Registering the same model (name, version, URI) again succeeds without a second record, so a retried
pipeline step completes; the same name and version with another URI is refused.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import operator
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata as _metadata

from beit3core import io
from beit3core.errors import ArgumentParser, UserError, run_main

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = "local:artifacts/model_registry.json"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
API_ENV = "MODEL_REGISTRY_API"  # auto | v1 | v1alpha3
STORAGE_KEY_ENV = "MODEL_REGISTRY_STORAGE_KEY"  # KServe storage-config entry with the bucket's credentials
SERVABLE_SCHEMES = ("s3", "gs", "https", "http", "pvc", "oci", "hf")  # KServe storage initializer URIs
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_REQUIRE_RE = re.compile(r"^\s*([A-Za-z0-9_.\-/@]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")


class RegistrationRefused(UserError):
    """The model did not pass the registration gate (missing metrics or a failed threshold)."""


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        m = _REQUIRE_RE.match(text)
        if not m:
            raise UserError(f"--require {text!r}: expected METRIC>=VALUE (or <=, >, <, ==), e.g. accuracy>=0.7")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def check(self, metrics: dict[str, float]) -> str | None:
        """None when met, else the reason it is not."""
        if self.metric not in metrics:
            known = ", ".join(sorted(metrics)) or "none"
            return f"metric {self.metric!r} is missing (metrics: {known})"
        value = metrics[self.metric]
        if math.isnan(value) or not _OPS[self.op](value, self.value):
            return f"{self.metric}={value:g} does not satisfy {self.op}{self.value:g}"
        return None

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Registration:
    """Everything recorded about one registered model version."""

    name: str
    version: str
    uri: str
    metrics: dict[str, float]
    model_format: str = "pytorch"
    model_format_version: str = ""
    dataset_version: str = ""
    run_id: str = ""
    run_name: str = ""
    namespace: str = ""
    task: str = ""
    description: str = ""
    registered_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def metadata(self) -> dict[str, str | float]:
        """Flat custom properties for the Model Registry (it accepts only scalar values)."""
        meta: dict[str, str | float] = {f"metric.{k}": float(v) for k, v in self.metrics.items()}
        for key in ("dataset_version", "run_id", "run_name", "task"):
            if getattr(self, key):
                meta[key] = getattr(self, key)
        return meta


def flatten_metrics(obj, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of an evaluation report as {dotted.name: float}; a top-level "metrics" dict is unwrapped."""
    if prefix == "" and isinstance(obj, dict) and isinstance(obj.get("metrics"), dict):
        obj = obj["metrics"]
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_metrics(v, f"{prefix}{k}."))
    elif isinstance(obj, bool):
        pass
    elif isinstance(obj, (int, float)):
        out[prefix[:-1]] = float(obj)
    return out


def read_metrics(uri: str) -> dict[str, float]:
    """The evaluation metrics at `uri` (a metrics.json, or a folder holding one); refuse when absent or empty."""
    if not uri:
        raise RegistrationRefused("no evaluation metrics given (--metrics): refusing to register an unevaluated model")
    path = io.join(uri, "metrics.json") if io.exists(uri) and io.isdir(uri) else uri
    if not io.exists(path):
        raise RegistrationRefused(f"{path}: evaluation metrics not found: refusing to register")
    metrics = flatten_metrics(io.read_json(path))
    if not metrics:
        raise RegistrationRefused(f"{path}: no numeric evaluation metrics: refusing to register")
    return metrics


def check_metric_names(task: str, requirements: list[Requirement]) -> None:
    """Refuse thresholds on metrics the task's evaluation never writes (they could only ever refuse)."""
    from beit3core.tasks import TASKS

    if task not in TASKS:
        raise UserError(f"--task {task!r}: expected one of {', '.join(sorted(TASKS))}")
    known = TASKS[task].METRICS
    unknown = [str(r) for r in requirements if r.metric not in known]
    if unknown:
        raise UserError(f"--require {', '.join(unknown)}: {task} evaluation writes {', '.join(known)}")


def check_tasks(tasks: list) -> None:
    """The pipeline's `tasks` parameter: every entry names a known task, and its `require` thresholds parse and
    name metrics that task's evaluation writes (else every registration of it would be refused at the end)."""
    if not isinstance(tasks, list) or not tasks:
        raise UserError("tasks: expected a non-empty list of {\"task\": ..., \"require\": [...]} entries")
    for i, entry in enumerate(tasks):
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
            raise UserError(f"tasks[{i}]: expected an object with a \"task\" name")
        require = entry.get("require", [])
        if not isinstance(require, list):
            raise UserError(f"tasks[{i}].require: expected a list of METRIC>=VALUE strings")
        try:
            check_metric_names(entry["task"], [Requirement.parse(str(r)) for r in require])
        except UserError as exc:
            raise UserError(f"tasks[{i}] ({entry['task']}): {exc}") from None


def check_requirements(metrics: dict[str, float], requirements: list[Requirement]) -> None:
    failures = [reason for r in requirements if (reason := r.check(metrics))]
    if failures:
        raise RegistrationRefused("refusing to register: " + "; ".join(failures))


def _torch_format_version() -> str:
    try:
        return ".".join(_metadata.version("torch").split(".")[:2])
    except _metadata.PackageNotFoundError:
        return "2"


# ---------------------------------------------------------------------------------------------------------
# Back-ends


class LocalRegistry:
    """A JSON file of registrations: {"models": [Registration, ...]}, readable without a cluster."""

    def __init__(self, uri: str):
        self.uri = uri

    def entries(self) -> list[dict]:
        if not io.exists(self.uri):
            return []
        if io.isdir(self.uri):
            raise UserError(f"--registry local:{self.uri}: is a folder; name a JSON file, e.g. {self.uri}/models.json")
        try:
            data = io.read_json(self.uri)
        except ValueError as exc:
            raise UserError(f"{self.uri}: not a model registry file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise UserError(f"{self.uri}: not a model registry file (expected an object with a 'models' list)")
        return data["models"]

    def register(self, reg: Registration) -> dict:
        entries = self.entries()
        same = [e for e in entries if e["name"] == reg.name and e["version"] == reg.version]
        if same and same[0].get("uri") == reg.uri:  # a retry of a registration that went through
            log.info("%s version %s is already registered with this model: nothing to add", reg.name, reg.version)
            return same[0]
        if same:
            raise UserError(f"{self.uri}: model {reg.name!r} version {reg.version!r} is already registered "
                            f"with another model ({same[0].get('uri')})")
        record = asdict(reg)
        parent = self.uri.rsplit("/", 1)[0] if "/" in self.uri else ""
        if parent and not io.is_remote(self.uri):
            io.makedirs(parent)
        io.write_json(self.uri, {"models": [*entries, record]})
        return record


class KubeflowRegistry:
    """The Kubeflow Model Registry over its REST API (beit3ops.model_registry_api): either API generation,
    detected from the server unless `api` (or $MODEL_REGISTRY_API) pins one."""

    def __init__(self, address: str, *, author: str = "beit3-pipeline", api: str | None = None, http=None,
                 storage_key: str | None = None):
        from beit3ops.model_registry_api import RegistryHTTP

        api = api or os.environ.get(API_ENV) or "auto"
        self.http = http or RegistryHTTP(address, api=api, token=os.environ.get(TOKEN_ENV) or None)
        self.address = address
        self.author = author
        self.storage_key = os.environ.get(STORAGE_KEY_ENV, "") if storage_key is None else storage_key

    def register(self, reg: Registration) -> dict:
        """Find-or-create the model, its version and the version's model artifact: a retry after a partial
        success completes the registration; the same version with another model URI is refused."""
        storage_key = self.storage_key
        artifact = {"name": reg.name, "uri": reg.uri, "modelFormatName": reg.model_format,
                    "modelFormatVersion": reg.model_format_version, "storagePath": storage_path(reg.uri),
                    **({"storageKey": storage_key} if storage_key else {})}
        if reg.run_id:
            artifact.update(modelSourceKind="kfp", modelSourceClass="pipelinerun", modelSourceId=reg.run_id,
                            modelSourceGroup=reg.namespace or None, modelSourceName=reg.run_name or None)
        artifact = {k: v for k, v in artifact.items() if v not in (None, "")}
        model, _ = self.http.registered_model(reg.name, description=f"BEiT-3 {reg.task}".strip())
        version, _ = self.http.model_version(model["id"], reg.version, author=self.author,
                                             description=reg.description, properties=reg.metadata())
        existing = self.http.model_artifacts(version["id"])
        if any(a.get("uri") != reg.uri for a in existing):
            other = next(a.get("uri") for a in existing if a.get("uri") != reg.uri)
            raise UserError(f"model registry {self.address}: model {reg.name!r} version {reg.version!r} already "
                            f"exists with another model ({other}); register a new version")
        if not existing:
            self.http.add_model_artifact(version["id"], artifact)
        else:
            log.info("%s version %s was already registered with this model: nothing to add", reg.name, reg.version)
        return {**asdict(reg), "registry_version_id": version["id"], "registry_api": self.http.prefix_api()}

    def entries(self) -> list[dict]:
        from beit3ops.model_registry_api import plain_value

        out = []
        for model in self.http.registered_models():
            for version in self.http.versions_of(model["id"]):
                arts = self.http.model_artifacts(version["id"])
                props = {k: plain_value(v) for k, v in (version.get("customProperties") or {}).items()}
                out.append({"name": model["name"], "version": version["name"],
                            "uri": arts[0].get("uri", "") if arts else "", "metadata": props,
                            "dataset_version": props.get("dataset_version"), "run_id": props.get("run_id")})
        return out


def serving_uri(uri: str) -> str:
    """The model URI a serving system can pull: KServe's storage initializer knows s3:// (and gs://, https://,
    pvc://...), not KFP's minio:// scheme for the same S3 store. A local path (a model folder on a notebook's
    volume) is recorded as it is, with a warning: nothing outside this machine can pull it."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "minio":
        return "s3://" + uri.split("://", 1)[1]
    if not scheme:
        log.warning("%s: a local path; a serving system cannot pull it (register an s3:// model folder)", uri)
        return uri
    if scheme not in SERVABLE_SCHEMES:
        raise UserError(f"--model-dir {uri}: a Model Registry entry needs a URI a serving system can pull "
                        f"({', '.join(s + '://' for s in SERVABLE_SCHEMES)})")
    return uri


def storage_path(uri: str) -> str:
    """KServe's `storage.path`: the key inside the bucket of an s3:// URI (with `storageKey`, the entry of the
    storage-config Secret holding the endpoint and credentials)."""
    if uri.startswith("s3://"):
        return uri[len("s3://"):].partition("/")[2]
    return ""


def open_registry(address: str):
    """`local:PATH` -> LocalRegistry, `kubeflow:URL` -> KubeflowRegistry; "" or "none" -> None (no registry)."""
    if address.strip().lower() in ("", "none"):
        return None
    kind, _, target = address.partition(":")
    if kind == "local" and target:
        return LocalRegistry(target)
    if kind == "kubeflow" and target:
        return KubeflowRegistry(target)
    raise UserError(f"--registry {address!r}: expected local:PATH, kubeflow:http(s)://HOST:PORT or none")


def register(
    *,
    model_uri: str,
    metrics_uri: str,
    name: str,
    version: str,
    registry: str = DEFAULT_REGISTRY,
    requirements: list[Requirement] | tuple = (),
    dataset_version: str = "",
    run_id: str = "",
    run_name: str = "",
    task: str = "",
    model_format: str = "pytorch",
    description: str = "",
    registry_api: str | None = None,
    storage_key: str | None = None,
    backend=None,
) -> dict:
    """Check the gate, then record the model. Returns the stored record ({} when no registry is configured)."""
    if not name or not version:
        raise UserError("--name and --version must not be empty")
    if task:
        check_metric_names(task, list(requirements))
    store = backend if backend is not None else open_registry(registry)
    if isinstance(store, KubeflowRegistry):
        if registry_api:
            store.http.api = "" if registry_api == "auto" else registry_api
        if storage_key is not None:
            store.storage_key = storage_key
    uri = serving_uri(model_uri) if isinstance(store, KubeflowRegistry) else model_uri
    if not io.exists(model_uri):
        raise UserError(f"{model_uri}: model not found")
    metrics = read_metrics(metrics_uri)
    check_requirements(metrics, list(requirements))
    if store is None:
        log.info("no model registry configured (--registry none): %s %s passed the gate, not recorded", name, version)
        return {}
    reg = Registration(
        name=name,
        version=version,
        uri=uri,
        metrics=metrics,
        model_format=model_format,
        model_format_version=_torch_format_version(),
        dataset_version=dataset_version,
        run_id=run_id,
        run_name=run_name,
        namespace=os.environ.get("NAMESPACE", ""),
        task=task,
        description=description,
    )
    record = store.register(reg)
    log.info("registered %s version %s (%s)", name, version, model_uri)
    return record


# ---------------------------------------------------------------------------------------------------------
# CLI


def _print_table(entries: list[dict]) -> None:
    if not entries:
        print("no registered models")
        return
    rows = [("NAME", "VERSION", "METRICS", "DATASET", "RUN", "URI")]
    for e in entries:
        metrics = e.get("metrics") or {k[7:]: v for k, v in (e.get("metadata") or {}).items() if k.startswith("metric.")}
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
        rows.append((e["name"], e["version"], shown or "-", e.get("dataset_version") or "-", e.get("run_id") or "-", e["uri"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]))


def _list_parser() -> ArgumentParser:
    p = ArgumentParser(prog="beit3 register list", description="List registered models.")
    p.add_argument("--registry", default=os.environ.get("BEIT3_REGISTRY", DEFAULT_REGISTRY))
    return p


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="beit3 register",
        description="Register an evaluated model (refused when metrics are missing or below --require thresholds). "
        "`beit3 register list` prints the registry.",
    )
    p.add_argument("--model-dir", required=True, help="URI of the model folder (model.safetensors + config.json)")
    p.add_argument("--metrics", required=True, help="URI of the evaluation metrics.json (or its folder)")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--registry-api", choices=("auto", "v1", "v1alpha3"), default=None,
                   help="Kubeflow Model Registry API generation (default: $MODEL_REGISTRY_API, else detected)")
    p.add_argument("--storage-key", default=None,
                   help="KServe storage-config entry for the model's bucket (default: $MODEL_REGISTRY_STORAGE_KEY)")
    p.add_argument("--registry", default=os.environ.get("BEIT3_REGISTRY", DEFAULT_REGISTRY),
                   help="local:PATH, kubeflow:http(s)://HOST:PORT, or none (check the gate only)")
    p.add_argument("--require", action="append", default=[], metavar="METRIC>=VALUE")
    p.add_argument("--dataset-version", default="")
    p.add_argument("--run-id", default="")
    p.add_argument("--run-name", default="")
    p.add_argument("--task", default="", help="the evaluated task: --require must name one of its metrics")
    p.add_argument("--format", default="pytorch", dest="model_format")
    p.add_argument("--description", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["list"]:
        ns = _list_parser().parse_args(argv[1:])
        store = open_registry(ns.registry)
        _print_table(store.entries() if store is not None else [])
        return 0
    ns = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    record = register(
        model_uri=ns.model_dir,
        metrics_uri=ns.metrics,
        name=ns.name,
        version=ns.version,
        registry=ns.registry,
        requirements=[Requirement.parse(r) for r in ns.require],
        dataset_version=ns.dataset_version,
        run_id=ns.run_id,
        run_name=ns.run_name,
        task=ns.task,
        model_format=ns.model_format,
        description=ns.description,
        registry_api=ns.registry_api,
        storage_key=ns.storage_key,
    )
    if record:
        print(f"registered {record['name']} {record['version']} -> {ns.registry}")
    else:
        print(f"passed the gate; not registered: no registry configured (--registry {ns.registry or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
