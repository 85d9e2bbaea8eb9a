"""What a Kubeflow user sees of an evaluation, and the registration settings checked before a run trains:

- the evaluate step's outputs in the run's UI: Metrics named `<task>.<metric>`, a ClassificationMetrics
  confusion matrix for classification and NLVR2 (kfp `ClassificationMetrics.log_confusion_matrix`, rendered
  by the KFP UI from the artifact's `confusionMatrix` metadata), a Markdown summary and the HTML report;
- evaluation and registration take URIs, so the KFP launcher downloads nothing into their pods (it copies
  every input artifact of a container in full: kubeflow/pipelines backend/src/v2/component/launcher_v2.go);
- the default registration thresholds name metrics evaluation writes (beit3core.tasks METRICS), checked
  when the pipeline compiles and by the run's first step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Markdown, Metrics

from beit3core.errors import UserError
from beit3core.tasks import TASKS
from beit3ops import model_registry
from beit3train import evaluate as evaluate_stage
from components.evaluate.component import evaluate
from components.register.check import check_tasks
from pipelines import full


def _fake_stage(task: str, labels: list[str] | None):
    """Stands in for `beit3 evaluate` (tested with real models in test_finetune_cli): writes its outputs."""

    def main(argv):
        out = argv[argv.index("--out") + 1]
        doc = {"task": task, "split": "test", "data": "s3://b/v/tasks/" + task, "dataset_version": "md5:9",
               "selection_key": TASKS[task].SELECTION_METRIC, "num_examples": 4,
               **{m: 50.0 + i for i, m in enumerate(TASKS[task].METRICS)}}
        (out_dir := Path(out)).mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(doc))
        (out_dir / "report.html").write_text("<html>report</html>")
        if labels:
            (out_dir / "confusion_matrix.json").write_text(json.dumps({"labels": labels, "matrix": [[3, 1], [0, 4]]}))
        return 0

    return main


@pytest.mark.parametrize("task,labels", [("nlvr2", ["False", "True"]), ("vqa", None)])
def test_evaluate_step_shows_metrics_confusion_matrix_and_summary(task, labels, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_stage, "main", _fake_stage(task, labels))
    outs = {"evaluation": Artifact(name="evaluation", uri=str(tmp_path / "evaluation")),
            "metrics": Metrics(name="metrics", uri=str(tmp_path / "metrics")),
            "confusion": ClassificationMetrics(name="confusion", uri=str(tmp_path / "confusion")),
            "summary": Markdown(name="summary", uri=str(tmp_path / "summary")),
            "report": HTML(name="report", uri=str(tmp_path / "report"))}
    result = evaluate.python_func(validated_uri="s3://b/v", text_tokens_uri="s3://b/t", finetuned_uri="s3://b/ft",
                                  task={"task": task}, **outs)
    assert result.evaluation_uri == outs["evaluation"].uri
    assert outs["metrics"].metadata == {f"{task}.{m}": 50.0 + i for i, m in enumerate(TASKS[task].METRICS)}
    if labels:
        cm = outs["confusion"].metadata["confusionMatrix"]
        assert [a["displayName"] for a in cm["annotationSpecs"]] == labels
        assert [r["row"] for r in cm["rows"]] == [[3, 1], [0, 4]]
    else:
        assert "confusionMatrix" not in outs["confusion"].metadata
    md = (tmp_path / "summary.md").read_text()
    assert outs["summary"].uri.endswith("summary.md") and f"BEiT-3 {task}" in md and "s3://b/ft" in md
    assert f"| {TASKS[task].SELECTION_METRIC} |" in md
    assert (tmp_path / "report.html").read_text() == "<html>report</html>"


def test_confusion_matrix_from_the_tasks_sample_lines():
    """classification and nlvr2 samples carry ("label", ...) and ("predicted", ...) lines (their evaluate())."""
    samples = [{"lines": [("sentence", "s"), ("label", "True"), ("predicted", "False")]},
               {"lines": [("label", "True"), ("predicted", "True")]},
               {"lines": [("label", "False"), ("predicted", "False")]}]
    assert evaluate_stage.confusion_matrix(samples, ["False", "True"]) == [[1, 0], [1, 1]]
    assert evaluate_stage.CONFUSION_LABELS["nlvr2"]({}) == ["False", "True"]
    assert evaluate_stage.CONFUSION_LABELS["classification"]({"labels": ["cat", "dog"]}) == ["cat", "dog"]


def test_default_thresholds_name_metrics_evaluation_writes():
    """issue 16: `accuracy`, `recall@1` and friends are never written; registration would refuse 4 of 5."""
    for entry in full.DEFAULT_TASKS:
        for requirement in entry["require"]:
            assert model_registry.Requirement.parse(requirement).metric in TASKS[entry["task"]].METRICS, requirement
    model_registry.check_tasks(full.DEFAULT_TASKS)


def test_compiling_refuses_thresholds_on_unknown_metrics(tmp_path, monkeypatch):
    bad = [dict(t) for t in full.DEFAULT_TASKS]
    bad[3] = {**bad[3], "require": ["recall@1>=0.1"]}
    monkeypatch.setattr(full, "DEFAULT_TASKS", bad)
    with pytest.raises(UserError, match=r"tasks\[3\] \(retrieval\): --require recall@1>=0.1: retrieval evaluation "
                                        r"writes tr_r1"):
        full.compile_pipeline(tmp_path / "full.yaml")
    assert not (tmp_path / "full.yaml").exists()


def test_the_first_step_checks_the_tasks_a_run_was_started_with():
    check_tasks.python_func(tasks=full.DEFAULT_TASKS)
    for tasks, message in (([{"task": "vqa", "require": ["accuracy>=0.5"]}], "vqa evaluation writes vqa_score"),
                           ([{"task": "ocr"}], "--task 'ocr'"), ([], "non-empty list"),
                           ([{"task": "vqa", "require": "vqa_score>=1"}], "expected a list")):
        with pytest.raises(UserError, match=message):
            check_tasks.python_func(tasks=tasks)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("c2") / "full.yaml"
    full.compile_pipeline(path)
    spec, _ = list(yaml.safe_load_all(path.read_text()))
    return spec


def test_compiled_evaluation_and_registration_download_nothing(compiled):
    """The launcher downloads every input artifact of a step: evaluate and register have none."""
    for name in ("comp-evaluate", "comp-register"):
        inputs = compiled["components"][name]["inputDefinitions"]
        assert "artifacts" not in inputs, (name, inputs.get("artifacts"))
    outputs = compiled["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "evaluation": "system.Artifact", "metrics": "system.Metrics", "confusion": "system.ClassificationMetrics",
        "summary": "system.Markdown", "report": "system.HTML"}


def test_compiled_run_checks_the_tasks_before_validating_data(compiled):
    tasks = {}
    for comp in [compiled["root"], *compiled["components"].values()]:
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    assert "check-tasks" in tasks["validate-data"].get("dependentTasks", [])
    assert tasks["check-tasks"]["inputs"]["parameters"]["tasks"]["componentInputParameter"].endswith("tasks")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Tiny synthetic data, a text tokenizer and 2-step fine-tuned classification and NLVR2 models."""
    import torch

    from beit3core import data
    from beit3core.tokenizers import TextTokenizer
    from beit3train.finetune import main as finetune_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cm")
    data.synthesize(str(root / "synth"), seed=0, image_size=32, scale=0.03)
    rows = data.read_rows(str(root / "synth" / "tasks" / "nlvr2"), "train")
    TextTokenizer.train([r["sentence"] for r in rows], vocab_size=40).save(str(root / "tok"))
    for task in ("classification", "nlvr2"):
        assert finetune_main(["--task", task, "--data", str(root / "synth" / "tasks" / task), "--text-tokenizer",
                              str(root / "tok"), "--init", "random", "--out", str(root / task),
                              "--arch", "beit3_tiny_patch8_64", "--steps", "2", "--warmup-steps", "1",
                              "--batch-size", "4", "--img-size", "32", "--max-len", "12", "--eval-batch-size", "8",
                              "--no-progress", "--max-eval-examples", "8"]) == 0
    yield root
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task,score", [("classification", "acc1"), ("nlvr2", "acc")])
def test_beit3_evaluate_writes_the_confusion_matrix_of_every_evaluated_row(tiny_runs, task, score):
    out = tiny_runs / f"eval-{task}"
    assert evaluate_stage.main(["--task", task, "--model-dir", str(tiny_runs / task / "model"), "--data",
                                str(tiny_runs / "synth" / "tasks" / task), "--text-tokenizer", str(tiny_runs / "tok"),
                                "--out", str(out), "--max-examples", "8", "--num-samples", "2",
                                "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cm = json.loads((out / "confusion_matrix.json").read_text())
    header = json.loads((tiny_runs / "synth" / "tasks" / task / "dataset.json").read_text())
    assert cm["labels"] == evaluate_stage.CONFUSION_LABELS[task](header)
    total = sum(map(sum, cm["matrix"]))
    assert total == metrics["num_examples"] > 0
    diagonal = sum(cm["matrix"][i][i] for i in range(len(cm["labels"])))
    assert 100.0 * diagonal / total == pytest.approx(metrics[score], abs=1e-3)
    assert (out / "report.html").read_text().count("data:image/jpeg;base64,") <= 2 * 2  # still --num-samples
