"""Component shells: the artifact <-> URI mapping helpers, and component bodies called in-process through
`component.python_func` with real KFP artifact objects (the register gate; the pretrain step submitting a
schema-valid PyTorchJob through a fake Kubernetes API). The whole DAG runs in test_pipeline_local.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from kfp import compiler
from kfp.dsl import HTML, Dataset, Metrics, Model

from beit3core.errors import UserError
from beit3ops import k8s_schema, kfp_io, model_registry
from beit3ops.launch import cli as launch_cli
from components import IMAGE
from components.pretrain.component import pretrain
from components.register.component import register


def test_output_target_keeps_the_uri_under_the_pipeline_root(tmp_path):
    run = "beit3-full-2026-11-27-18-49-44-675190"
    art = Dataset(name="validated", uri=str(tmp_path / run / "validate-data" / "validated"))
    assert kfp_io.output_target(art) == art.uri == str(tmp_path / run / "validate-data" / "validated")
    html = HTML(name="report", uri=str(tmp_path / "r" / "t" / "report"))
    assert kfp_io.output_target(html, suffix=".html").endswith("/r/t/report.html")
    assert kfp_io.output_target(html, suffix=".html") == html.uri  # once


def test_log_metrics_logs_finite_numbers_with_dotted_names():
    m = Metrics(name="metrics", uri="/tmp/unused")
    flat = kfp_io.log_metrics(m, {"loss": 1.5, "r": {"i2t@1": 0.25}, "name": "x", "bad": float("nan"), "ok": True})
    assert flat == {"loss": 1.5, "r.i2t@1": 0.25, "ok": 1.0}
    assert m.metadata == {"loss": 1.5, "r.i2t@1": 0.25, "ok": 1.0}


def test_publish_html_copies_the_report(tmp_path):
    src = tmp_path / "report.html"
    src.write_text("<html>ok</html>")
    art = HTML(name="report", uri=str(tmp_path / "run" / "task" / "report"))
    target = kfp_io.publish_html(str(src), art)
    assert (tmp_path / "run" / "task" / "report.html").read_text() == "<html>ok</html>" and target == art.uri


def test_run_stage_fails_on_a_nonzero_status():
    def main(argv):
        return 3 if argv == ["--x", "1"] else 0

    kfp_io.run_stage(main, ["--y"])
    with pytest.raises(RuntimeError, match="exited with status 3"):
        kfp_io.run_stage(main, ["--x", 1])


def test_resolve_dataset_needs_exactly_one_source(tmp_path):
    assert kfp_io.resolve_dataset("s3://b/d", "", "", "data", str(tmp_path)) == ("s3://b/d", {"source": "s3://b/d"})
    with pytest.raises(UserError, match="exactly one"):
        kfp_io.resolve_dataset("", "", "", "data", str(tmp_path))
    with pytest.raises(UserError, match="exactly one"):
        kfp_io.resolve_dataset("s3://b/d", "https://git/x", "v1", "data", str(tmp_path))


# ------------------------------------------------------------------------------------------ register


@pytest.fixture
def evaluated(tmp_path):
    run = tmp_path / "ft"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.safetensors").write_bytes(b"w")
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"vqa_score": 66.0, "dataset_version": "md5:1234"}))
    return str(run), str(ev)


def test_register_component_records_lineage(evaluated, tmp_path):
    """Registration takes URIs (the launcher copies nothing into its pod); the dataset version comes from the
    evaluation's metrics.json."""
    run, evaluation = evaluated
    reg = tmp_path / "registry.json"
    version = register.python_func(
        finetuned_uri=run, evaluation_uri=evaluation, task={"task": "vqa", "require": ["vqa_score>=60"]},
        model_name="beit3", model_version="0.2.0", registry=f"local:{reg}", run_id="0123456789abcdef",
        run_name="beit3-full-run",
    )
    assert version == "0.2.0-01234567"
    (entry,) = model_registry.LocalRegistry(str(reg)).entries()
    assert entry["name"] == "beit3-vqa" and entry["uri"] == f"{run}/model"
    assert entry["dataset_version"] == "md5:1234" and entry["run_id"] == "0123456789abcdef"
    assert entry["metrics"] == {"vqa_score": 66.0}


def test_register_component_refuses_below_threshold(evaluated, tmp_path):
    run, evaluation = evaluated
    with pytest.raises(model_registry.RegistrationRefused, match="vqa_score=66 does not satisfy >=90"):
        register.python_func(finetuned_uri=run, evaluation_uri=evaluation,
                             task={"task": "vqa", "require": ["vqa_score>=90"]}, registry=f"local:{tmp_path / 'r.json'}")
    assert not (tmp_path / "r.json").exists()


def test_register_component_without_a_registry_checks_the_gate_only(evaluated, tmp_path):
    run, evaluation = evaluated
    task = {"task": "vqa", "require": ["vqa_score>=60"]}
    assert register.python_func(finetuned_uri=run, evaluation_uri=evaluation, task=task, registry="none") == "0.1.0"
    with pytest.raises(model_registry.RegistrationRefused):
        register.python_func(finetuned_uri=run, evaluation_uri=evaluation, registry="",
                             task={"task": "vqa", "require": ["vqa_score>=90"]})


# ------------------------------------------------------------------------------------------ pretrain


