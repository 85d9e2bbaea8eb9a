"""`beit3 finetune` under torchrun with 2 CPU processes (gloo): DDP, per-rank data shares, and the retrieval
loss gathering negatives from both ranks."""

import json
import os
import socket
import subprocess
import sys

import pytest

TASK_METRICS = {"retrieval": ("tr_r1", "ir_r1", "average_score"), "classification": ("acc1", "acc5")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "classification"])
def test_finetune_two_processes(tmp_path, task):
    from beit3core import data
    from beit3core.tokenizers import TextTokenizer

    data.synthesize(str(tmp_path / "synth"), seed=1, image_size=32, scale=0.03)
    rows = data.read_rows(str(tmp_path / "synth" / "tasks" / "retrieval"), "train")
    TextTokenizer.train([r["caption"] for r in rows], vocab_size=30).save(str(tmp_path / "tok"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "beit3train.finetune", "--task", task,
           "--data", str(tmp_path / "synth" / "tasks" / task), "--text-tokenizer", str(tmp_path / "tok"),
           "--init", "random", "--out", str(tmp_path / "run"), "--arch", "beit3_tiny_patch8_64", "--steps", "2",
           "--warmup-steps", "1", "--batch-size", "4", "--img-size", "32", "--max-len", "12",
           "--max-eval-examples", "8", "--eval-batch-size", "1", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert proc.stdout.count("wrote") == 1  # rank 0 alone scores and writes

    # Each rank evaluated its half of the 8 rows; `beit3 evaluate` of the exported model on the same rows, in one
    # process and under torchrun, scores the same (one row a batch: a row's outputs do not depend on its batch).
    from beit3train.evaluate import main as evaluate_main

    args = ["--task", task, "--model-dir", str(tmp_path / "run" / "model"), "--data",
            str(tmp_path / "synth" / "tasks" / task), "--text-tokenizer", str(tmp_path / "tok"), "--split", "val",
            "--max-examples", "8", "--batch-size", "1", "--no-progress", "--device", "cpu"]
    assert evaluate_main([*args, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "beit3train.evaluate", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("wrote") == 1
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    keys = [k for k in one if k not in ("model_dir",)]
    assert {k: two[k] for k in keys} == {k: one[k] for k in keys}
    assert {k: metrics[k] for k in TASK_METRICS[task]} == {k: one[k] for k in TASK_METRICS[task]}


@pytest.mark.slow
def test_finetune_two_processes_resume_is_exact(tmp_path):
    """Under DDP every rank restores its own RNGs: rerunning a finished run resumes from its last epoch-end
    checkpoint and rewrites the same final weights."""
    import torch
    from safetensors.torch import load_file

    from beit3core import data
    from beit3core.tokenizers import TextTokenizer

    data.synthesize(str(tmp_path / "synth"), seed=1, image_size=32, scale=0.03)
    rows = data.read_rows(str(tmp_path / "synth" / "tasks" / "retrieval"), "train")
    TextTokenizer.train([r["caption"] for r in rows], vocab_size=30).save(str(tmp_path / "tok"))
    task_uri = str(tmp_path / "synth" / "tasks" / "classification")
    per_rank_epoch = len(data.read_rows(task_uri, "train")) // 2 // 4

    def run():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "beit3train.finetune", "--task",
               "classification", "--data", task_uri, "--text-tokenizer", str(tmp_path / "tok"), "--init", "random",
               "--out", str(tmp_path / "run"), "--arch", "beit3_tiny_patch8_64", "--steps", str(per_rank_epoch + 2),
               "--warmup-steps", "1", "--batch-size", "4", "--img-size", "32", "--max-eval-examples", "8",
               "--no-progress", "--device", "cpu", "--ckpt-every-epochs", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout, load_file(str(tmp_path / "run" / "model" / "model.safetensors"))

    first_out, first = run()
    assert "resumed" not in first_out
    second_out, second = run()
    assert f"resumed at step {per_rank_epoch}" in second_out
    assert all(torch.equal(first[k], second[k]) for k in first)
