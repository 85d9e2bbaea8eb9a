"""The Model Registry client (`beit3 register`): record an evaluated model with its lineage, and refuse
models that fail the gate. (`beit3core.models.registry` is unrelated: the table of model architectures.)

A registration records the model's artifact URI, name, version, format, its evaluation metrics, the dataset
version it was trained on and the pipeline run that produced it. It is refused (a `RegistrationRefused`, a
user error: exit status 2) when the evaluation metrics are missing or any `--require METRIC>=VALUE`
threshold is not met.

Two back-ends, chosen by the registry address:

* `kubeflow:http://HOST:PORT` (or `https://`): the Kubeflow Model Registry through the `model-registry`
  client. The access token, when the server needs one, comes only from the environment
  (`MODEL_REGISTRY_TOKEN`, else the client's own service-account token lookup), never from arguments.
* `local:PATH` (default `local:artifacts/model_registry.json`): a JSON file (local or s3://) that
  `beit3 register list` prints without a cluster; what `dvc repro` uses.
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
    registered_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

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
        data = io.read_json(self.uri)
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise UserError(f"{self.uri}: not a model registry file (expected an object with a 'models' list)")
        return data["models"]

    def register(self, reg: Registration) -> dict:
        entries = self.entries()
        if any(e["name"] == reg.name and e["version"] == reg.version for e in entries):
            raise UserError(f"{self.uri}: model {reg.name!r} version {reg.version!r} is already registered")
        record = asdict(reg)
        parent = self.uri.rsplit("/", 1)[0] if "/" in self.uri else ""
        if parent and not io.is_remote(self.uri):
            io.makedirs(parent)
        io.write_json(self.uri, {"models": [*entries, record]})
        return record


class KubeflowRegistry:
    """The Kubeflow Model Registry (model-registry client); the client connects when it is created."""

    def __init__(self, address: str, *, author: str = "beit3-pipeline", client=None):
        if client is None:
            if not re.match(r"^https?://", address):
                raise UserError(f"--registry kubeflow:{address}: the address must start with http:// or https://")
            from model_registry import ModelRegistry

            token = os.environ.get(TOKEN_ENV) or None
            client = ModelRegistry(address, author=author, is_secure=address.startswith("https://"), user_token=token)
        self.client = client
        self.address = address

    def register(self, reg: Registration) -> dict:
        from model_registry.exceptions import StoreError

        try:
            self.client.register_model(
                reg.name,
                reg.uri,
                model_format_name=reg.model_format,
                model_format_version=reg.model_format_version,
                version=reg.version,
                version_description=reg.description or None,
                model_source_kind="kfp" if reg.run_id else None,
                model_source_class="pipelinerun" if reg.run_id else None,
                model_source_group=reg.namespace or None,
                model_source_id=reg.run_id or None,
                model_source_name=reg.run_name or None,
                metadata=reg.metadata(),
            )
        except StoreError as exc:  # e.g. "Version v1 already exists"
            raise UserError(f"model registry {self.address}: {exc}") from exc
        version = self.client.get_model_version(reg.name, reg.version)
        return {**asdict(reg), "registry_version_id": getattr(version, "id", None)}

    def entries(self) -> list[dict]:
        out = []
        for model in self.client.get_registered_models():
            for version in self.client.get_model_versions(model.name):
                art = self.client.get_model_artifact(model.name, version.name)
                out.append({"name": model.name, "version": version.name, "uri": getattr(art, "uri", ""),
                            "metadata": dict(getattr(version, "custom_properties", None) or {})})
        return out


def open_registry(address: str):
    """`local:PATH` -> LocalRegistry, `kubeflow:URL` -> KubeflowRegistry."""
    kind, _, target = address.partition(":")
    if kind == "local" and target:
        return LocalRegistry(target)
    if kind == "kubeflow" and target:
        return KubeflowRegistry(target)
    raise UserError(f"--registry {address!r}: expected local:PATH or kubeflow:http(s)://HOST:PORT")


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
    backend=None,
) -> dict:
    """Check the gate, then record the model. Returns the stored record."""
    if not name or not version:
        raise UserError("--name and --version must not be empty")
    if not io.exists(model_uri):
        raise UserError(f"{model_uri}: model not found")
    metrics = read_metrics(metrics_uri)
    check_requirements(metrics, list(requirements))
    reg = Registration(
        name=name,
        version=version,
        uri=model_uri,
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
    store = backend if backend is not None else open_registry(registry)
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
    p.add_argument("--registry", default=os.environ.get("BEIT3_REGISTRY", DEFAULT_REGISTRY),
                   help="local:PATH or kubeflow:http(s)://HOST:PORT")
    p.add_argument("--require", action="append", default=[], metavar="METRIC>=VALUE")
    p.add_argument("--dataset-version", default="")
    p.add_argument("--run-id", default="")
    p.add_argument("--run-name", default="")
    p.add_argument("--task", default="")
    p.add_argument("--format", default="pytorch", dest="model_format")
    p.add_argument("--description", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["list"]:
        ns = _list_parser().parse_args(argv[1:])
        _print_table(open_registry(ns.registry).entries())
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
    )
    print(f"registered {record['name']} {record['version']} -> {ns.registry}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
