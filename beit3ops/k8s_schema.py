"""Offline validation of the custom resources we generate (PyTorchJob v1, TrainJob v1alpha1).

kubernetes-validate has no schema for custom resources and lets them pass silently, so we check them against
the CRD's own OpenAPI v3 schema (vendored in `beit3ops/crds/`, copied verbatim from kubeflow/training-operator
release-1.9 and kubeflow/trainer; provenance in `crds/SOURCES.md`). Two additions make the check useful:

* `strictify` rejects unknown fields. The API server prunes them silently, so a typo such as
  `imagePullPolice` would otherwise be lost without a word.
* the admission-webhook rules that the schema does not express: for a PyTorchJob (training-operator
  release-1.9 `pkg/webhooks/pytorch/pytorchjob_webhook.go`) the container named `pytorch`, exactly one
  Master, only Master/Worker replica types, `cleanPodPolicy` values, elastic-policy constraints; for a
  TrainJob (kubeflow/trainer v2.2.0 `pkg/runtime/framework/plugins/jobset/jobset.go` ValidateObjects) a
  domain-prefixed `runtimePatches[].manager`, patched containers that exist in the runtime's job, and no
  env on the `node` container of a patch.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from pathlib import Path

import jsonschema
import yaml

from beit3core.errors import UserError

log = logging.getLogger(__name__)

CRD_DIR = Path(__file__).resolve().parent / "crds"

# (apiVersion, kind) -> (CRD file, version name)
KNOWN_KINDS = {
    ("kubeflow.org/v1", "PyTorchJob"): ("kubeflow.org_pytorchjobs.yaml", "v1"),
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
}
PYTORCHJOB_REPLICA_TYPES = ("Master", "Worker")
CLEAN_POD_POLICIES = ("All", "Running", "None")
# The replicated jobs and their containers of the stock `torch-distributed` ClusterTrainingRuntime
# (kubeflow/trainer manifests/base/runtimes/torch_distributed.yaml): what a runtime patch may name.
TORCH_RUNTIME_CONTAINERS = {"node": {"node"}}
# k8s.io/apimachinery/pkg/util/validation/validation.go: IsDNS1123Subdomain and httpPathFmt.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def strictify(schema: dict) -> dict:
    """A copy of `schema` in which every object node that lists `properties` forbids other properties.

    Nodes marked `x-kubernetes-preserve-unknown-fields` or that already define `additionalProperties` keep
    their rule; `enum` values are data, not schema, and are left untouched.
    """
    out = copy.deepcopy(schema)
    _strictify_in_place(out)
    return out


def _strictify_in_place(node) -> None:
    if isinstance(node, list):
        for item in node:
            _strictify_in_place(item)
        return
    if not isinstance(node, dict):
        return
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key, value in node.items():
        if key in ("enum", "default", "example"):
            continue
        if key == "properties":
            for sub in value.values():
                _strictify_in_place(sub)
        else:
            _strictify_in_place(value)


def load_crd(file_name: str, crd_dir: Path | str | None = None) -> dict:
    """The parsed CRD document `file_name` from `crd_dir` (default: the vendored copy)."""
    path = Path(crd_dir or CRD_DIR) / file_name
    if not path.is_file():
        raise UserError(f"{path}: CRD schema file not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def crd_schema(crd: dict, version: str) -> dict:
    """`spec.versions[name=version].schema.openAPIV3Schema` of a CRD document."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version!r}")


@functools.lru_cache(maxsize=8)
def _validator(api_version: str, kind: str, crd_dir: str | None):
    file_name, version = KNOWN_KINDS[(api_version, kind)]
    schema = strictify(crd_schema(load_crd(file_name, crd_dir), version))
    return jsonschema.Draft7Validator(schema)


