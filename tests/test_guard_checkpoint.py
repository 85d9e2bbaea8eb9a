"""Untrusted weights and model folders: every malformed file is one UserError line naming it (the `beit3` command
prints `error: ...` and exits 2), and a hostile config.json is refused before any tensor is allocated."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from beit3core import checkpoint, task_checkpoint
from beit3core.errors import UserError
from beit3core.models import Beit3Config, Beit3Model
from beit3core.models.configs import (
    LIMITS,
    MAX_PARAMETERS,
    MODEL_CONFIGS,
    estimated_parameters,
)
from beit3core.models.counting import count_parameters
from beit3core.tasks import settings_for
from beit3train import checkpointing

TINY = {**MODEL_CONFIGS["beit3_tiny_patch8_64"], "depth": 1}


def _one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# -- .pth files: empty, oddly keyed, non-tensor ----------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"",  # empty file
    {},  # no tensors
    {1: torch.zeros(1)},  # a non-string key
    {"model": {"blocks.0.w": 3}},  # a non-tensor value
    {"model": {"encoder": {"layers": torch.zeros(1)}}},  # nested, oddly keyed
    [torch.zeros(1)],  # not a dict
], ids=["empty", "no-tensors", "int-key", "int-value", "nested", "list"])
def test_malformed_pth_is_one_line_naming_the_file(tmp_path, content):
    """Before: an int key or value was an AttributeError deep in key conversion (exit 1, a traceback)."""
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    model = Beit3Model(Beit3Config(**TINY))
    with pytest.raises(UserError) as e:
        checkpoint.load_pretrained(model, str(path))
    _one_line(e, str(path))


# -- native folders: a corrupt model.safetensors, config.json or task.json ------------------------------------
@pytest.fixture
def backbone_dir(tmp_path):
    folder = tmp_path / "model"
    checkpoint.save_model(Beit3Model(Beit3Config(**TINY)), str(folder))
    return folder


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"],
                         ids=["empty", "zeros", "bad-header"])
def test_corrupt_safetensors_is_one_line(backbone_dir, garbage):
    """Before: safetensors' SafetensorError escaped with a traceback."""
    (backbone_dir / "model.safetensors").write_bytes(garbage)
    with pytest.raises(UserError) as e:
        checkpoint.load_model(str(backbone_dir))
    _one_line(e, "model.safetensors")


def test_safetensors_holding_no_tensors_is_refused(backbone_dir):
    save_file({}, str(backbone_dir / "model.safetensors"))
    with pytest.raises(UserError, match="holds no tensors"):
        checkpoint.load_model(str(backbone_dir))


@pytest.mark.parametrize("field,value", [("depth", 10**6), ("embed_dim", 10**9), ("vocab_size", 10**9),
                                         ("mlp_dim", 10**8), ("img_size", 8 * 4096)])
