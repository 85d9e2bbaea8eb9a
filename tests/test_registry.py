"""Model registration: the gate (missing metrics, thresholds), the local JSON registry and `beit3 register list`,
and the Kubeflow Model Registry back-end driven through the real `model-registry` client against an in-test
Flask fake of its REST API served on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import threading

import pytest

from beit3core.errors import UserError
from beit3ops import model_registry
from beit3ops.model_registry import RegistrationRefused, Requirement


@pytest.fixture
def model_and_metrics(tmp_path):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"task": "vqa", "metrics": {"accuracy": 0.62, "loss": 1.3, "per_type": {"yes/no": 0.8}}}))
    return str(model), str(metrics)


# ------------------------------------------------------------------------------------------ gate


def test_requirement_parsing_and_checks():
    r = Requirement.parse("accuracy>=0.5")
    assert (r.metric, r.op, r.value) == ("accuracy", ">=", 0.5)
    assert r.check({"accuracy": 0.5}) is None
    assert "does not satisfy >=0.5" in r.check({"accuracy": 0.49})
    assert "missing" in r.check({"loss": 1.0})
    assert Requirement.parse("loss < 2").check({"loss": 1.0}) is None
    assert Requirement.parse("accuracy>=0.1").check({"accuracy": float("nan")}) is not None
    with pytest.raises(UserError, match="--require 'accuracy=>0.5'"):
        Requirement.parse("accuracy=>0.5")


def test_flatten_metrics_unwraps_and_keeps_numbers_only():
    flat = model_registry.flatten_metrics({"metrics": {"acc": 1, "r": {"i2t": {"r@1": 0.5}}, "ok": True, "name": "x"}})
    assert flat == {"acc": 1.0, "r.i2t.r@1": 0.5}


def test_missing_or_empty_metrics_are_refused(model_and_metrics, tmp_path):
    model, _ = model_and_metrics
    reg = f"local:{tmp_path / 'reg.json'}"
    with pytest.raises(RegistrationRefused, match="evaluation metrics not found"):
        model_registry.register(model_uri=model, metrics_uri=str(tmp_path / "nope.json"), name="m", version="1", registry=reg)
    empty = tmp_path / "empty.json"
    empty.write_text('{"task": "vqa"}')
    with pytest.raises(RegistrationRefused, match="no numeric evaluation metrics"):
        model_registry.register(model_uri=model, metrics_uri=str(empty), name="m", version="1", registry=reg)
    assert not (tmp_path / "reg.json").exists()


def test_thresholds_refuse_and_nothing_is_written(model_and_metrics, tmp_path):
    model, metrics = model_and_metrics
    reg = tmp_path / "reg.json"
    reqs = [Requirement.parse("accuracy>=0.7"), Requirement.parse("bleu>=0.1")]
    with pytest.raises(RegistrationRefused) as info:
        model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"local:{reg}",
                          requirements=reqs)
    assert "accuracy=0.62 does not satisfy >=0.7" in str(info.value) and "'bleu' is missing" in str(info.value)
    assert not reg.exists()


def test_missing_model_is_a_user_error(model_and_metrics, tmp_path):
    _, metrics = model_and_metrics
    with pytest.raises(UserError, match="model not found"):
        model_registry.register(model_uri=str(tmp_path / "none"), metrics_uri=metrics, name="m", version="1",
                          registry=f"local:{tmp_path / 'r.json'}")


# ------------------------------------------------------------------------------------------ local registry


def test_local_registry_records_lineage_and_lists(model_and_metrics, tmp_path, capsys):
    model, metrics = model_and_metrics
    reg = f"local:{tmp_path / 'registry' / 'models.json'}"
    argv = ["--model-dir", model, "--metrics", metrics, "--name", "beit3-vqa", "--version", "0.1.0-abcd1234",
            "--registry", reg, "--require", "accuracy>=0.6", "--dataset-version", "md5:feed", "--run-id", "abcd1234",
            "--task", "vqa"]
    assert model_registry.main(argv) == 0
    (entry,) = model_registry.LocalRegistry(str(tmp_path / "registry" / "models.json")).entries()
    assert entry["uri"] == model and entry["version"] == "0.1.0-abcd1234"
    assert entry["metrics"]["accuracy"] == pytest.approx(0.62) and entry["metrics"]["per_type.yes/no"] == 0.8
    assert entry["dataset_version"] == "md5:feed" and entry["run_id"] == "abcd1234" and entry["task"] == "vqa"
    assert entry["model_format"] == "pytorch" and entry["model_format_version"].startswith("2.")
    with pytest.raises(UserError, match="already registered"):
        model_registry.main(argv)
    capsys.readouterr()
    assert model_registry.main(["list", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "beit3-vqa" in out and "0.1.0-abcd1234" in out and "accuracy=0.62" in out


def test_list_of_an_empty_registry_and_bad_addresses(tmp_path, capsys):
    assert model_registry.main(["list", "--registry", f"local:{tmp_path / 'none.json'}"]) == 0
    assert "no registered models" in capsys.readouterr().out
    with pytest.raises(UserError, match="expected local:PATH"):
        model_registry.open_registry("mlflow:http://x")
    with pytest.raises(UserError, match="must start with http"):
        model_registry.open_registry("kubeflow:model-registry-service:8080")


def test_local_registry_on_s3(s3_store, model_and_metrics):
    model, metrics = model_and_metrics
    uri = f"s3://{s3_store['bucket']}/registry/test_registry/models.json"
    model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="s3-1", registry=f"local:{uri}")
    assert [e["version"] for e in model_registry.LocalRegistry(uri).entries()] == ["s3-1"]


# ------------------------------------------------------------------------------------------ Kubeflow Model Registry

PREFIX = "/api/model_registry/v1"


def make_fake_model_registry():
    """An in-memory fake of the Model Registry REST routes the client uses."""
    from flask import Flask, jsonify, request

    app = Flask("fake-model-registry")
    db = {"rm": {}, "mv": {}, "art": {}, "auth": []}
    ids = itertools.count(1)

    def page(items):
        return jsonify({"items": items, "size": len(items), "pageSize": max(len(items), 1), "nextPageToken": ""})

    def not_found():
        return jsonify({"code": "404", "message": "not found"}), 404

    def stamp(body, **extra):
        body = {**body, **extra, "id": str(next(ids)), "createTimeSinceEpoch": "0", "lastUpdateTimeSinceEpoch": "0"}
        return body

    @app.before_request
    def remember_auth():
        db["auth"].append(request.headers.get("Authorization"))

    @app.get(f"{PREFIX}/registered_models")
    def list_models():
        return page(list(db["rm"].values()))

    @app.post(f"{PREFIX}/registered_models")
    def create_model():
        rm = stamp(request.get_json())
        db["rm"][rm["id"]] = rm
        return jsonify(rm), 201

    @app.get(f"{PREFIX}/registered_model")
    def find_model():
        hits = [m for m in db["rm"].values() if m["name"] == request.args.get("name")]
        return jsonify(hits[0]) if hits else not_found()

    @app.get(f"{PREFIX}/registered_models/<rid>/versions")
    def model_versions(rid):
        return page([v for v in db["mv"].values() if v["registeredModelId"] == rid])

    @app.post(f"{PREFIX}/model_versions")
    def create_version():
        mv = stamp(request.get_json())
        db["mv"][mv["id"]] = mv
        return jsonify(mv), 201

    @app.get(f"{PREFIX}/model_version")
    def find_version():
        hits = [v for v in db["mv"].values()
                if v["name"] == request.args.get("name") and v["registeredModelId"] == request.args.get("parentResourceId")]
        return jsonify(hits[0]) if hits else not_found()

    @app.post(f"{PREFIX}/model_versions/<vid>/artifacts")
    def add_artifact(vid):
        art = stamp(request.get_json(), parentVersion=vid)
        db["art"][art["id"]] = art
        return jsonify(art), 201

    @app.get(f"{PREFIX}/model_artifact")
    def find_artifact():
        hits = [a for a in db["art"].values()
                if a["name"] == request.args.get("name") and a["parentVersion"] == request.args.get("parentResourceId")]
        if not hits:
            return not_found()
        return jsonify({k: v for k, v in hits[0].items() if k != "parentVersion"})

    return app, db


@pytest.fixture
def fake_registry():
    from werkzeug.serving import make_server

    app, db = make_fake_model_registry()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", db
    finally:
        server.shutdown()
        thread.join(5)


def test_kubeflow_registry_records_the_model_with_lineage(fake_registry, model_and_metrics, monkeypatch):
    url, db = fake_registry
    model, metrics = model_and_metrics
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "t0ken")
    monkeypatch.setenv("NAMESPACE", "team-ml")
    record = model_registry.register(
        model_uri=model, metrics_uri=metrics, name="beit3-vqa", version="0.1.0-run1", registry=f"kubeflow:{url}",
        requirements=[Requirement.parse("accuracy>=0.6")], dataset_version="md5:feed", run_id="run1",
        run_name="full-pipeline-run1", task="vqa",
    )
    assert record["registry_version_id"]
    (rm,) = db["rm"].values()
    (mv,) = db["mv"].values()
    (art,) = db["art"].values()
    assert rm["name"] == "beit3-vqa" and mv["name"] == "0.1.0-run1" and mv["registeredModelId"] == rm["id"]
    assert art["uri"] == model and art["modelFormatName"] == "pytorch" and art["artifactType"] == "model-artifact"
    assert art["modelSourceKind"] == "kfp" and art["modelSourceClass"] == "pipelinerun"
    assert art["modelSourceId"] == "run1" and art["modelSourceGroup"] == "team-ml"
    props = mv["customProperties"]
    assert props["metric.accuracy"]["double_value"] == pytest.approx(0.62)
    assert props["dataset_version"]["string_value"] == "md5:feed"
    assert "Bearer t0ken" in db["auth"]  # the token came from the environment

    # the same (name, version) again is a user error, not a second version
    with pytest.raises(UserError, match="already exists"):
        model_registry.register(model_uri=model, metrics_uri=metrics, name="beit3-vqa", version="0.1.0-run1",
                          registry=f"kubeflow:{url}")
    assert len(db["mv"]) == 1
    entries = model_registry.open_registry(f"kubeflow:{url}").entries()
    assert [(e["name"], e["version"], e["uri"]) for e in entries] == [("beit3-vqa", "0.1.0-run1", model)]


def test_kubeflow_registry_refusal_never_contacts_the_server(fake_registry, model_and_metrics):
    url, db = fake_registry
    model, metrics = model_and_metrics
    with pytest.raises(RegistrationRefused):
        model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}",
                          requirements=[Requirement.parse("accuracy>=0.99")])
    assert db["auth"] == [] and db["rm"] == {}
