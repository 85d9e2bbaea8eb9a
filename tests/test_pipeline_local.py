"""The whole pipeline without a cluster: kfp.local SubprocessRunner (use_venv=False) on a tiny slice of the
synthetic collection read from the local S3 store, every stage output under the local pipeline root (steps
pass each other URIs), pretraining as 2 local torchrun processes, two tasks fine-tuned in parallel, evaluated
and registered, inside the exit handler. Then every artifact it produced is checked."""

from __future__ import annotations

import json
import re

import pytest

from beit3core import io

pytestmark = [
    pytest.mark.slow,
    # expected: the local runner ignores resources, accelerators and the image parameter
    pytest.mark.filterwarnings("ignore::UserWarning:kfp.local"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:kfp.local"),
]

TASKS = [
    {"task": "classification", "data": "tasks/classification",
     "args": ["--arch", "beit3_tiny_patch8_64", "--steps", "2", "--batch-size", "4", "--eval-batch-size", "8",
              "--max-eval-examples", "8", "--no-progress"],
     "eval_args": ["--max-examples", "8", "--batch-size", "8", "--no-progress"],
     "require": ["acc1>=0"]},
    {"task": "retrieval", "data": "tasks/retrieval",
     "args": ["--arch", "beit3_tiny_patch8_64", "--steps", "2", "--batch-size", "4", "--eval-batch-size", "8",
              "--max-eval-examples", "8", "--no-progress"],
     "eval_args": ["--max-examples", "8", "--batch-size", "8", "--no-progress"],
     "require": []},
]


@pytest.fixture
def local_runner(tmp_path):
    from kfp import local
    from kfp.local import config

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "local_outputs"))
    try:
        yield tmp_path / "local_outputs"
    finally:
        config.LocalExecutionConfig.instance = None  # later tests compile pipelines instead of running them


def _one(uris: list[str], needle: str) -> str:
    """The one URI that contains `needle` (a regular expression)."""
    hits = [u for u in uris if re.search(needle, u)]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def test_full_pipeline_runs_locally(s3_store, s3_prefix, tmp_path, local_runner):
    from beit3core.data import cli as data_cli
    from pipelines.full import full_pipeline

    raw = tmp_path / "raw"
    assert data_cli.main(["synth", str(raw), "--scale", "0.02", "--seed", "1"]) == 0
    dataset_uri = f"{s3_prefix}/raw"
    io.put_dir(str(raw), dataset_uri)
    registry_file = tmp_path / "registry.json"

    full_pipeline(
        dataset_uri=dataset_uri,
        text_vocab_size=60,
        visual_codebook_size=32,
        visual_img_size=64,
        visual_patch_size=8,
        visual_epochs=1,
        visual_args=["--max-train-images", "48", "--batch-size", "16", "--no-progress"],
        arch="beit3_tiny_patch8_64",
        pretrain_steps=2,
        pretrain_args=["--batch-images", "2", "--batch-texts", "2", "--batch-pairs", "2", "--ckpt-every", "1"],
        launcher_backend="local",
        replicas=1,
        gpus_per_replica=0,
        nproc_per_replica=2,
        tasks=TASKS,
        model_name="beit3-test",
        model_version="0.0.1",
        registry=f"local:{registry_file}",
    )

    # every stage wrote its outputs under the pipeline root, in one run folder
    output_root = str(local_runner)
    objects = [str(p) for p in local_runner.rglob("*") if p.is_file() and ".kfp_cache" not in p.parts]
    (run,) = {u[len(output_root) + 1:].split("/")[0] for u in objects}
    assert run.startswith("beit3-full-")
    validated = _one(objects, "/validate-data/validated/validation.json").rsplit("/", 1)[0]
    summary = io.read_json(io.join(validated, "validation.json"))
    assert summary  # the validation report
    assert io.exists(io.join(validated, "tasks", "classification", "dataset.json"))
    assert any(u.endswith(".tar") for u in objects if "/validate-data/validated/" in u)  # WebDataset shards
    assert io.read_text(_one(objects, "/validate-data/data_docs.html")).lstrip().lower().startswith("<")
    assert any("/tokenize-text/text_tokens/tokenizer/" in u for u in objects)
    assert not any("/tokenize-text/text_tokens/tokens/" in u for u in objects)  # texts are tokenized in the loader
    assert any("/tokenize-visual/visual_tokens/tokenizer/" in u for u in objects)
    assert any("/tokenize-visual/visual_tokens/tokens/" in u and u.endswith(".npz") for u in objects)
    pre = _one(objects, "/pretrain/model/model/model.safetensors").rsplit("/model/model.safetensors", 1)[0]
    pre_summary = io.read_json(io.join(pre, "summary.json"))
    assert pre_summary["steps"] == 2 and pre_summary["world_size"] == 2  # two torchrun processes
    assert any(u.startswith(f"{pre}/checkpoints/") for u in objects)

    # one fine-tuning run per task, each in its loop iteration's folder (found by its metrics' task name)
    runs = {io.read_json(u.replace("/model/model.safetensors", "/metrics.json"))["task"]:
            u.rsplit("/model/model.safetensors", 1)[0]
            for u in objects if re.search(r"/finetune/model/model/model\.safetensors$", u)}
    assert sorted(runs) == sorted(t["task"] for t in TASKS), sorted(u for u in objects if "/finetune/" in u)
    for task in TASKS:
        ft = runs[task["task"]]
        it = re.escape(ft.rsplit("/finetune/model", 1)[0]) + "/"
        assert io.read_json(io.join(ft, "metrics.json"))["train"]["init"] == f"{pre}/model"
        _one(objects, f"{it}finetune/report.html")
        ev = _one(objects, f"{it}evaluate/evaluation/metrics.json")
        assert io.read_json(ev)["task"] == task["task"]
        assert "<" in io.read_text(_one(objects, f"{it}evaluate/report.html"))
        _one(objects, f"{it}evaluate/evaluation/report.html")

    # metrics shown in the UI live in the executor outputs
    executor_outputs = sorted(local_runner.rglob("executor_output.json"))
    logged = {p.parent.name: json.loads(p.read_text()) for p in executor_outputs}
    pre_metrics = logged["pretrain"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert pre_metrics["steps"] == 2 and "mlm_acc" in pre_metrics
    eval_metrics = logged["evaluate"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    # named `<task>.<metric>` so the run's compare view keeps the tasks apart
    (task_name,) = {k.split(".", 1)[0] for k in eval_metrics}
    assert task_name in {t["task"] for t in TASKS} and len(eval_metrics) > 1

    # both fine-tuned models are registered with their lineage
    entries = json.loads(registry_file.read_text())["models"]
    assert sorted(e["name"] for e in entries) == ["beit3-test-classification", "beit3-test-retrieval"]
    for e in entries:
        data = next(t["data"] for t in TASKS if e["name"] == f"beit3-test-{t['task']}")
        assert e["uri"].startswith(output_root) and e["uri"].endswith("/finetune/model/model")
        # the evaluated dataset's fingerprint (beit3core.tasks.report.metrics_document)
        assert e["dataset_version"] == io.fingerprint(io.join(validated, data, "dataset.json"))
        assert e["run_id"] and e["metrics"]
