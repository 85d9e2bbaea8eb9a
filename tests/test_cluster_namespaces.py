"""Namespaces as Kubeflow has them: a profile namespace (multi-user) and KFP's own namespace (standalone), the
RBAC of the account the docs offer for `service_account=`, and the credentials a profile already has.

Upstream rules encoded here (kubeflow/manifests, kubeflow/pipelines, kustomize):
- the profile controller (`applications/pipeline/upstream/base/installs/multi-user/pipelines-profile-controller/
  sync.py`) creates the namespace's `kfp-launcher` ConfigMap and `mlpipeline-minio-artifact` Secret (keys
  `accesskey` / `secretkey`) and recreates them when deleted: an overlay must not create or replace them;
- a kustomize `namespace:` override does not rewrite RoleBinding `subjects[].namespace`;
- KFP's `pipeline-runner` Role (`applications/pipeline/upstream/base/pipeline/pipeline-runner-role.yaml`) is
  what a pipeline pod's account needs (driver/launcher read Secrets and ConfigMaps, Argo writes
  workflowtaskresults).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from beit3ops import kfp_io

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "manifests" / "overlays"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

# kubeflow/manifests applications/pipeline/upstream/base/pipeline/pipeline-runner-role.yaml, rule by rule
UPSTREAM_PIPELINE_RUNNER = [
    ([""], ["secrets"], ["get"]),
    ([""], ["configmaps"], ["get", "watch", "list"]),
    ([""], ["persistentvolumes", "persistentvolumeclaims"], ["*"]),
    (["snapshot.storage.k8s.io"], ["volumesnapshots"], ["create", "delete", "get"]),
    (["argoproj.io"], ["workflows"], ["get", "list", "watch", "update", "patch"]),
    ([""], ["pods", "pods/exec", "pods/log", "services"], ["*"]),
    (["", "apps", "extensions"], ["deployments", "replicasets"], ["*"]),
    (["kubeflow.org"], ["*"], ["*"]),
    (["batch"], ["jobs"], ["*"]),
    (["machinelearning.seldon.io"], ["seldondeployments"], ["*"]),
    (["argoproj.io"], ["workflowtaskresults"], ["create", "patch"]),
]


def render(path: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    """Kubernetes RBAC: a request is allowed when one rule matches its group, resource and verb (`*` matches all)."""
    return any((group in r["apiGroups"] or "*" in r["apiGroups"])
               and (resource in r["resources"] or "*" in r["resources"])
               and (verb in r["verbs"] or "*" in r["verbs"]) for r in rules)


def rules_of(objs: list[dict], account: str) -> list[dict]:
    """Every rule granted to ServiceAccount `account` of the objects' namespace by the rendered RoleBindings."""
    roles = {r["metadata"]["name"]: r["rules"] for r in objs if r["kind"] == "Role"}
    out: list[dict] = []
    for b in (o for o in objs if o["kind"] == "RoleBinding"):
        ns = b["metadata"]["namespace"]
        if any(s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == ns for s in b["subjects"]):
            out += roles.get(b["roleRef"]["name"], [])
    return out


@needs_kubectl
def test_profile_overlay_creates_nothing_the_profile_controller_owns():
    objs = render(OVERLAYS / "profile")
    kinds = {o["kind"] for o in objs}
    assert "Namespace" not in kinds and "Secret" not in kinds and "ConfigMap" not in kinds
    (ns,) = {o["metadata"]["namespace"] for o in objs}
    assert ns == "kubeflow-user-example-com"  # the stock install's example profile


@pytest.mark.parametrize("overlay", ["profile", "standalone", "gpu"])
@needs_kubectl
def test_rolebinding_subjects_follow_the_namespace(overlay, tmp_path):
    """kustomize's namespace override leaves subjects[].namespace as written: each overlay copies its namespace
    into them. Shown with the namespace a user sets: the overlay's `namespace:` edited in a copy of manifests/."""
    copy = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    kustomization = copy / "overlays" / overlay / "kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text())
    doc["namespace"] = "team-vision"
    kustomization.write_text(yaml.safe_dump(doc))
    for objs, ns in ((render(OVERLAYS / overlay), None), (render(kustomization.parent), "team-vision")):
        bindings = [o for o in objs if o["kind"] == "RoleBinding"]
        assert len(bindings) == 2
        for b in bindings:
            expected = ns or b["metadata"]["namespace"]
            assert b["metadata"]["namespace"] == expected
            assert {s["namespace"] for s in b["subjects"]} == {expected}, b["metadata"]["name"]


