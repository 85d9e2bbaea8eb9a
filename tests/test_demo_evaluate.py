"""Issue 17 in `beit3 finetune` / `beit3 evaluate`: threads and loader workers sized from the cores this process
may use, every captioning prediction written, and the caption object metric beside CIDEr."""

import json

import pytest
import torch

from beit3train import evaluate

FAST = ["--arch", "beit3_tiny_patch8_64", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4",
        "--img-size", "32", "--max-len", "12", "--eval-batch-size", "8", "--num-beams", "1", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from beit3core import data
    from beit3core.tokenizers import TextTokenizer

    root = tmp_path_factory.mktemp("demo_eval")
    data.synthesize(str(root / "synth"), seed=0, image_size=32, scale=0.03)
    rows = data.read_rows(str(root / "synth" / "tasks" / "captioning"), "train")
    TextTokenizer.train([r["caption"] for r in rows], vocab_size=40).save(str(root / "tok"))
    return root


@pytest.fixture
def cores(monkeypatch):
    """Pretend the process may run on `n` cores (os.sched_getaffinity, what a container's cpuset sets)."""
    def set_cores(n):
        monkeypatch.setattr(evaluate.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield set_cores
    torch.set_num_threads(1)


def test_threads_zero_uses_every_usable_core(cores, monkeypatch):
    """Before: `--threads 0` kept torch's default, which counts the host's physical cores, not the cpuset."""
    cores(3)
    assert evaluate.set_threads(0) == 3 == torch.get_num_threads()
    assert evaluate.set_threads(1) == 1
    before = torch.get_num_threads()
    assert evaluate.set_threads(None) == before  # unset: torch's default is left alone
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's ranks on this node share the cores
    cores(8)
    assert evaluate.set_threads(0) == 4


def test_loader_workers_sized_from_cores(cores, monkeypatch):
    cores(2)
    assert evaluate.loader_workers(None) == 0  # loading stays in the main process; torch keeps both cores
    cores(16)
    assert evaluate.loader_workers(None) == 2
    assert evaluate.loader_workers(0) == 0 and evaluate.loader_workers(5) == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert evaluate.loader_workers(None) == 1


def test_loader_workers_on_a_gpu_take_the_cores_torch_leaves(cores):
    """On CUDA the cores only feed the GPU: all but the main process's, at most 8 (pretraining's default)."""
    cores(2)
    assert evaluate.loader_workers(None, "cuda") == 1
    cores(16)
    assert evaluate.loader_workers(None, "cuda") == 8
    cores(1)
    assert evaluate.loader_workers(None, "cuda") == 1 and evaluate.loader_workers(3, "cuda") == 3


def test_pretraining_loader_workers_default_to_the_machine():
    """`beit3 pretrain` no longer fixes 2 workers (issue 17: sized from the machine, not fixed)."""
    from beit3train.pretrain import PretrainConfig

    assert PretrainConfig.__dataclass_fields__["num_workers"].default is None


def test_captioning_predictions_and_object_metric(synth, tmp_path, cores):
    from beit3core import data
    from beit3core.data.caption_objects import objects_named_percent
    from beit3train.finetune import main as finetune_main

    cores(2)
    task_data = str(synth / "synth" / "tasks" / "captioning")
    run = tmp_path / "run"
    assert finetune_main(["--task", "captioning", "--data", task_data, "--text-tokenizer", str(synth / "tok"),
                          "--init", "random", "--out", str(run), "--threads", "0", "--seed", "3",
                          "--max-eval-examples", "4", *FAST]) == 0
    ft = json.loads((run / "metrics.json").read_text())
    assert (ft["train"]["seed"], ft["train"]["threads"]) == (3, 2)
    assert 0.0 <= ft["objects_named"] <= 100.0  # fine-tuning's evaluation on val has it too

    out = tmp_path / "eval"
    assert evaluate.main(["--task", "captioning", "--model-dir", str(run / "model"), "--data", task_data,
                          "--text-tokenizer", str(synth / "tok"), "--out", str(out), "--split", "test",
                          "--num-samples", "1", "--no-progress"]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test_rows = data.read_rows(task_data, "test")
    assert len(predictions) == len({r["image"] for r in test_rows}) > 1  # every image, not --num-samples
    by_image = {}
    for r in test_rows:
        by_image.setdefault(r["image"], []).append(r["caption"])
    for p in predictions:
        assert p["references"] == by_image[p["image"]] and isinstance(p["generated"], str)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objects_named"] == pytest.approx(objects_named_percent(
        [p["generated"] for p in predictions], [p["references"] for p in predictions]), abs=1e-4)
    assert "cider" in metrics


def test_object_metric_only_on_synthetic_data(synth, tmp_path, cores):
    """Data from elsewhere (no `beit3 data synth` source) has its own vocabulary: no object metric."""
    import shutil

    from beit3train.finetune import main as finetune_main

    cores(2)
    task_data = tmp_path / "captioning"
    shutil.copytree(synth / "synth" / "tasks" / "captioning", task_data)
    header = json.loads((task_data / "dataset.json").read_text())
    header["source"] = {"generator": "an importer"}
    (task_data / "dataset.json").write_text(json.dumps(header))
    run = tmp_path / "run"
    assert finetune_main(["--task", "captioning", "--data", str(task_data), "--text-tokenizer", str(synth / "tok"),
                          "--init", "random", "--out", str(run), "--max-eval-examples", "4", *FAST]) == 0
    out = tmp_path / "eval"
    assert evaluate.main(["--task", "captioning", "--model-dir", str(run / "model"), "--data", str(task_data),
                          "--text-tokenizer", str(synth / "tok"), "--out", str(out), "--split", "test",
                          "--max-examples", "6", "--no-progress"]) == 0
    assert "objects_named" not in json.loads((out / "metrics.json").read_text())
    assert (out / "predictions.jsonl").is_file()
