"""manifests/: every overlay renders with `kubectl kustomize`, every rendered object validates (built-in kinds
with kubernetes-validate --strict, custom resources against the strictified CRD schemas), and the objects
say what the launcher and the pipeline rely on (RBAC verbs, Secret keys, kfp-launcher pipeline root)."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from beit3ops import k8s_schema
from beit3ops.launch.config import S3_SECRET_KEYS, LaunchConfig
from beit3ops.launch.specs import build_pytorchjob

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["cpu", "gpu"]
SHARED_SCHEMAS = ROOT.parent / "shared" / "schemas"
KUBECTL = shutil.which("kubectl")
JOB_VERBS = ["create", "get", "list", "watch", "delete"]

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validation_errors(obj: dict) -> list[str]:
    """Built-in kinds: kubernetes-validate strict; custom resources: the CRD schema plus webhook rules."""
    import kubernetes_validate

    if (obj.get("apiVersion"), obj.get("kind")) in k8s_schema.KNOWN_KINDS:
        return k8s_schema.validation_errors(obj)
    try:
        kubernetes_validate.validate(obj, "1.32", strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc).splitlines()[0]]
    except kubernetes_validate.SchemaNotFoundError as exc:  # an unknown custom resource must not pass silently
        return [f"no schema: {exc}"]
    return []


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    return request.param, render(request.param)


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def test_every_rendered_object_validates(rendered):
    _, objs = rendered
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ConfigMap", "Namespace", "ResourceQuota", "Role", "RoleBinding", "Secret", "ServiceAccount"]
    for obj in objs:
        assert validation_errors(obj) == [], obj["kind"]
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {by_kind(objs, "Namespace")[0]["metadata"]["name"]}


def test_role_grants_exactly_the_job_verbs(rendered):
    _, objs = rendered
    (role,) = by_kind(objs, "Role")
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
    assert rules == {("kubeflow.org", "pytorchjobs"): JOB_VERBS, ("trainer.kubeflow.org", "trainjobs"): JOB_VERBS}
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (sa,) = by_kind(objs, "ServiceAccount")
    assert sa["metadata"]["name"] in {s["name"] for s in binding["subjects"]}


def test_secret_is_a_template_with_the_keys_the_launcher_reads(rendered):
    _, objs = rendered
    (secret,) = by_kind(objs, "Secret")
    assert secret["metadata"]["name"] == LaunchConfig().s3_secret
    data = secret["stringData"]
    assert set(S3_SECRET_KEYS) == set(data)
    assert data["AWS_ACCESS_KEY_ID"].startswith("REPLACE_WITH") and data["AWS_SECRET_ACCESS_KEY"].startswith("REPLACE_WITH")
    # `kubectl apply -k ... -l 'beit3.io/template!=true'` leaves the template out (docs/kubeflow.md)
    assert secret["metadata"]["labels"]["beit3.io/template"] == "true"
    assert all("beit3.io/template" not in o["metadata"].get("labels", {}) for o in objs if o is not secret)


def test_kfp_launcher_points_the_pipeline_root_at_s3(rendered):
    _, objs = rendered
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "kfp-launcher"]
    assert cm["data"]["defaultPipelineRoot"].startswith("s3://")
    s3 = yaml.safe_load(cm["data"]["providers"])["s3"]["default"]
    ref = s3["credentials"]["secretRef"]
    (secret,) = by_kind(objs, "Secret")
    assert ref["secretName"] == secret["metadata"]["name"]
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(secret["stringData"])
    assert "?" not in cm["data"]["defaultPipelineRoot"]  # query-string endpoints do not work (#10318)


def test_overlays_size_the_quota():
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    gpus = {o: by_kind(render(o), "ResourceQuota")[0]["spec"]["hard"]["requests.nvidia.com/gpu"] for o in OVERLAYS}
    assert gpus["cpu"] == "0" and int(gpus["gpu"]) >= 8


@needs_kubectl
def test_the_chain_rejects_a_typo(tmp_path):
    """The same chain fails on an unknown field in a built-in kind and on a typo in a custom resource."""
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, lables: {a: b}}\n")
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True)
    (cm,) = list(yaml.safe_load_all(out.stdout))
    assert "'lables' was unexpected" in validation_errors(cm)[0]
    job = build_pytorchjob(LaunchConfig())
    job["spec"]["runPolicy"]["cleanPodPolicies"] = "All"
    assert any("'cleanPodPolicies' was unexpected" in e for e in validation_errors(job))


@pytest.mark.parametrize("name", sorted(k[0] for k in k8s_schema.KNOWN_KINDS.values()))
def test_vendored_crds_equal_the_shared_copies(name):
    vendored = k8s_schema.CRD_DIR / name
    assert vendored.is_file()
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip(f"{SHARED_SCHEMAS} is absent: nothing to compare the vendored copy with")
    assert filecmp.cmp(vendored, SHARED_SCHEMAS / name, shallow=False), f"{vendored} differs from {SHARED_SCHEMAS / name}"
