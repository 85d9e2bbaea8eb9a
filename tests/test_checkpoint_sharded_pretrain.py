"""`beit3 pretrain` with sharded checkpoints (--checkpoint-format): exact resume after a crash between the shards
and COMPLETE, the auto choice under FSDP2 (torchrun, gloo), and the exported model still one safetensors file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint_sharded_torchrun import free_port
from test_pretrain_data import build_collection

from beit3core import io
from beit3train import checkpointing

SMALL = ("--model-overrides", "depth=2", "embed_dim=32", "num_heads=2", "mlp_dim=64")
RUN_WITH_HOOKS = os.path.join(os.path.dirname(__file__), "helpers", "run_with_hooks.py")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_collection(str(tmp_path_factory.mktemp("sharded_pretrain_inputs")))


def argv_for(inputs, out, *extra, steps=4):
    return ["--data", inputs["data"], "--text-tokenizer", inputs["T"], "--visual-tokens", inputs["V"],
            "--out", out, "--arch", "beit3_tiny_patch8_64", "--steps", str(steps), "--batch-images", "4",
            "--batch-texts", "4", "--batch-pairs", "4", "--lanes", "4", "--lr", "2e-3", "--warmup", "1",
            "--log-every", "1", "--ckpt-every", "2", "--num-workers", "0", "--device", "cpu", *SMALL, *extra]


class _Crash(Exception):
    pass


def _crash_before_marker(step: int, phase: str) -> None:
    if step == 4 and phase == "before-marker":
        raise _Crash  # the process dies with every shard and train_state.pt of step 4 written, no COMPLETE


def test_pretrain_sharded_exact_resume(inputs, tmp_path):
    """--checkpoint-format sharded: a run that dies before COMPLETE of step 4 and is rerun resumes from step 2 and
    ends equal to the uninterrupted run (weights and logged losses); the model is exported as one file."""
    from beit3train.distributed import run_distributed
    from beit3train.hooks import TrainHooks
    from beit3train.pretrain import main, parse_args, train

    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    assert main(argv_for(inputs, straight, "--checkpoint-format", "sharded")) == 0
    last = checkpointing.latest_complete(straight)
    assert sorted(os.listdir(last)) == ["COMPLETE", "shards", "train_state.pt"]
    assert sorted(os.listdir(os.path.join(straight, "model"))) == ["config.json", "model.safetensors"]

    with pytest.raises(_Crash):
        run_distributed(train, parse_args(argv_for(inputs, broken, "--checkpoint-format", "sharded")),
                        TrainHooks(on_checkpoint_write=_crash_before_marker))
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(broken)] == [(2, True), (4, False)]
    assert main(argv_for(inputs, broken, "--checkpoint-format", "sharded")) == 0
    assert io.read_json(os.path.join(broken, "summary.json"))["resumed_from"].endswith("step-0000002")
    a, b = (load_file(os.path.join(run, "model", "model.safetensors")) for run in (straight, broken))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in io.read_jsonl(os.path.join(run, "metrics.jsonl"))] for run in (straight, broken)]
    assert losses[0] == losses[1][:2] + losses[1][-2:]  # the broken run logged steps 3-4 twice


@pytest.mark.slow
def test_pretrain_fsdp_saves_sharded_by_default(inputs, tmp_path):
    """2 ranks with --fsdp on: auto picks the sharded format (one file per rank, nothing gathered for the
    checkpoint); the exported model is gathered once, at the end, into one safetensors file."""
    out = str(tmp_path / "fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), RUN_WITH_HOOKS, "pretrain",
           *argv_for(inputs, out, "--fsdp", "on", steps=2)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = checkpointing.latest_complete(out)
    assert sorted(os.listdir(os.path.join(last, "shards"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert io.read_json(os.path.join(last, "COMPLETE"))["format"] == "sharded"
    assert sorted(os.listdir(os.path.join(out, "model"))) == ["config.json", "model.safetensors"]
    assert io.read_json(os.path.join(out, "pretrain_config.json"))["fsdp"] is True
