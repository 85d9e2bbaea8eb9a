"""`beit3 pretrain` end to end on a tiny generated collection: outputs, S3 run URI, exact resume after
SIGKILL (including one in the middle of writing a checkpoint), and 2-process torchrun (gloo) DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from beit3core import io
from beit3core.data import formats
from beit3core.errors import UserError

MODEL = "beit3_tiny_patch8_64"
SMALL = ("--model-overrides", "depth=2", "embed_dim=32", "num_heads=2",
         "mlp_dim=64")  # the tiny config's grid, a smaller body: fast CPU tests
RUN_WITH_HOOKS = os.path.join(os.path.dirname(__file__), "helpers", "run_with_hooks.py")
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "star", "triangle"]


def _write_dataset(root, kind, rows):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, formats.HEADER), "w") as f:
        json.dump(formats.make_header(kind, os.path.basename(root), ["train"]), f)
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _image(path, colour_index, rng):
    from PIL import Image

    palette = [(214, 39, 40), (44, 160, 44), (31, 90, 200), (235, 200, 20), (148, 70, 189), (250, 127, 14)]
    arr = np.full((64, 64, 3), 235, dtype=np.uint8)
    y, x = rng.integers(0, 40, size=2)
    arr[y:y + 24, x:x + 24] = palette[colour_index]
    Image.fromarray(arr).save(path)
    # "visual tokens": 1 where a patch holds the colour, else 0, offset by the colour: learnable, 8x8 grid
    cells = arr.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))
    return (np.abs(cells - 235).sum(-1) > 30).astype(np.uint16).reshape(-1) * (1 + colour_index)


def build_inputs(root, n_images=24, n_texts=40, n_pairs=24):
    """A raw-layout collection (images as files) + text tokenizer outputs + visual token outputs."""
    from beit3core.tokenizers import TextTokenizer
    from beit3core.tokenizers.text import encode_corpus

    rng = np.random.default_rng(0)
    data, tdir, vdir = (os.path.join(root, x) for x in ("data", "T", "V"))
    sentences = [f"a {'small large'.split()[i % 2]} {COLOURS[i % 6]} {SHAPES[i % 4]} on the {['left', 'right', 'top'][i % 3]}"
                 for i in range(max(n_texts, n_pairs))]
    tok = TextTokenizer.train(sentences * 3, vocab_size=30)
    tok.save(os.path.join(tdir, "tokenizer"))
    visual = {}
    for kind, n in (("images", n_images), ("pairs", n_pairs)):
        os.makedirs(os.path.join(data, kind, "img"), exist_ok=True)
        rows, codes = [], []
        for i in range(n):
            ref = f"img/{i:04d}.png"
            codes.append(_image(os.path.join(data, kind, ref), i % 6, rng))
            row = {"id": f"{kind}-{i}", "image": ref}
            if kind == "pairs":
                row["caption"] = sentences[i]
            rows.append(row)
        _write_dataset(os.path.join(data, kind), kind, rows)
        visual[kind] = (rows, np.stack(codes))
    text_rows = [{"id": f"t-{i}", "text": sentences[i]} for i in range(n_texts)]
    _write_dataset(os.path.join(data, "text"), "text", text_rows)
    for kind, rows, field in (("text", text_rows, "text"), ("pairs", visual["pairs"][0], "caption")):
        ids, offsets = encode_corpus(tok, [r[field] for r in rows], 64)
        os.makedirs(os.path.join(tdir, "tokens", kind), exist_ok=True)
        # stored in reverse order: the trainer must join by key, not by position
        order = np.arange(len(rows))[::-1]
        seqs = [ids[offsets[i]:offsets[i + 1]] for i in order]
        new_offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        np.savez(os.path.join(tdir, "tokens", kind, "train.npz"), ids=np.concatenate(seqs).astype(np.int32),
                 offsets=new_offsets, keys=np.array([rows[i]["id"] for i in order]))
    os.makedirs(os.path.join(vdir, "tokenizer"), exist_ok=True)
    with open(os.path.join(vdir, "tokenizer", "config.json"), "w") as f:
        json.dump({"model": {"img_size": 64, "patch_size": 8, "codebook_size": 16}}, f)
    open(os.path.join(vdir, "tokenizer", "model.safetensors"), "wb").close()  # pretraining reads the config only
    for kind, (rows, codes) in visual.items():
        os.makedirs(os.path.join(vdir, "tokens", kind), exist_ok=True)
        np.savez(os.path.join(vdir, "tokens", kind, "train.npz"), ids=codes,
                 keys=np.array([r["id"] for r in rows]))
    return {"data": data, "T": tdir, "V": vdir, "vocab": tok.vocab_size}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_inputs(str(tmp_path_factory.mktemp("pretrain_inputs")))


def argv_for(inputs, out, *extra, steps=4):
    return ["--data", inputs["data"], "--text-tokenizer", inputs["T"], "--visual-tokens", inputs["V"],
            "--out", out, "--arch", MODEL, "--steps", str(steps), "--batch-images", "3", "--batch-texts", "4",
            "--batch-pairs", "3", "--lr", "2e-3", "--warmup", "1", "--log-every", "1", "--ckpt-every", "2",
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
    summary = json.load(open(os.path.join(out, "summary.json")))
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
    assert ckpt["step"] == 4 and ckpt["samples_seen"] == 4 * 10 and ckpt["data_position"]["step"] == 4

    # Rerunning the finished command resumes at the end: no steps, same model.
    before = open(os.path.join(out, "model", "model.safetensors"), "rb").read()
    assert main(argv_for(inputs, out, "--keep-last", "1")) == 0
    assert open(os.path.join(out, "model", "model.safetensors"), "rb").read() == before
    assert [r["step"] for r in io.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_grounding_check_in_the_summary(inputs, tmp_path, capsys):
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out, "--steps", "2", "--eval-split", "train", "--grounding-pairs", "10")) == 0
    g = json.load(open(os.path.join(out, "summary.json")))["grounding"]
    assert g["split"] == "train" and g["pairs"] == 10 and g["draws"] == 4
    assert g["loss_gain"] == pytest.approx(g["mismatched_loss"] - g["matched_loss"])
    assert g["acc_gain"] == pytest.approx(g["matched_acc"] - g["mismatched_acc"])
    assert g["loss_gain"] != 0  # a random-init model's text outputs already depend on the image
    assert "grounding on 10 train pairs" in capsys.readouterr().out


def test_grounding_is_zero_for_a_model_that_ignores_the_image(inputs):
    from beit3core.models.beit3 import Beit3Config, Beit3Model
    from beit3core.pretrain import (Beit3ForPretraining, MaskingConfig, MixedBatches, find_stream_datasets,
                                    load_stream, pair_grounding)
    from beit3core.tokenizers import TextTokenizer

    tok = TextTokenizer.load(inputs["T"])
    stream = load_stream("pairs", inputs["data"], inputs["T"], inputs["V"], "train",
                         find_stream_datasets(inputs["data"])["pairs"])
    mixer = MixedBatches({"pairs": stream}, {"pairs": 1}, MaskingConfig(mask_id=tok.mask_id, grid=8, img_size=64),
                         seed=0, start_step=0, total_steps=0)
    torch.manual_seed(0)
    backbone = Beit3Model(Beit3Config(img_size=64, patch_size=8, depth=1, embed_dim=32, num_heads=2, mlp_dim=64,
                                      vocab_size=tok.vocab_size))
    model = Beit3ForPretraining(backbone, tok.vocab_size, 16)
    seen = pair_grounding(model, mixer, max_pairs=12, draws=2, batch_size=5)
    assert seen["pairs"] == 12 and seen["matched_loss"] != seen["mismatched_loss"]

    blind = backbone.forward
    text_only = lambda image=None, **kw: blind(image=torch.zeros_like(image), **kw)  # noqa: E731
    backbone.forward = text_only
    result = pair_grounding(model, mixer, max_pairs=12, draws=2, batch_size=5)
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
    proc = subprocess.run([sys.executable, *command, *argv], capture_output=True, text=True, timeout=300)
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
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    w0 = torch.load(tmp_path / "dump" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "dump" / "rank1.pt", weights_only=True)
    assert set(w0) == set(w1) and len(w0) > 10
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    start = torch.load(tmp_path / "dump" / "rank0.start.pt", weights_only=True)
    assert any(not torch.equal(start[k], w0[k]) for k in w0)  # the weights did move
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["world_size"] == 2 and summary["samples_seen"] == 3 * 10 * 2