@needs_kubectl
def test_a_plain_namespace_override_would_leave_subjects_behind(tmp_path):
    """The kustomize behaviour the overlays work around (without `replacements` the subjects keep `beit3`)."""
    shutil.copytree(ROOT / "manifests" / "base", tmp_path / "base")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "kustomization.yaml").write_text("namespace: team-vision\nresources:\n- ../base\n")
    bindings = [o for o in render(tmp_path / "plain") if o["kind"] == "RoleBinding"]
    assert {s["namespace"] for b in bindings for s in b["subjects"]} == {"beit3"}


@pytest.mark.parametrize("overlay", ["profile", "standalone", "cpu"])
@needs_kubectl
def test_the_offered_service_account_gets_what_pipeline_runner_gets(overlay):
    """docs/kubeflow.md offers service_account=beit3-pipeline-runner: it must be able to do everything KFP's
    pipeline-runner Role allows (kubeflow/manifests pipeline-runner-role.yaml), plus the training jobs."""
    objs = render(OVERLAYS / overlay)
    rules = rules_of(objs, "beit3-pipeline-runner")
    for groups, resources, verbs in UPSTREAM_PIPELINE_RUNNER:
        for group in groups:
            for resource in resources:
                for verb in verbs:
                    probe = "delete" if verb == "*" else verb
                    assert allows(rules, group, resource, probe), (group, resource, verb)
    assert allows(rules, "trainer.kubeflow.org", "trainjobs", "create")
    # the namespace's default accounts get the training-job rights (pipeline-runner's own role is KFP's)
    for account in ("default-editor", "pipeline-runner"):
        assert allows(rules_of(objs, account), "kubeflow.org", "pytorchjobs", "create"), account
        assert allows(rules_of(objs, account), "trainer.kubeflow.org", "trainjobs", "delete"), account


def test_kfp_credentials_become_the_aws_settings_beit3_reads():
    """A profile's mlpipeline-minio-artifact keys (mapped to KFP_S3_* by pipelines/full.py) fill AWS_* when the
    namespace has no beit3-s3 Secret; the endpoint is SeaweedFS's S3 port in stock Kubeflow manifests."""
    env = {"KFP_S3_ACCESS_KEY": "profile-key", "KFP_S3_SECRET_KEY": "profile-secret"}
    assert kfp_io.use_kfp_credentials(env)
    assert env["AWS_ACCESS_KEY_ID"] == "profile-key" and env["AWS_SECRET_ACCESS_KEY"] == "profile-secret"
    assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs.kubeflow.svc.cluster.local:8333"
    # beit3-s3 wins where the namespace has one; an explicit endpoint is kept
    own = {"AWS_ACCESS_KEY_ID": "own", "AWS_SECRET_ACCESS_KEY": "own-s", "KFP_S3_ACCESS_KEY": "p",
           "KFP_S3_SECRET_KEY": "q"}
    assert not kfp_io.use_kfp_credentials(own) and own["AWS_ACCESS_KEY_ID"] == "own"
    partial = {"KFP_S3_ACCESS_KEY": "p", "KFP_S3_SECRET_KEY": "q", "AWS_ENDPOINT_URL": "http://store:8333"}
    assert kfp_io.use_kfp_credentials(partial) and partial["AWS_ENDPOINT_URL"] == "http://store:8333"
    assert not kfp_io.use_kfp_credentials({})


