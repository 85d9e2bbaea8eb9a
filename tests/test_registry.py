"""Model registration: the gate (missing metrics, thresholds on the task's own metric names), the local JSON
registry and `beit3 register list`, and the Kubeflow Model Registry back-end against in-test Flask fakes of
both API generations of its REST server (no Model Registry can run here), served on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

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
            "--registry", reg, "--require", "accuracy>=0.6", "--dataset-version", "md5:feed", "--run-id", "abcd1234"]
    assert model_registry.main(argv) == 0
    (entry,) = model_registry.LocalRegistry(str(tmp_path / "registry" / "models.json")).entries()
    assert entry["uri"] == model and entry["version"] == "0.1.0-abcd1234"
    assert entry["metrics"]["accuracy"] == pytest.approx(0.62) and entry["metrics"]["per_type.yes/no"] == 0.8
    assert entry["dataset_version"] == "md5:feed" and entry["run_id"] == "abcd1234"
    assert entry["model_format"] == "pytorch" and entry["model_format_version"].startswith("2.")
    # a retried step registers the same model again: success, still one record
    assert model_registry.main(argv) == 0
    assert len(model_registry.LocalRegistry(str(tmp_path / "registry" / "models.json")).entries()) == 1
    other = tmp_path / "other"
    other.mkdir()
    argv_other = [str(other) if a == model else a for a in argv]
    with pytest.raises(UserError, match="already registered with another model"):
        model_registry.main(argv_other)
    capsys.readouterr()
    assert model_registry.main(["list", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "beit3-vqa" in out and "0.1.0-abcd1234" in out and "accuracy=0.62" in out


def test_list_of_an_empty_registry_and_bad_addresses(tmp_path, capsys):
    assert model_registry.main(["list", "--registry", f"local:{tmp_path / 'none.json'}"]) == 0
    assert "no registered models" in capsys.readouterr().out
    with pytest.raises(UserError, match="expected local:PATH"):
        model_registry.open_registry("mlflow:http://x")
    with pytest.raises(UserError, match=r"expected http\(s\)://HOST"):
        model_registry.open_registry("kubeflow:model-registry-service:8080")


def test_local_registry_on_s3(s3_store, model_and_metrics):
    model, metrics = model_and_metrics
    uri = f"s3://{s3_store['bucket']}/registry/test_registry/models.json"
    model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="s3-1", registry=f"local:{uri}")
    assert [e["version"] for e in model_registry.LocalRegistry(uri).entries()] == ["s3-1"]


# ------------------------------------------------------------------------------------------ Kubeflow Model Registry



def test_thresholds_must_name_a_metric_the_task_writes(model_and_metrics, tmp_path):
    """`--require` on a metric the task's evaluation never writes (beit3core.tasks METRICS) is refused at once,
    before any file is read: such a threshold could only ever refuse the model."""
    model, metrics = model_and_metrics
    with pytest.raises(UserError, match=r"--require accuracy>=0.6: vqa evaluation writes vqa_score"):
        model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", task="vqa",
                                registry=f"local:{tmp_path / 'r.json'}", requirements=[Requirement.parse("accuracy>=0.6")])
    model_registry.check_metric_names("retrieval", [Requirement.parse("average_score>=10")])
    with pytest.raises(UserError, match="--task 'vqa2'"):
        model_registry.check_metric_names("vqa2", [])


def test_registry_none_checks_the_gate_and_records_nothing(model_and_metrics, tmp_path, capsys):
    model, metrics = model_and_metrics
    argv = ["--model-dir", model, "--metrics", metrics, "--name", "m", "--version", "1", "--registry", "none"]
    assert model_registry.main([*argv, "--require", "accuracy>=0.5"]) == 0
    assert "not registered: no registry configured" in capsys.readouterr().out
    with pytest.raises(RegistrationRefused):
        model_registry.main([*argv, "--require", "accuracy>=0.9"])
    assert model_registry.main(["list", "--registry", "none"]) == 0


def test_a_local_registry_that_is_a_folder_or_not_json_is_one_line(model_and_metrics, tmp_path, capsys):
    """issue 16: `register --registry local:<folder>` and a corrupt registry file end in `error: ...`, exit 2."""
    from beit3core.errors import run_main

    model, metrics = model_and_metrics
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for target, message in ((tmp_path, "is a folder"), (bad, "JSON")):
        argv = ["--model-dir", model, "--metrics", metrics, "--name", "m", "--version", "1",
                "--registry", f"local:{target}"]
        assert run_main(model_registry.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# ------------------------------------------------------------------------------------------ Kubeflow Model Registry


def make_fake_model_registry(api: str):
    """The Model Registry REST server of one API generation (kubeflow/model-registry), in memory:

    - routes only under /api/model_registry/<api>; any other path gets the Go router's plain-text
      `404 page not found` (what a v1alpha3 server answers the `model-registry` client 0.3.x's /v1 calls);
    - names are unique: a registered model per registry, a version per registered model, an artifact per
      version; a duplicate create answers 409 {"code": "Conflict", "message": "... already exists: conflict"}
      (internal/core/registered_model.go, model_version.go, artifact.go; platform/errors ErrToStatus);
    - the find routes (registered_model, model_version) answer 404 with a JSON Error when nothing matches;
    - `db["fail"]` makes the next requests to a route fail with 503 (a server or network fault mid-way).
    """
    from flask import Flask, jsonify, request

    app = Flask(f"fake-model-registry-{api}")
    prefix = f"/api/model_registry/{api}"
    db = {"rm": {}, "mv": {}, "art": {}, "auth": [], "fail": {}, "calls": []}
    ids = itertools.count(1)

    def error(code: int, text: str, message: str):
        return jsonify({"code": text, "message": message}), code

    def page(items):
        return jsonify({"items": items, "size": len(items), "pageSize": max(len(items), 1), "nextPageToken": ""})

    def stamp(body, **extra):
        return {**body, **extra, "id": str(next(ids)), "createTimeSinceEpoch": "0", "lastUpdateTimeSinceEpoch": "0"}

    @app.before_request
    def gate():
        db["auth"].append(request.headers.get("Authorization"))
        db["calls"].append((request.method, request.path))
        if not request.path.startswith(prefix + "/"):
            return "404 page not found\n", 404, {"Content-Type": "text/plain; charset=utf-8"}
        route = request.path[len(prefix):]
        for pattern, count in list(db["fail"].items()):
            if count and request.method == "POST" and route.endswith(pattern):
                db["fail"][pattern] = count - 1
                return error(503, "Service Unavailable", "injected fault")
        return None

    @app.get(f"{prefix}/registered_models")
    def list_models():
        return page(list(db["rm"].values()))

    @app.post(f"{prefix}/registered_models")
    def create_model():
        body = request.get_json()
        if any(m["name"] == body["name"] for m in db["rm"].values()):
            return error(409, "Conflict", f"registered model with name {body['name']} already exists: conflict")
        rm = stamp(body)
        db["rm"][rm["id"]] = rm
        return jsonify(rm), 201

    @app.get(f"{prefix}/registered_model")
    def find_model():
        hits = [m for m in db["rm"].values() if m["name"] == request.args.get("name")]
        return jsonify(hits[0]) if hits else error(404, "Not Found", "no registered models found: not found")

    @app.get(f"{prefix}/registered_models/<rid>/versions")
    def model_versions(rid):
        return page([v for v in db["mv"].values() if v["registeredModelId"] == rid])

    @app.post(f"{prefix}/model_versions")
    def create_version():
        body = request.get_json()
        if body["registeredModelId"] not in db["rm"]:
            return error(400, "Bad Request", "registered model not found: bad request")
        if any(v["name"] == body["name"] and v["registeredModelId"] == body["registeredModelId"]
               for v in db["mv"].values()):
            return error(409, "Conflict", f"model version with name {body['name']} already exists: conflict")
        mv = stamp(body)
        db["mv"][mv["id"]] = mv
        return jsonify(mv), 201

    @app.get(f"{prefix}/model_version")
    def find_version():
        hits = [v for v in db["mv"].values()
                if v["name"] == request.args.get("name") and v["registeredModelId"] == request.args.get("parentResourceId")]
        return jsonify(hits[0]) if hits else error(404, "Not Found", "no model versions found: not found")

    @app.get(f"{prefix}/model_versions/<vid>/artifacts")
    def version_artifacts(vid):
        return page([{k: v for k, v in a.items() if k != "parent"} for a in db["art"].values() if a["parent"] == vid])

    @app.post(f"{prefix}/model_versions/<vid>/artifacts")
    def add_artifact(vid):
        body = request.get_json()
        if any(a["name"] == body.get("name") and a["parent"] == vid for a in db["art"].values()):
            return error(409, "Conflict", f"model artifact with name {body['name']} already exists: conflict")
        art = stamp(body, parent=vid)
        db["art"][art["id"]] = art
        return jsonify({k: v for k, v in art.items() if k != "parent"}), 201

    return app, db


@pytest.fixture(params=["v1alpha3", "v1"])
def fake_registry(request):
    from werkzeug.serving import make_server

    app, db = make_fake_model_registry(request.param)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", db, request.param
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def s3_model(s3_store, model_and_metrics, request):
    """The model folder on the local S3 store (a URI a serving system could pull) and a local metrics file."""
    from beit3core import io

    model, metrics = model_and_metrics
    uri = f"s3://{s3_store['bucket']}/test_registry/{request.node.name}/model"
    for name in ("model.safetensors", "config.json"):
        io.write_bytes(f"{uri}/{name}", (Path(model) / name).read_bytes())
    return uri, metrics


def test_registration_against_both_api_generations(fake_registry, s3_model, monkeypatch):
    """Stock Kubeflow's server speaks /api/model_registry/v1alpha3, newer ones /v1: the client detects which
    (the other prefix gets the router's plain-text 404) and records model, version and artifact."""
    url, db, api = fake_registry
    model, metrics = s3_model
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "t0ken")
    monkeypatch.setenv("NAMESPACE", "team-ml")
    monkeypatch.setenv("MODEL_REGISTRY_STORAGE_KEY", "beit3-models")
    record = model_registry.register(
        model_uri=model, metrics_uri=metrics, name="beit3-vqa", version="0.1.0-run1", registry=f"kubeflow:{url}",
        requirements=[Requirement.parse("accuracy>=0.6")], dataset_version="md5:feed", run_id="run1",
        run_name="full-pipeline-run1",
    )
    assert record["registry_api"] == api and record["registry_version_id"]
    (rm,) = db["rm"].values()
    (mv,) = db["mv"].values()
    (art,) = db["art"].values()
    assert rm["name"] == "beit3-vqa" and mv["name"] == "0.1.0-run1" and mv["registeredModelId"] == rm["id"]
    assert art["uri"] == model and art["modelFormatName"] == "pytorch" and art["artifactType"] == "model-artifact"
    # what KServe needs to pull it: the storage-config entry and the key inside the bucket
    assert art["storageKey"] == "beit3-models" and art["storagePath"] == model.split("/", 3)[3]
    assert art["modelSourceKind"] == "kfp" and art["modelSourceClass"] == "pipelinerun"
    assert art["modelSourceId"] == "run1" and art["modelSourceGroup"] == "team-ml"
    props = mv["customProperties"]
    assert props["metric.accuracy"] == {"metadataType": "MetadataDoubleValue", "double_value": pytest.approx(0.62)}
    assert props["dataset_version"] == {"metadataType": "MetadataStringValue", "string_value": "md5:feed"}
    assert set(db["auth"]) == {"Bearer t0ken"}  # the token came from the environment
    entries = model_registry.open_registry(f"kubeflow:{url}").entries()
    assert [(e["name"], e["version"], e["uri"], e["run_id"]) for e in entries] == [("beit3-vqa", "0.1.0-run1", model, "run1")]


def test_a_retry_after_partial_success_completes(fake_registry, s3_model):
    """The version was created, then the artifact call failed (the server's 503, a killed pod): the retried
    registration finds the model and version (whose create now answers 409) and adds the artifact once."""
    url, db, _ = fake_registry
    model, metrics = s3_model
    db["fail"]["/artifacts"] = 1
    kwargs = {"model_uri": model, "metrics_uri": metrics, "name": "beit3-vqa", "version": "2",
              "registry": f"kubeflow:{url}", "storage_key": "kserve-s3"}
    with pytest.raises(UserError, match="HTTP 503: injected fault"):
        model_registry.register(**kwargs)
    assert len(db["mv"]) == 1 and not db["art"]
    model_registry.register(**kwargs)
    model_registry.register(**kwargs)  # and once more: still one of each
    assert (len(db["rm"]), len(db["mv"]), len(db["art"])) == (1, 1, 1)
    assert next(iter(db["art"].values()))["storageKey"] == "kserve-s3"


def test_a_create_refused_as_a_duplicate_is_found_again(fake_registry, s3_model, monkeypatch):
    """A concurrent attempt created the model between our find and our create: the 409 is not an error."""
    from beit3ops import model_registry_api

    url, db, _ = fake_registry
    model, metrics = s3_model
    real_find = model_registry_api.RegistryHTTP._find
    seen = []

    def first_find_misses(self, path, params, what):
        if path == "/registered_model" and not seen:
            seen.append(path)
            self._request("POST", "/registered_models", json={"name": params["name"]})  # the other attempt
            return None
        return real_find(self, path, params, what)

    monkeypatch.setattr(model_registry_api.RegistryHTTP, "_find", first_find_misses)
    model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}")
    assert len(db["rm"]) == 1 and len(db["art"]) == 1