def schema_errors(obj: dict, crd_dir: Path | str | None = None) -> list[str]:
    """Messages for every place where `obj` breaks its (strictified) CRD schema; [] when it conforms."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KNOWN_KINDS:
        known = ", ".join(f"{a} {k}" for a, k in KNOWN_KINDS)
        return [f"unknown custom resource {key[0]} {key[1]} (known: {known})"]
    validator = _validator(key[0], key[1], str(crd_dir) if crd_dir else None)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def pytorchjob_rule_errors(job: dict) -> list[str]:
    """The training-operator webhook rules for a PyTorchJob that its CRD schema does not express."""
    errors = []
    spec = job.get("spec") or {}
    replicas = spec.get("pytorchReplicaSpecs") or {}
    for rtype, rspec in replicas.items():
        if rtype not in PYTORCHJOB_REPLICA_TYPES:
            errors.append(f"spec.pytorchReplicaSpecs.{rtype}: replica type must be one of Master, Worker")
            continue
        containers = (((rspec or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        main = [c for c in containers if c.get("name") == "pytorch"]
        if not main:
            errors.append(f"spec.pytorchReplicaSpecs.{rtype}: needs a container named 'pytorch'")
        elif not main[0].get("image"):
            errors.append(f"spec.pytorchReplicaSpecs.{rtype}: container 'pytorch' has no image")
    if "Master" in replicas and (replicas["Master"] or {}).get("replicas", 1) != 1:
        errors.append("spec.pytorchReplicaSpecs.Master.replicas: must be exactly 1")
    policy = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if policy is not None and policy not in CLEAN_POD_POLICIES:
        errors.append(f"spec.runPolicy.cleanPodPolicy: {policy!r} is not one of {', '.join(CLEAN_POD_POLICIES)}")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replicas:
            errors.append("spec.elasticPolicy: needs a Worker replica spec")
        if "nProcPerNode" in elastic and "nprocPerNode" in spec:
            errors.append("spec.elasticPolicy.nProcPerNode: cannot be combined with spec.nprocPerNode")
    nproc = spec.get("nprocPerNode")
    if isinstance(nproc, str) and nproc not in ("auto", "cpu", "gpu") and not nproc.isdigit():
        errors.append(f"spec.nprocPerNode: {nproc!r} is not auto, cpu, gpu or an integer string")
    return errors


def domain_prefixed_path_errors(path: str) -> list[str]:
    """apimachinery `validation.IsDomainPrefixedPath`: '<DNS-1123 subdomain>/<HTTP path>', e.g. acme.io/foo."""
    if not path:
        return ["Required value"]
    host, sep, rest = path.partition("/")
    if not sep or not host or not rest:
        return [f"{path!r}: must be a domain-prefixed path (such as \"acme.io/foo\")"]
    errors = []
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(host):
        errors.append(f"{host!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                      "'-' or '.', and must start and end with an alphanumeric character")
    if not _HTTP_PATH.match(rest):
        errors.append(f"{rest!r}: Invalid path")
    return errors


def trainjob_rule_errors(job: dict, runtime_containers: dict | None = None) -> list[str]:
    """The Trainer admission-webhook rules for a TrainJob's runtimePatches (Trainer v2.2.0 jobset.go
    ValidateObjects) that its CRD schema does not express. `runtime_containers`: replicated job -> container
    names of the referenced runtime (default: the stock torch-distributed runtime)."""
    runtime_containers = TORCH_RUNTIME_CONTAINERS if runtime_containers is None else runtime_containers
    errors = []
    for i, patch in enumerate((job.get("spec") or {}).get("runtimePatches") or []):
        where = f"spec.runtimePatches[{i}]"
        errors += [f"{where}.manager: {e}" for e in domain_prefixed_path_errors(patch.get("manager") or "")]
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in template.get("replicatedJobs") or []:
            containers = runtime_containers.get(rjob.get("name"))
            if containers is None:
                errors.append(f"{where}: must not have replicated job that doesn't exist in the runtime job template "
                              f"({rjob.get('name')!r})")
                continue
            pod = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                if c.get("name") not in containers:
                    errors.append(f"{where}: must not have container that doesn't exist in the runtime job "
                                  f"{rjob.get('name')} ({c.get('name')!r})")
                elif c.get("env") and c.get("name") in ("node", "dataset-initializer", "model-initializer"):
                    errors.append(f"{where}: must not have envs for the dataset-initializer, model-initializer, node "
                                  "containers")
    return errors


def validation_errors(obj: dict, crd_dir: Path | str | None = None) -> list[str]:
    """Schema errors plus the admission-webhook rule errors of the job's kind."""
    errors = schema_errors(obj, crd_dir)
    if obj.get("kind") == "PyTorchJob":
        errors += pytorchjob_rule_errors(obj)
    elif obj.get("kind") == "TrainJob":
        errors += trainjob_rule_errors(obj)
    return errors


def validate(obj: dict, crd_dir: Path | str | None = None) -> dict:
    """Return `obj` unchanged when it is a valid resource; raise UserError naming every problem otherwise."""
    errors = validation_errors(obj, crd_dir)
    if errors:
        name = (obj.get("metadata") or {}).get("name", "?")
        raise UserError(f"{obj.get('kind')} {name} is invalid: " + "; ".join(errors))
    return obj
