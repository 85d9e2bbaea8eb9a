"""Pod admission in the namespaces manifests/ sets up, through a fake of the three steps a real API server runs
on every pod (no Kubernetes API can run here):

1. defaulting, `pkg/apis/core/v1/defaults.go` (SetDefaults_Pod): a container with a limit but no request for a
   resource gets request = limit;
2. the LimitRanger admission plugin, `plugin/pkg/admission/limitranger/admission.go`
   (mergeContainerResources): a container's missing limits and requests take the LimitRange's `default` and
   `defaultRequest`; then validation, `pkg/apis/core/validation` (ValidateResourceRequirements): a request
   above its limit makes the pod invalid;
3. the ResourceQuota admission, `pkg/quota/v1/evaluator/core/pods.go` (podComputeUsageHelper /
   enforcePodContainerConstraints): under a quota on requests.cpu / requests.memory / limits.memory every
   container, init containers included, must set that field ("failed quota: ...: must specify ..."), and the
   pod's usage must fit in what is left.

The pods are the ones KFP 2.16 starts: Argo's `init` and `wait` containers carry no resources (KFP removed
them from its Argo config: kubeflow/pipelines #9089) beside the step's `main` container.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

_SUFFIX = {"m": Fraction(1, 1000), "": Fraction(1), "k": Fraction(10**3), "M": Fraction(10**6),
           "G": Fraction(10**9), "T": Fraction(10**12), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
           "Gi": Fraction(2**30), "Ti": Fraction(2**40)}
COMPUTE = ("cpu", "memory")


class Refused(Exception):
    """The API server's answer to a pod it does not admit."""


def quantity(text) -> Fraction:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert m and m.group(2) in _SUFFIX, text
    return Fraction(m.group(1)) * _SUFFIX[m.group(2)]


def render(overlay: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def admit(pod: dict, limit_ranges: list[dict], quotas: list[dict]) -> dict:
    """The pod as stored after defaulting, LimitRanger and quota admission; `Refused` when it is not admitted."""
    pod = copy.deepcopy(pod)
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    for c in containers:  # 1. defaulting: requests from limits
        res = c.setdefault("resources", {})
        for name, value in res.get("limits", {}).items():
            res.setdefault("requests", {}).setdefault(name, value)
    for lr in limit_ranges:  # 2. LimitRanger: the namespace's defaults fill what is missing
        for item in lr["spec"]["limits"]:
            if item["type"] != "Container":
                continue
            for c in containers:
                res = c["resources"]
                for name, value in item.get("default", {}).items():
                    res.setdefault("limits", {}).setdefault(name, value)
                for name, value in item.get("defaultRequest", {}).items():
                    res.setdefault("requests", {}).setdefault(name, value)
    for c in containers:  # validation: request <= limit
        res = c["resources"]
        for name, limit in res.get("limits", {}).items():
            if name in res.get("requests", {}) and quantity(res["requests"][name]) > quantity(limit):
                raise Refused(f"{c['name']}: resources.requests.{name}: must be less than or equal to {name} limit")
    for quota in quotas:  # 3. quota: every container names what the quota counts, and the pod fits
        hard = quota["spec"]["hard"]
        missing: dict[str, list[str]] = {}
        for field in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory"):
            if field not in hard:
                continue
            kind, name = field.split(".")
            for c in containers:
                if name not in c["resources"].get(kind, {}):
                    missing.setdefault(field, []).append(c["name"])
        if missing:
            detail = "; ".join(f"{f} for: {','.join(n)}" for f, n in sorted(missing.items()))
            raise Refused(f"failed quota: {quota['metadata']['name']}: must specify {detail}")
        for field, limit in hard.items():
            kind, _, name = field.partition(".")
            if kind in ("requests", "limits") and name in COMPUTE:
                # a pod's usage: the larger of its biggest init container and the sum of its containers
                def use(cs, kind=kind, name=name):
                    return [quantity(c["resources"][kind][name]) for c in cs]
                init = use(pod["spec"].get("initContainers", []))
                used = max([sum(use(pod["spec"]["containers"]))] + init)
                if used > quantity(limit):
                    raise Refused(f"exceeded quota: {quota['metadata']['name']}, requested: {field}={used}")
    return pod


def kfp_pod(main_resources: dict) -> dict:
    """A KFP 2.16 step pod: Argo's init/wait containers without resources, the step's main container."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "beit3-full-abc-system-container-impl-1"},
            "spec": {"initContainers": [{"name": "init", "image": "argoexec"}],
                     "containers": [{"name": "wait", "image": "argoexec"},
                                    {"name": "main", "image": "beit3", "resources": main_resources}]}}


STEP = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}  # pipelines/full.py: register


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_without_a_limitrange_the_quota_refuses_argos_containers():
    """kubernetes pods.go: a container without requests under a requests.* quota is refused; that is every
    KFP pod (Argo's init/wait), so a quota alone makes the namespace unusable."""
    quotas = of_kind(render("gpu"), "ResourceQuota")
    with pytest.raises(Refused, match=r"must specify .*requests.cpu for: init,wait"):
        admit(kfp_pod(STEP), [], quotas)


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "profile"])
def test_every_overlay_with_a_quota_admits_kfp_pods(overlay):
    """Wherever manifests/ sets a ResourceQuota it also sets a LimitRange whose defaults cover every field the
    quota counts (LimitRanger mergeContainerResources, then the quota's must-specify rule)."""
    objs = render(overlay)
    quotas, ranges = of_kind(objs, "ResourceQuota"), of_kind(objs, "LimitRange")
    assert quotas and ranges
    stored = admit(kfp_pod(STEP), ranges, quotas)
    wait = stored["spec"]["containers"][0]["resources"]
    assert quantity(wait["requests"]["cpu"]) > 0 and quantity(wait["limits"]["memory"]) > 0
    assert stored["spec"]["containers"][1]["resources"]["requests"] == STEP["requests"]  # explicit values kept


def test_a_limitrange_default_limit_never_undercuts_an_explicit_request():
    """LimitRanger gives a default limit to a container that has a request but no limit; validation then
    refuses request > limit. The defaults therefore carry no cpu limit, and a big memory request needs its
    own limit (what pipelines/full.py sets on every step)."""
    objs = render("gpu")
    quotas, ranges = of_kind(objs, "ResourceQuota"), of_kind(objs, "LimitRange")
    (item,) = ranges[0]["spec"]["limits"]
    assert "cpu" not in item.get("default", {})
    admit(kfp_pod({"requests": {"cpu": "8", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}), ranges, quotas)
    with pytest.raises(Refused, match="must be less than or equal to memory limit"):
        admit(kfp_pod({"requests": {"cpu": "8", "memory": "8Gi"}}), ranges, quotas)


def test_the_quota_still_bounds_the_namespace():
    objs = render("cpu")
    quotas, ranges = of_kind(objs, "ResourceQuota"), of_kind(objs, "LimitRange")
    with pytest.raises(Refused, match="exceeded quota"):
        admit(kfp_pod({"requests": {"cpu": "64", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}), ranges, quotas)


def test_standalone_sets_no_quota_in_kfps_own_namespace():
    """Standalone KFP runs every pipeline in the API server's namespace (`kubeflow`), beside KFP's own
    servers: a quota or default limits there would cap and re-size them."""
    objs = render("standalone")
    assert not of_kind(objs, "ResourceQuota") and not of_kind(objs, "LimitRange")