def test_the_same_version_with_another_model_is_refused(fake_registry, s3_model, s3_store):
    url, db, _ = fake_registry
    model, metrics = s3_model
    model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}")
    with pytest.raises(UserError, match="already exists with another model"):
        model_registry.register(model_uri=model + "/", metrics_uri=metrics, name="m", version="1",
                                registry=f"kubeflow:{url}")
    assert len(db["art"]) == 1


def test_a_pinned_api_the_server_does_not_serve_is_one_line(fake_registry, s3_model, monkeypatch):
    """Pinning /v1 against a v1alpha3 server (or the reverse) gets the router's `404 page not found`."""
    url, db, api = fake_registry
    model, metrics = s3_model
    other = "v1" if api == "v1alpha3" else "v1alpha3"
    monkeypatch.setenv("MODEL_REGISTRY_API", other)
    with pytest.raises(UserError, match="HTTP 404: 404 page not found"):
        model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}")
    assert not db["rm"]
    record = model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1",
                                     registry=f"kubeflow:{url}", registry_api=api)
    assert record["registry_api"] == api


def test_kubeflow_registry_refusal_never_contacts_the_server(fake_registry, s3_model):
    url, db, _ = fake_registry
    model, metrics = s3_model
    with pytest.raises(RegistrationRefused):
        model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}",
                                requirements=[Requirement.parse("accuracy>=0.99")])
    assert db["calls"] == [] and db["rm"] == {}


