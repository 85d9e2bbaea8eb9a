"""`beit3 pretrain` end to end on a tiny generated collection: outputs, S3 run URI, exact resume after
SIGKILL (including one in the middle of writing a checkpoint), and 2-process torchrun (gloo) DDP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_pretrain_data import build_collection

from beit3core import io
from beit3core.errors import UserError

MODEL = "beit3_tiny_patch8_64"
SMALL = ("--model-overrides", "depth=2", "embed_dim=32", "num_heads=2",
         "mlp_dim=64")  # the tiny config's grid, a smaller body: fast CPU tests
RUN_WITH_HOOKS = os.path.join(os.path.dirname(__file__), "helpers", "run_with_hooks.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_collection(str(tmp_path_factory.mktemp("pretrain_inputs")))


def argv_for(inputs, out, *extra, steps=4):
    return ["--data", inputs["data"], "--text-tokenizer", inputs["T"], "--visual-tokens", inputs["V"],
            "--out", out, "--arch", MODEL, "--steps", str(steps), "--batch-images", "4", "--batch-texts", "4",
            "--batch-pairs", "4", "--lanes", "4", "--lr", "2e-3", "--warmup", "1", "--log-every", "1", "--ckpt-every", "2",
            "--num-workers", "0", "--device", "cpu", *SMALL, *extra]


def test_pretrain_writes_outputs(inputs, tmp_path, capsys):
    from beit3core.checkpoint import load_model
    from beit3train import checkpointing
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out, "--num-workers", "2", "--keep-last", "1")) == 0
    assert "MLM acc" in capsys.readouterr().out
    rows = io.read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "mlm_acc", "mim_acc", "lr", "samples_per_s", "step_time", "text_mlm_loss",
                "pair_mim_acc", "grad_norm"):
        assert key in rows[0], key
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["lr"] == pytest.approx(2e-3)  # warmup 1 -> peak at the first step, then cosine
    assert rows[-1]["lr"] < rows[1]["lr"]
    assert any("tfevents" in f for f in os.listdir(os.path.join(out, "tb")))
    summary = io.read_json(os.path.join(out, "summary.json"))
    assert summary["mlm_chance"] == pytest.approx(1 / inputs["vocab"]) and summary["mim_chance"] == 1 / 16
    assert 0 <= summary["mlm_acc"] <= 1 and 0 <= summary["mim_acc"] <= 1
    assert summary["grounding"] is None  # the collection has no val split to check grounding on
    assert [s for s, _, ok in checkpointing.list_checkpoints(out) if ok] == [4]  # keep-last 1

    # RUN_URI/model is the backbone alone; the checkpoint keeps the heads as well.
    backbone = load_model(os.path.join(out, "model"))
    assert backbone.config.vocab_size == inputs["vocab"] and backbone.config.drop_path_rate == 0.1
    assert backbone.config.depth == 2 and backbone.config.embed_dim == 32
    ckpt = checkpointing.load_checkpoint(checkpointing.latest_complete(out))
    assert {"mlm_head.weight", "mim_head.weight"} <= set(ckpt["model"])
    assert ckpt["model"]["mlm_head.weight"].shape == (inputs["vocab"], backbone.config.embed_dim)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, ckpt["model"]["backbone." + k]), k
    assert ckpt["step"] == 4 and ckpt["samples_seen"] == 4 * 12 and ckpt["data_position"]["step"] == 4

    # Rerunning the finished command resumes at the end: no steps, same model.
    before = io.read_bytes(os.path.join(out, "model", "model.safetensors"))
    assert main(argv_for(inputs, out, "--keep-last", "1")) == 0
    assert io.read_bytes(os.path.join(out, "model", "model.safetensors")) == before
    assert [r["step"] for r in io.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_grounding_check_in_the_summary(inputs, tmp_path, capsys):
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out, "--steps", "2", "--eval-split", "train", "--grounding-pairs", "10")) == 0
    g = io.read_json(os.path.join(out, "summary.json"))["grounding"]
    assert g["split"] == "train" and g["pairs"] == 10 and g["draws"] == 4
    assert g["loss_gain"] == pytest.approx(g["mismatched_loss"] - g["matched_loss"])
    assert g["acc_gain"] == pytest.approx(g["matched_acc"] - g["mismatched_acc"])
    assert g["loss_gain"] != 0  # a random-init model's text outputs already depend on the image
    assert "grounding on 10 train pairs" in capsys.readouterr().out


def test_grounding_is_zero_for_a_model_that_ignores_the_image(inputs):
    from beit3core.models.beit3 import Beit3Config, Beit3Model
    from beit3core.pretrain import (
        Beit3ForPretraining,
        MaskingConfig,
        find_stream_datasets,
        pair_grounding,
    )
    from beit3core.pretrain.data import SampleMaker, read_pairs, stream_source
    from beit3core.tokenizers import TextTokenizer

    tok = TextTokenizer.load(inputs["T"])
    source = stream_source("pairs", inputs["data"], "train", find_stream_datasets(inputs["data"])["pairs"])
    masking = MaskingConfig(mask_id=tok.mask_id, grid=8, img_size=64)
    images, texts = read_pairs(source, 12, SampleMaker(masking, seed=0, text_tokenizer=tok.model_proto))
    assert images.shape == (12, 3, 64, 64) and len(texts) == 12
    torch.manual_seed(0)
    backbone = Beit3Model(Beit3Config(img_size=64, patch_size=8, depth=1, embed_dim=32, num_heads=2, mlp_dim=64,
                                      vocab_size=tok.vocab_size))
    model = Beit3ForPretraining(backbone, tok.vocab_size, 16)
    seen = pair_grounding(model, images, texts, masking, draws=2, batch_size=5)
    assert seen["pairs"] == 12 and seen["matched_loss"] != seen["mismatched_loss"]

    blind = backbone.forward
    text_only = lambda image=None, **kw: blind(image=torch.zeros_like(image), **kw)
    backbone.forward = text_only
    result = pair_grounding(model, images, texts, masking, draws=2, batch_size=5)
    assert result["loss_gain"] == 0 and result["acc_gain"] == 0


def test_pretrain_user_errors(inputs, tmp_path):
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    with pytest.raises(UserError, match="--steps"):
        main(argv_for(inputs, out, "--steps", "0"))
    with pytest.raises(UserError, match="visual tokens"):
        main(argv_for(inputs, out, "--arch", "beit3_tiny_patch16_224"))
    with pytest.raises(UserError, match="missing: no visual tokenizer found"):
        main(argv_for(inputs, out, "--visual-tokens", str(tmp_path / "missing")))
    with pytest.raises(UserError, match="mask ratio"):
        main(argv_for(inputs, out, "--image-mask-ratio", "1.5"))
    with pytest.raises(UserError, match="depthh"):
        main(argv_for(inputs, out, "--model-overrides", "depthh=2"))
    with pytest.raises(UserError, match="expected a int"):
        main(argv_for(inputs, out, "--model-overrides", "depth=two"))
    with pytest.raises(UserError, match="--lanes 3: must divide the global batch"):
        main(argv_for(inputs, out, "--lanes", "3"))


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--data", "d"]], ids=["bad flag", "missing argument"])
def test_pretrain_cli_mistakes_are_one_error_line(argv, capsys):
    from beit3core.errors import run_main
    from beit3train.pretrain import main

    assert run_main(main, argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_pretrain_on_s3(inputs, s3_prefix):
    from beit3train.pretrain import main

    out = s3_prefix + "/run"
    assert main(argv_for(inputs, out, steps=2)) == 0
    assert io.exists(io.join(out, "model", "model.safetensors"))
    assert io.exists(io.join(out, "checkpoints", "step-0000002", "COMPLETE"))
    assert [r["step"] for r in io.read_jsonl(io.join(out, "metrics.jsonl"))] == [1, 2]
    assert io.read_json(io.join(out, "summary.json"))["steps"] == 2
    assert any("tfevents" in u for u in io.ls(io.join(out, "tb")))


def _run(argv, hooks=(), expect_kill=False):
    command = [RUN_WITH_HOOKS, "pretrain", *hooks] if hooks else ["-m", "beit3train.pretrain"]
    proc = subprocess.run([sys.executable, *command, *argv], check=False, capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert proc.returncode == -9, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(run):
    from safetensors.torch import load_file

    return load_file(os.path.join(run, "model", "model.safetensors"))


@pytest.mark.slow
def test_exact_resume_after_kills(inputs, tmp_path):
    """4 steps straight == 2 steps + checkpoint, SIGKILL half-way through writing checkpoint 4, then a rerun of
    the same command that resumes from step 2 (ignoring the partial checkpoint 4) and does steps 3-4."""
    from beit3train import checkpointing
    from beit3train.pretrain import main

    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    common = ("--num-workers", "2")
    assert main(argv_for(inputs, straight, *common)) == 0

    _run(argv_for(inputs, broken, *common), ["--kill-in-checkpoint", "4:partial-file"], expect_kill=True)
    assert checkpointing.latest_complete(broken).endswith("step-0000002")
    leftovers = os.listdir(os.path.join(broken, "checkpoints", "step-0000004"))
    assert len(leftovers) == 1 and checkpointing.TMP_MARK in leftovers[0]  # half a file, no COMPLETE
    assert os.path.getsize(os.path.join(broken, "checkpoints", "step-0000004", leftovers[0])) > 0
    assert [r["step"] for r in io.read_jsonl(os.path.join(broken, "metrics.jsonl"))] == [1, 2, 3, 4]
    proc = _run(argv_for(inputs, broken, *common))
    assert "resuming from" in proc.stderr and "step-0000002" in proc.stderr
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(broken)] == [(2, True), (4, True)]

    a, b = _weights(straight), _weights(broken)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = checkpointing.load_checkpoint(checkpointing.latest_complete(straight))
    cb = checkpointing.load_checkpoint(checkpointing.latest_complete(broken))
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for k, v in ca["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], cb["optimizer"]["state"][k]["exp_avg_sq"]), k
    rows_a = io.read_jsonl(os.path.join(straight, "metrics.jsonl"))
    rows_b = io.read_jsonl(os.path.join(broken, "metrics.jsonl"))
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_identical_weights(inputs, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), RUN_WITH_HOOKS, "pretrain", "--dump-weights", str(tmp_path / "dump"),
           *argv_for(inputs, out, "--num-workers", "1", steps=3)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    w0 = torch.load(tmp_path / "dump" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "dump" / "rank1.pt", weights_only=True)
    assert set(w0) == set(w1) and len(w0) > 10
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    start = torch.load(tmp_path / "dump" / "rank0.start.pt", weights_only=True)
    assert any(not torch.equal(start[k], w0[k]) for k in w0)  # the weights did move
    summary = io.read_json(os.path.join(out, "summary.json"))
    assert summary["world_size"] == 2 and summary["samples_seen"] == 3 * 12 * 2


def _torchrun(argv, hooks=(), expect_ok=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), RUN_WITH_HOOKS, "pretrain", *hooks, *argv]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False, capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode == 0) == expect_ok, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_torchrun_exact_resume_with_loader_workers(inputs, tmp_path):
    """2 ranks x 2 loader workers: 4 steps straight == a run SIGKILLed while writing checkpoint 4, then the same
    command resumed from step 2, bit for bit (weights and logged losses). The loader keeps no state: each lane
    seeks to step 2's row from the shards' row counts."""
    from beit3train import checkpointing

    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    common = ("--num-workers", "2")
    _torchrun(argv_for(inputs, straight, *common))
    _torchrun(argv_for(inputs, broken, *common), ["--kill-in-checkpoint", "4:partial-file"], expect_ok=False)
    assert checkpointing.latest_complete(broken).endswith("step-0000002")
    _torchrun(argv_for(inputs, broken, *common))
    a, b = _weights(straight), _weights(broken)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = io.read_jsonl(os.path.join(straight, "metrics.jsonl"))
    rows_b = io.read_jsonl(os.path.join(broken, "metrics.jsonl"))
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_resume_refuses_another_global_batch_or_lanes(inputs, tmp_path):
    """The data order is (seed, lanes, global batch per stream): a resume may change the number of processes
    (per-rank batch x processes kept) but not the global batch or --lanes."""
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out, steps=2)) == 0
    with pytest.raises(UserError, match="data order has global batches"):
        main(argv_for(inputs, out, "--batch-images", "8", steps=2))
    with pytest.raises(UserError, match="--lanes"):
        main(argv_for(inputs, out, "--lanes", "2", steps=2))


@pytest.mark.slow
def test_resume_on_another_number_of_processes(inputs, tmp_path):
    """A run of 1 process (8 per stream a step, 2 loader workers) killed after checkpoint 2 resumes under
    torchrun with 2 processes of 4 (the same global batch and --lanes, so the same global position: the rows
    of each step are those of the uninterrupted run, tests/test_pretrain_data.py) and finishes steps 3-4."""
    from beit3train import checkpointing

    out = str(tmp_path / "run")
    one = ("--batch-images", "8", "--batch-texts", "8", "--batch-pairs", "8", "--num-workers", "2")
    _run(argv_for(inputs, out, *one), ["--kill-in-checkpoint", "4:partial-file"], expect_kill=True)
    assert checkpointing.latest_complete(out).endswith("step-0000002")
    proc = _torchrun(argv_for(inputs, out, "--num-workers", "1"))
    assert "written by 1 process(es), resuming with 2" in proc.stderr
    summary = io.read_json(os.path.join(out, "summary.json"))
    assert summary["world_size"] == 2 and summary["samples_seen"] == 4 * 24
    assert [r["step"] for r in io.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2, 3, 4]