def test_hostile_config_json_is_refused_before_allocation(backbone_dir, monkeypatch, field, value):
    """A config.json from an untrusted folder with a huge size: refused by the config check, so no module is
    ever built (Beit3Model.__init__ is made to fail the test if reached)."""
    meta = json.loads((backbone_dir / "config.json").read_text())
    meta["config"][field] = value
    (backbone_dir / "config.json").write_text(json.dumps(meta))
    monkeypatch.setattr(Beit3Model, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(UserError) as e:
        checkpoint.load_model(str(backbone_dir))
    _one_line(e, "config.json", "limit")


def test_hostile_config_json_is_refused_as_finetune_init(backbone_dir, monkeypatch):
    meta = json.loads((backbone_dir / "config.json").read_text())
    meta["config"].update(depth=200, embed_dim=16384, num_heads=16, mlp_dim=65536)  # each within its limit
    (backbone_dir / "config.json").write_text(json.dumps(meta))
    monkeypatch.setattr(Beit3Model, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    settings = settings_for("classification", arch="beit3_tiny_patch8_64", img_size=64)
    with pytest.raises(UserError) as e:
        task_checkpoint.build_task_model_for_init("classification", settings, {"labels": ["a", "b"]},
                                                  str(backbone_dir), vocab_size=100)
    _one_line(e, "config.json", "parameters", "above the limit")


def test_limits_admit_every_registered_size_and_bound_its_real_count():
    """The bounds must admit giant (the paper's 1.9B model) and the released sizes, and the estimate used
    for the total is an upper bound of the real parameter count (built on the meta device)."""
    for name, fields in MODEL_CONFIGS.items():
        config = Beit3Config(**fields)  # raises if a limit is too tight
        assert count_parameters(name)["total"] <= estimated_parameters(config) <= MAX_PARAMETERS, name
        assert all(getattr(config, key) <= limit for key, limit in LIMITS.items())


def test_released_checkpoint_shapes_are_admitted():
    """The released unilm checkpoints: base/large at 224, 384 and 480 px, with the 64010-row text embedding."""
    for size in ("base", "large"):
        for img_size in (224, 384, 480):
            fields = {k: v for k, v in MODEL_CONFIGS[f"beit3_{size}_patch16_224"].items()}
            Beit3Config(**fields, img_size=img_size, vocab_size=64010)


# -- task-model folders: task.json -----------------------------------------------------------------------------
@pytest.fixture
def task_dir(tmp_path):
    from beit3core.tasks import build_task_model

    settings = settings_for("classification", arch="beit3_tiny_patch8_64", img_size=64)
    header = {"name": "d", "labels": ["a", "b"]}
    model = build_task_model("classification", Beit3Model(Beit3Config(**TINY)), header, settings)
    folder = tmp_path / "task_model"
    task_checkpoint.save_task_model(model, str(folder), task_checkpoint.task_meta("classification", settings, header))
    return folder


@pytest.mark.parametrize("change", [
    lambda m: "[1, 2]",
    lambda m: json.dumps({**m, "settings": "fast"}),
    lambda m: json.dumps({k: v for k, v in m.items() if k != "settings"}),
    lambda m: json.dumps({**m, "settings": {**m["settings"], "lr": "high"}}),
    lambda m: json.dumps({**m, "settings": {**m["settings"], "label_smoothing": 2}}),
    lambda m: json.dumps({**m, "settings": {**m["settings"], "bogus": 1}}),
    lambda m: json.dumps({**m, "task": "dance"}),
    lambda m: json.dumps({**m, "labels": "ab"}),
], ids=["list", "settings-str", "no-settings", "lr-str", "smoothing-2", "unknown-setting", "task", "labels-str"])
def test_corrupt_task_json_is_one_line(task_dir, change):
    """Before: KeyError/TypeError tracebacks (exit 1) for most of these."""
    meta = json.loads((task_dir / "task.json").read_text())
    (task_dir / "task.json").write_text(change(meta))
    with pytest.raises(UserError) as e:
        task_checkpoint.load_task_model(str(task_dir))
    _one_line(e, "task.json")


def test_intact_task_folder_still_loads(task_dir):
    _model, meta = task_checkpoint.load_task_model(str(task_dir), "classification")
    assert meta["settings"].img_size == 64 and meta["labels"] == ["a", "b"]


# -- a corrupt checkpoint.pt on resume (both trainers resume through resume_train_state) ----------------------
def _complete_checkpoint(run, payload: bytes):
    folder = run / "checkpoints" / "step-0000010"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(payload)
    (folder / "COMPLETE").write_text(json.dumps({"step": 10, "bytes": len(payload)}))
    return folder


def _torch_bytes(obj, tmp_path) -> bytes:
    torch.save(obj, tmp_path / "x.pt")
    return (tmp_path / "x.pt").read_bytes()


@pytest.mark.parametrize("make", [
    lambda tmp: b"\x00garbage" * 10,
    lambda tmp: _torch_bytes({"model": {}}, tmp)[:40],  # truncated zip
    lambda tmp: _torch_bytes([1, 2, 3], tmp),
    lambda tmp: _torch_bytes({"model": {"w": 1}, "optimizer": {}, "scheduler": {}, "step": 1, "rng": [],
                              "config": {}, "world_size": 1}, tmp),
    lambda tmp: _torch_bytes({"model": {}, "optimizer": {}, "scheduler": {}, "step": "ten", "rng": [],
                              "config": {}, "world_size": 1}, tmp),
], ids=["garbage", "truncated", "list", "non-tensor-weight", "step-str"])
def test_corrupt_checkpoint_on_resume_is_one_line(tmp_path, make):
    """Before: torch.load's UnpicklingError/RuntimeError or a KeyError escaped as a traceback (exit 1)."""
    run = tmp_path / "run"
    folder = _complete_checkpoint(run, make(tmp_path))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    state = checkpointing.TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    with pytest.raises(UserError) as e:
        checkpointing.resume_train_state(str(run), state, object(), world_size=1)
    _one_line(e, str(folder / "checkpoint.pt"))
    assert (folder / "checkpoint.pt").exists()  # nothing is deleted on the user's behalf


@pytest.mark.parametrize("field,value", [("depth", 10**6), ("embed_dim", 10**9), ("img_size", "224"),
                                         ("codebook_size", 1), ("mlp_ratio", float("nan")),
                                         ("decoder_depth", True)])
def test_hostile_visual_tokenizer_config_is_refused_before_allocation(tmp_path, field, value):
    """A visual tokenizer folder's config.json from an untrusted source: wrong types and hostile sizes are one
    line naming the file, before any tensor is allocated (before: a TypeError traceback, or allocation)."""
    from beit3core.tokenizers.visual import CONFIG_FILE, WEIGHTS_FILE, VisualTokenizer
    from beit3core.tokenizers.vqkd import VQKDConfig

    model = dataclasses.asdict(VQKDConfig(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                          decoder_embed_dim=16, decoder_num_heads=2, codebook_size=8, target_dim=12))
    model[field] = value
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model": model}))
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(UserError, match=f"{CONFIG_FILE}: VQ-KD config: {field}"):
        VisualTokenizer.read_config(str(tmp_path))
    assert VQKDConfig()  # the released base sizes stay accepted