def test_the_registered_uri_is_one_a_serving_system_can_pull(fake_registry, model_and_metrics, caplog):
    """KServe's storage initializer pulls s3:// (gs://, https://, pvc://...), not KFP's minio:// alias of the
    same store; a local path is recorded with a warning that nothing can pull it."""
    assert model_registry.serving_uri("minio://mlpipeline/private-artifacts/ns/v2/x/model") == \
        "s3://mlpipeline/private-artifacts/ns/v2/x/model"
    assert model_registry.storage_path("s3://mlpipeline/private-artifacts/ns/model") == "private-artifacts/ns/model"
    with pytest.raises(UserError, match="a URI a serving system can pull"):
        model_registry.serving_uri("ftp://host/model")
    url, db, _ = fake_registry
    model, metrics = model_and_metrics
    model_registry.register(model_uri=model, metrics_uri=metrics, name="m", version="1", registry=f"kubeflow:{url}")
    assert [a["uri"] for a in db["art"].values()] == [model]
    assert "a serving system cannot pull it" in caplog.text


def test_unreachable_or_malformed_kubeflow_urls_are_one_line(s3_model, capsys):
    """issue 16: an unreachable or malformed `kubeflow:` URL ends in one `error:` line and exit status 2."""
    from beit3core.errors import run_main

    model, metrics = s3_model
    for address, message in (("kubeflow:http://127.0.0.1:9", "cannot reach the server"),
                             ("kubeflow:http://", "expected http(s)://HOST"),
                             ("kubeflow:http://host:port", "Port could not be cast"),
                             ("kubeflow:ftp://host", "expected http(s)://HOST")):
        argv = ["--model-dir", model, "--metrics", metrics, "--name", "m", "--version", "1", "--registry", address]
        assert run_main(model_registry.main, argv) == 2, address
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (address, err)


def test_a_model_under_kfps_minio_root_is_registered_as_s3(fake_registry, s3_model):
    """In a profile the pipeline root is minio://mlpipeline/... (KFP's name for the S3 store): the registry gets
    the s3:// URI and the key inside the bucket, which KServe's storage initializer can pull."""
    url, db, _ = fake_registry
    model, metrics = s3_model
    minio = model.replace("s3://", "minio://", 1)
    record = model_registry.register(model_uri=minio, metrics_uri=metrics, name="m", version="1",
                                     registry=f"kubeflow:{url}")
    (art,) = db["art"].values()
    assert art["uri"] == record["uri"] == model and art["storagePath"] == model.split("/", 3)[3]