def test_a_step_with_only_profile_credentials_reaches_the_store(s3_store, monkeypatch, tmp_path):
    """End to end against the local S3 store: the step's first kfp_io call turns the profile keys into AWS_*."""
    from beit3core import io

    env = s3_store["env"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KFP_S3_ACCESS_KEY", env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("KFP_S3_SECRET_KEY", env["AWS_SECRET_ACCESS_KEY"])

    class Artifact:  # KFP's default root in a profile is minio://mlpipeline/private-artifacts/<ns>/v2/artifacts
        uri = f"minio://{s3_store['bucket']}/test_cluster_namespaces/v2/artifacts/run/step/out"

    target = kfp_io.output_target(Artifact())
    io.write_json(io.join(target, "x.json"), {"ok": 1})
    assert io.read_json(io.join(target, "x.json")) == {"ok": 1}
    # the same object through s3://, the scheme a serving system pulls
    assert io.read_json(target.replace("minio://", "s3://", 1) + "/x.json") == {"ok": 1}


# Every Kubernetes API call of beit3ops.launch (watch.py: custom objects; pods.py: CoreV1Api), as the RBAC
# authorizer sees it: (API group, resource, verb).
LAUNCHER_CALLS = [
    ("kubeflow.org", "pytorchjobs", "create"), ("kubeflow.org", "pytorchjobs", "get"),
    ("kubeflow.org", "pytorchjobs", "list"), ("kubeflow.org", "pytorchjobs", "delete"),
    ("trainer.kubeflow.org", "trainjobs", "create"), ("trainer.kubeflow.org", "trainjobs", "get"),
    ("trainer.kubeflow.org", "trainjobs", "list"), ("trainer.kubeflow.org", "trainjobs", "delete"),
    ("", "pods", "list"), ("", "events", "list"), ("", "pods/log", "get"),
]


def test_launcher_calls_are_the_ones_the_role_lists():
    """The calls listed above are the ones the launcher code makes (a new call must be added here and to
    manifests/base/role.yaml)."""
    src = "".join((ROOT / "beit3ops" / "launch" / f).read_text() for f in ("watch.py", "pods.py"))
    for call in ("list_namespaced_pod", "list_namespaced_event", "read_namespaced_pod_log",
                 "create_namespaced_custom_object", "get_namespaced_custom_object",
                 "list_namespaced_custom_object", "delete_namespaced_custom_object"):
        assert call in src, call


@pytest.mark.parametrize("overlay", ["profile", "standalone", "cpu"])
@needs_kubectl
def test_every_account_that_launches_may_make_every_launcher_call(overlay):
    """Kubernetes RBAC denies what no bound rule allows: the launcher's start check and log streaming read pods,
    pods/log and events, which KFP's pipeline-runner role lacks for events (kubeflow/manifests
    pipeline-runner-role.yaml)."""
    objs = render(OVERLAYS / overlay)
    for account in ("beit3-pipeline-runner", "default-editor", "pipeline-runner"):
        rules = rules_of(objs, account)
        for group, resource, verb in LAUNCHER_CALLS:
            assert allows(rules, group, resource, verb), (account, group, resource, verb)


def test_training_jobs_started_on_profile_keys_read_them_from_the_profile_secret():
    """A profile namespace has mlpipeline-minio-artifact (keys `accesskey` / `secretkey`, kubeflow/manifests
    pipelines-profile-controller sync.py) and no beit3-s3: the job's pods take the same keys by secretKeyRef
    (never as plain values) and the endpoint the step used as plain env."""
    from beit3ops.launch import LaunchConfig
    from beit3ops.launch.specs import build_job

    env = {"KFP_S3_ACCESS_KEY": "profile-key", "KFP_S3_SECRET_KEY": "profile-secret"}
    assert kfp_io.use_kfp_credentials(env)
    cfg = LaunchConfig(image="img:1", **kfp_io.job_s3_settings("beit3-s3", env))
    (container,) = build_job(cfg, "pytorchjob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"]
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact", "key": "accesskey", "optional": False}
    assert by_name["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretkey"
    assert by_name["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": kfp_io.KFP_S3_ENDPOINT}
    assert "profile-secret" not in str(container)
    # with the namespace's own beit3-s3 keys in the step, the job reads beit3-s3 as before
    own = {"AWS_ACCESS_KEY_ID": "own", "KFP_S3_ACCESS_KEY": "profile-key"}
    assert kfp_io.job_s3_settings("beit3-s3", own) == {"s3_secret": "beit3-s3"}
