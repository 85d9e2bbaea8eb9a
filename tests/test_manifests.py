"""manifests/: every overlay renders with `kubectl kustomize`, every rendered object validates (built-in kinds
with kubernetes-validate --strict, custom resources against the strictified CRD schemas), and the objects
say what the launcher and the pipeline rely on (RBAC verbs, Secret keys, kfp-launcher pipeline root).
Profile and standalone namespaces, RBAC parity with KFP's pipeline-runner: tests/test_cluster_namespaces.py;
quota admission: tests/test_cluster_admission.py."""

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
OVERLAYS = ["cpu", "gpu", "profile", "standalone"]
OWN_NAMESPACE = ["cpu", "gpu"]  # the overlays that create their namespace, S3 Secret and kfp-launcher
SHARED_SCHEMAS = ROOT.parent / "shared" / "schemas"
KUBECTL = shutil.which("kubectl")
JOB_VERBS = ["create", "get", "list", "watch", "delete"]

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True, text=True, timeout=60,
        check=False,
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
    overlay, objs = rendered
    kinds = sorted(o["kind"] for o in objs)
    expected = ["Role", "Role", "RoleBinding", "RoleBinding", "ServiceAccount"]
    if overlay != "standalone":
        expected += ["LimitRange", "ResourceQuota"]
    if overlay in OWN_NAMESPACE:
        expected += ["ConfigMap", "Namespace", "Secret"]
    assert kinds == sorted(expected)
    for obj in objs:
        assert validation_errors(obj) == [], obj["kind"]
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces
    if overlay in OWN_NAMESPACE:
        assert namespaces == {by_kind(objs, "Namespace")[0]["metadata"]["name"]}


def test_role_grants_exactly_the_job_verbs(rendered):
    _, objs = rendered
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "beit3-training-jobs"]
    rules = {(g, res): r["verbs"] for r in role["rules"] for g in r["apiGroups"] for res in r["resources"]}
    read = ["get", "list", "watch"]  # the start check and log streaming only read pods, their logs and events
    assert rules == {("kubeflow.org", "pytorchjobs"): JOB_VERBS, ("trainer.kubeflow.org", "trainjobs"): JOB_VERBS,
                     ("", "pods"): read, ("", "events"): read, ("", "pods/log"): ["get"]}
    (binding,) = [b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    (sa,) = by_kind(objs, "ServiceAccount")
    assert {sa["metadata"]["name"], "default-editor", "pipeline-runner"} == {s["name"] for s in binding["subjects"]}


def test_secret_is_a_template_with_the_keys_the_launcher_reads():
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    for overlay in OWN_NAMESPACE:
        objs = render(overlay)
        (secret,) = by_kind(objs, "Secret")
        assert secret["metadata"]["name"] == LaunchConfig().s3_secret
        data = secret["stringData"]
        assert set(S3_SECRET_KEYS) == set(data)
        assert data["AWS_ACCESS_KEY_ID"].startswith("REPLACE_WITH")
        assert data["AWS_SECRET_ACCESS_KEY"].startswith("REPLACE_WITH")
        # `kubectl apply -k ... -l 'beit3.io/template!=true'` leaves the template out (docs/kubeflow.md)
        assert secret["metadata"]["labels"]["beit3.io/template"] == "true"
        assert all("beit3.io/template" not in o["metadata"].get("labels", {}) for o in objs if o is not secret)


def test_kfp_launcher_points_the_pipeline_root_at_s3():
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    for overlay in OWN_NAMESPACE:
        objs = render(overlay)
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
    gpus = {o: by_kind(render(o), "ResourceQuota")[0]["spec"]["hard"]["requests.nvidia.com/gpu"] for o in OWN_NAMESPACE}
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
