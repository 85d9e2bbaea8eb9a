"""`beit3 finetune` + `beit3 evaluate` for every task on tiny synthetic data (in-process main(argv) calls)."""

import json
import re
from pathlib import Path

import pytest

from beit3core import io
from beit3core.errors import UserError
from beit3core.tasks import TASK_NAMES

TASK_KEYS = {
    "classification": ("acc1", "acc5"),
    "vqa": ("vqa_score",),
    "nlvr2": ("acc",),
    "retrieval": ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score"),
    "captioning": ("bleu4", "cider"),
}
FAST = ["--arch", "beit3_tiny_patch8_64", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4",
        "--img-size", "32", "--max-len", "12", "--eval-batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")
RUN_WITH_HOOKS = str(Path(__file__).parent / "helpers" / "run_with_hooks.py")


@pytest.fixture(scope="module")
def synth(task_synth):
    return task_synth


def _finetune(synth, task, out, *extra):
    from beit3train.finetune import main

    argv = ["--task", task, "--data", str(synth / "synth" / "tasks" / task), "--text-tokenizer",
            str(synth / "tok"), "--init", "random", "--out", str(out), *FAST, "--max-eval-examples", "8", *extra]
    assert main(argv) == 0


@pytest.mark.parametrize("task", TASK_NAMES)
def test_finetune_then_evaluate(synth, tmp_path, task):
    from beit3train.evaluate import main as evaluate_main

    run = tmp_path / "run"
    _finetune(synth, task, run)
    for name in ("model/model.safetensors", "model/config.json", "model/task.json", "metrics.json",
                 "report.html", "metrics.jsonl"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["split"] == "val" and metrics["train"]["steps"] == 2
    for key in TASK_KEYS[task]:
        assert 0.0 <= metrics[key] <= (1000.0 if key == "cider" else 100.0), key
    assert metrics["selection_value"] == metrics[metrics["selection_key"]]
    report = (run / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") >= 1
    task_meta = json.loads((run / "model" / "task.json").read_text())
    assert task_meta["task"] == task and task_meta["settings"]["img_size"] == 32

    # the saved folder reproduces the fine-tuning run's evaluation exactly: nothing is lost in saving
    out = tmp_path / "eval"
    assert evaluate_main(["--task", task, "--model-dir", str(run / "model"), "--data",
                          str(synth / "synth" / "tasks" / task), "--text-tokenizer", str(synth / "tok"),
                          "--out", str(out), "--split", "val", "--max-examples", "8", "--no-progress"]) == 0
    ev = json.loads((out / "metrics.json").read_text())
    assert ev["split"] == "val" and set(TASK_KEYS[task]) <= set(ev)
    for key in TASK_KEYS[task]:
        assert ev[key] == pytest.approx(metrics[key], abs=1e-3), key
    assert "<img" in (out / "report.html").read_text()


def test_default_splits():
    from beit3train.evaluate import default_test_split
    from beit3train.finetune import default_eval_split

    assert default_eval_split(["train", "val", "test"]) == "val"
    assert default_eval_split(["train", "heldout"]) == "heldout"
    assert default_test_split(["train", "val", "test"]) == "test"
    assert default_test_split(["train", "val"]) == "val"


def test_finetune_from_a_finetuned_model_and_a_native_backbone(synth, tmp_path):
    """--init takes a fine-tuned model folder (heads come along) and a bare backbone folder."""
    import torch

    from beit3core.checkpoint import save_model
    from beit3train.evaluate import load_task_model

    _finetune(synth, "nlvr2", tmp_path / "a")
    first, _ = load_task_model(str(tmp_path / "a" / "model"))
    save_model(first.backbone, str(tmp_path / "backbone"))  # what `beit3 pretrain` writes to RUN/model
    from beit3train.finetune import main

    # lr ~ 0: the second runs must start from (and stay at) the loaded weights

    for init, out in ((tmp_path / "a" / "model", tmp_path / "d"), (tmp_path / "backbone", tmp_path / "e")):
        assert main(["--task", "nlvr2", "--data", str(synth / "synth" / "tasks" / "nlvr2"), "--text-tokenizer",
                     str(synth / "tok"), "--init", str(init), "--out", str(out), *FAST, "--lr", "1e-12",
                     "--min-lr", "0", "--max-eval-examples", "8"]) == 0
    d, _ = load_task_model(str(tmp_path / "d" / "model"))
    e, _ = load_task_model(str(tmp_path / "e" / "model"))
    for key, value in first.state_dict().items():
        torch.testing.assert_close(d.state_dict()[key], value, atol=1e-6, rtol=0)  # heads too
        if key.startswith("backbone."):
            torch.testing.assert_close(e.state_dict()[key], value, atol=1e-6, rtol=0)
    # the backbone-only init leaves the head freshly initialised (x0.001), not the fine-tuned one
    assert not torch.allclose(e.state_dict()["head.dense2.weight"], first.state_dict()["head.dense2.weight"])
    train = json.loads((tmp_path / "e" / "metrics.json").read_text())["train"]
    assert train["init_kind"] == "native"


def test_user_errors(synth, tmp_path):
    from beit3train.evaluate import main as evaluate_main
    from beit3train.finetune import main

    base = ["--data", str(synth / "synth" / "tasks" / "vqa"), "--text-tokenizer", str(synth / "tok"),
            "--out", str(tmp_path / "x"), *FAST]
    with pytest.raises(UserError, match="kind.*'vqa'.*--task is 'nlvr2'"):
        main(["--task", "nlvr2", "--init", "random", *base])
    with pytest.raises(UserError, match="no such file"):
        main(["--task", "vqa", "--init", str(tmp_path / "missing.pth"), *base])
    with pytest.raises(UserError, match="--lr"):
        main(["--task", "vqa", "--init", "random", *base, "--lr", "-1"])
    with pytest.raises(UserError, match="mixup"):
        main(["--task", "vqa", "--init", "random", *base, "--mixup", "0.8"])
    with pytest.raises(UserError, match="not a `beit3 finetune` model folder"):
        evaluate_main(["--task", "vqa", "--model-dir", str(tmp_path), "--data", str(synth / "synth" / "tasks" / "vqa"),
                       "--text-tokenizer", str(synth / "tok"), "--out", str(tmp_path / "y")])


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--task", "vqa"]], ids=["bad flag", "missing argument"])
def test_cli_mistakes_are_one_error_line(command, argv, capsys):
    from beit3core.errors import run_main
    from beit3train import evaluate, finetune

    assert run_main({"finetune": finetune.main, "evaluate": evaluate.main}[command], argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_classification_mixup_runs(synth, tmp_path):
    _finetune(synth, "classification", tmp_path / "m", "--mixup", "0.8", "--cutmix", "1.0")
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["train"]["steps"] == 2


def test_finetune_on_s3(synth, tmp_path, s3_prefix):
    """Data, tokenizer and outputs on S3: every read and write goes through beit3core.io."""
    from beit3train.finetune import main

    io.put_dir(str(synth / "synth" / "tasks" / "retrieval"), f"{s3_prefix}/data")
    io.put_dir(str(synth / "tok"), f"{s3_prefix}/tok")
    assert main(["--task", "retrieval", "--data", f"{s3_prefix}/data", "--text-tokenizer", f"{s3_prefix}/tok",
                 "--init", "random", "--out", f"{s3_prefix}/run", *FAST, "--max-eval-examples", "8"]) == 0
    metrics = io.read_json(f"{s3_prefix}/run/metrics.json")
    assert "average_score" in metrics and io.exists(f"{s3_prefix}/run/model/model.safetensors")
    assert re.search(r"data:image/jpeg;base64,", io.read_text(f"{s3_prefix}/run/report.html"))


def test_resume_after_a_kill_equals_an_uninterrupted_run(synth, tmp_path):
    """Checkpoints at epoch ends; a run SIGKILLed while writing its second checkpoint resumes from the first
    and ends with the same weights as a run that was never interrupted (captioning: crops draw from torch's
    RNG, caption masks from the task RNG)."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    from beit3core import data
    from beit3train.checkpointing import list_checkpoints

    task = "captioning"
    data_uri = str(synth / "synth" / "tasks" / task)
    per_epoch = len(data.read_rows(data_uri, "train")) // 4
    argv = ["--task", task, "--data", data_uri, "--text-tokenizer", str(synth / "tok"), "--init", "random",
            "--arch", "beit3_tiny_patch8_64", "--steps", str(3 * per_epoch), "--warmup-steps", "2", "--batch-size", "4",
            "--img-size", "32", "--max-len", "12", "--eval-batch-size", "8", "--max-eval-examples", "4",
            "--threads", "1", "--no-progress", "--ckpt-every-epochs", "1"]

    def run(out, hooks=()):
        command = [RUN_WITH_HOOKS, "finetune", *hooks] if hooks else ["-m", "beit3train.finetune"]
        return subprocess.run([sys.executable, *command, *argv, "--out", str(out)], capture_output=True, text=True,
                              timeout=600)

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run(tmp_path / "resumed", ["--kill-in-checkpoint", str(2 * per_epoch)])
    assert killed.returncode == -9
    assert [s for s, _, done in list_checkpoints(str(tmp_path / "resumed")) if done] == [per_epoch]
    resumed = run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {per_epoch}" in resumed.stdout

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert ma["train"]["final_loss"] == mb["train"]["final_loss"] and ma["cider"] == mb["cider"]


def test_resume_refuses_changed_settings_or_seed(synth, tmp_path):
    from beit3train.checkpointing import list_checkpoints

    _finetune(synth, "classification", tmp_path / "run", "--steps", "10", "--batch-size", "4",
              "--ckpt-every-epochs", "1")
    assert list_checkpoints(str(tmp_path / "run"))  # 30 rows: an epoch is 7 steps of 4
    with pytest.raises(UserError, match="settings differ"):
        _finetune(synth, "classification", tmp_path / "run", "--steps", "10", "--batch-size", "4",
                  "--ckpt-every-epochs", "1", "--lr", "0.5")
    with pytest.raises(UserError, match="written with --seed 0; this job has --seed 3"):
        _finetune(synth, "classification", tmp_path / "run", "--steps", "10", "--batch-size", "4",
                  "--ckpt-every-epochs", "1", "--seed", "3")