class _SucceedingApi:
    """The Kubernetes boundary only: records the job and reports it Succeeded at once."""

    def __init__(self):
        self.jobs = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.jobs.append(body)

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        return {"items": []}  # no earlier attempt to adopt

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}

    def delete_namespaced_custom_object(self, *a, **kw):
        raise AssertionError("a finished job is not deleted")


def test_pretrain_component_submits_a_valid_pytorchjob(tmp_path, monkeypatch):
    api = _SucceedingApi()
    monkeypatch.setattr(launch_cli, "kubernetes_apis", lambda: (api, None))
    monkeypatch.setenv("NAMESPACE", "team-ml")
    monkeypatch.setenv("KFP_RUN_ID", "8d3c1b2a-0000")
    run = tmp_path / "pipe-run" / "pretrain" / "model"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"step": 10, "loss": {"mlm": 2.5}}))
    model, metrics = Model(name="model", uri=str(run)), Metrics(name="metrics", uri=str(tmp_path / "m"))
    out = pretrain.python_func(
        validated_uri="s3://b/validated", text_tokens_uri="s3://b/text", visual_tokens_uri="s3://b/visual",
        model=model, metrics=metrics, arch="beit3_large_patch16_224", steps=10, extra_args=["--batch-pairs", "8"],
        backend="pytorchjob", image=IMAGE, replicas=4, gpus_per_replica=8, gpu_node_selector={"pool": "a100"},
        timeout_s=60,
    )
    assert out.model_dir == f"{run}/model"
    (job,) = api.jobs
    assert k8s_schema.validation_errors(job) == []
    assert job["metadata"]["namespace"] == "team-ml" and job["metadata"]["name"].startswith("beit3-pretrain-")
    assert job["metadata"]["labels"]["beit3.dev/run-id"] == "8d3c1b2a-0000"  # from the pod label, not a parameter
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3 and job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 60
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["image"] == IMAGE and c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    cmd = c["command"]
    assert cmd[:4] == ["torchrun", "--nproc-per-node=8", "-m", "beit3train.pretrain"]
    assert cmd[cmd.index("--out") + 1] == str(run) and cmd[cmd.index("--data") + 1] == "s3://b/validated"
    assert cmd[-2:] == ["--batch-pairs", "8"]
    assert metrics.metadata == {"step": 10.0, "loss.mlm": 2.5}
    assert model.metadata["arch"] == "beit3_large_patch16_224"


def test_every_component_compiles_on_its_own(tmp_path):
    from components.evaluate.component import evaluate
    from components.finetune.component import finetune
    from components.tokenize_text.component import tokenize_text
    from components.tokenize_visual.component import tokenize_visual
    from components.validate_data.component import validate_data

    for comp in (validate_data, tokenize_text, tokenize_visual, pretrain, finetune, evaluate, register):
        path = tmp_path / f"{comp.name}.yaml"
        compiler.Compiler().compile(comp, str(path))
        text = path.read_text()
        assert f"image: {IMAGE}" in text and "pip install" not in text, comp.name


@pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")
def test_resolve_dataset_fetches_a_dvc_tracked_folder_at_a_rev(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "data" / "text").mkdir(parents=True)
    (repo / "data" / "text" / "train.jsonl").write_text('{"id": "1", "text": "a red square"}\n')

    def sh(*cmd):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    from dvc.cli import main as dvc_main

    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert dvc_main(["init", "-q"]) == 0
        assert dvc_main(["add", "-q", "data"]) == 0
    finally:
        os.chdir(cwd)
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "v1")
    sh("git", "tag", "v1")
    (repo / "data" / "text" / "train.jsonl").write_text("changed after v1\n")  # not committed: v1 must win

    work = tmp_path / "work"
    work.mkdir()
    local, lineage = kfp_io.resolve_dataset("", str(repo), "v1", "data", str(work))
    assert (Path(local) / "text" / "train.jsonl").read_text() == '{"id": "1", "text": "a red square"}\n'
    assert lineage["dvc_rev"] == "v1" and lineage["source"] == f"{repo}@v1:data"


def test_log_metrics_can_leave_out_settings():
    m = Metrics(name="metrics", uri="/tmp/unused")
    assert kfp_io.log_metrics(m, {"acc1": 50.0, "settings": {"lr": 0.1}}, exclude=("settings",)) == {"acc1": 50.0}


def test_log_metrics_file_reads_the_stage_json_and_skips_a_missing_optional_one(tmp_path):
    m = Metrics(name="metrics", uri="/tmp/unused")
    (tmp_path / "summary.json").write_text('{"mim_acc": 0.25, "settings": {"lr": 0.1}}')
    assert kfp_io.log_metrics_file(m, str(tmp_path / "summary.json"), exclude=("settings",)) == {"mim_acc": 0.25}
    assert kfp_io.log_metrics_file(m, str(tmp_path / "absent.json"), required=False) == {}
    with pytest.raises(UserError, match="absent.json: no such file"):
        kfp_io.log_metrics_file(m, str(tmp_path / "absent.json"))


def test_dockerfile_installs_the_lock_file_and_runs_as_non_root():
    """No Docker daemon here: check the Dockerfile's decisive lines instead of building it."""
    root = Path(__file__).resolve().parents[1]
    lines = [ln.strip() for ln in (root / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert any(ln.startswith("ARG CUDA_BASE=nvidia/cuda:") for ln in lines)
    assert any("pip install -c constraints.txt" in ln for ln in lines)
    assert any("pip install --no-deps -e ." in ln for ln in lines)
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    ignored = (root / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
