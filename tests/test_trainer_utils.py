"""Trainer utilities: param groups and schedule, checkpoints (atomic, keep-last-K, partial ignored), RNG
capture, metrics files, distributed helpers in a single process."""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from torch import nn

from beit3core import io
from beit3core.errors import UserError
from beit3train import checkpointing, config, distributed, metrics, optim, runtime


class TinyBackbone(nn.Module):
    """Names like the BEiT-3 backbone: embeddings, `layers.{i}`, final norm, a head."""

    def __init__(self, depth=3, dim=8):
        super().__init__()
        self.vision_embed = nn.Module()
        self.vision_embed.proj = nn.Linear(4, dim)
        self.vision_embed.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.vision_embed.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed_positions = nn.Parameter(torch.zeros(5, dim))
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)
        self.logit_scale = nn.Parameter(torch.ones([]))


def _group_of(groups, name):
    for g in groups:
        if name in g["param_names"]:
            return g
    raise KeyError(name)


def test_param_groups_no_decay_rules():
    model = TinyBackbone()
    groups = optim.build_param_groups(model, weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed == {"vision_embed.proj.weight", "layers.0.1.weight", "layers.1.1.weight",
                       "layers.2.1.weight", "head.weight"}
    for g in groups:
        assert g["lr_scale"] == 1.0


def test_param_groups_layer_decay_and_head_scale():
    model = TinyBackbone(depth=3)
    groups = optim.build_param_groups(model, 0.05, layer_decay=0.5, num_layers=3, head_lr_scale=10.0)
    # embeddings id 0 -> 0.5**4, layer i -> 0.5**(3-i), final norm id 4 -> 1, head id 4 * 10
    assert _group_of(groups, "vision_embed.proj.weight")["lr_scale"] == pytest.approx(0.5 ** 4)
    assert _group_of(groups, "embed_positions")["lr_scale"] == pytest.approx(0.5 ** 4)
    assert _group_of(groups, "layers.0.1.weight")["lr_scale"] == pytest.approx(0.5 ** 3)
    assert _group_of(groups, "layers.2.0.bias")["lr_scale"] == pytest.approx(0.5)
    assert _group_of(groups, "norm.weight")["lr_scale"] == pytest.approx(1.0)
    assert _group_of(groups, "head.weight")["lr_scale"] == pytest.approx(10.0)
    assert _group_of(groups, "layers.2.0.bias")["weight_decay"] == 0.0
    assert optim.layer_id("backbone.blocks.7.attn.q.weight", 12) == 8
    assert optim.layer_id("module.backbone.text_embed.weight", 12) == 0
    with pytest.raises(ValueError):
        optim.build_param_groups(model, 0.05, layer_decay=0.5)


def test_warmup_cosine_shape_and_scheduler():
    total, warmup, base, floor = 100, 10, 1e-3, 1e-5
    lrs = [optim.warmup_cosine(s, total, warmup, base, floor) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(base / warmup)
    assert lrs[warmup - 1] == pytest.approx(base)
    assert max(lrs) == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert lrs[total] == pytest.approx(floor) and lrs[-1] == pytest.approx(floor)
    assert lrs[warmup + 45] == pytest.approx(floor + 0.5 * (base - floor), rel=1e-6)

    model = TinyBackbone()
    groups = optim.build_param_groups(model, 0.05, layer_decay=0.5, num_layers=3)
    opt = optim.build_optimizer(groups, lr=base)
    sched = optim.build_scheduler(opt, total, warmup, base, floor)
    for step in range(20):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(lrs[step] * g["lr_scale"])
        opt.step()
        sched.step()


def test_rng_capture_restore_roundtrip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = checkpointing.capture_rng_state()
    expect = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpointing.restore_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def _state(step):
    model = TinyBackbone()
    opt = optim.build_optimizer(optim.build_param_groups(model, 0.05), lr=1e-3)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()
    opt.step()
    model_sd, optim_sd = checkpointing.full_state(model, opt)
    return {"model": model_sd, "optimizer": optim_sd, "step": step, "samples_seen": step * 4,
            "data_position": {"step": step}, "rng": [checkpointing.capture_rng_state()],
            "config": {"lr": 1e-3, "betas": (0.9, 0.98), "name": "x", "none": None}, "scheduler": {},
            "world_size": 1}


def test_checkpoint_roundtrip_keep_last_and_partial(tmp_path):
    run = str(tmp_path / "run")
    assert checkpointing.latest_complete(run) is None
    for step in (2, 4, 6, 8):
        checkpointing.save_checkpoint(run, step, _state(step), keep_last=2)
    steps = [(s, ok) for s, _, ok in checkpointing.list_checkpoints(run)]
    assert steps == [(6, True), (8, True)]
    latest = checkpointing.latest_complete(run)
    assert latest.endswith("step-0000008")
    loaded = checkpointing.load_checkpoint(latest)
    assert loaded["step"] == 8 and loaded["config"]["betas"] == (0.9, 0.98)
    assert set(loaded["model"]) == set(TinyBackbone().state_dict())

    # A folder whose state file exists but whose COMPLETE marker does not is never picked up.
    partial = checkpointing.checkpoint_uri(run, 10)
    io.write_bytes(io.join(partial, checkpointing.STATE_FILE), b"truncated")
    assert checkpointing.latest_complete(run).endswith("step-0000008")
    # A marker without a state file is not complete either.
    io.write_json(io.join(checkpointing.checkpoint_uri(run, 12), checkpointing.MARKER), {"step": 12})
    assert checkpointing.latest_complete(run).endswith("step-0000008")
    assert checkpointing.resolve_resume(run).endswith("step-0000008")

    # Loading the state back into a fresh model and optimizer restores them exactly.
    model = TinyBackbone()
    opt = optim.build_optimizer(optim.build_param_groups(model, 0.05), lr=1e-3)
    checkpointing.load_full_state(model, opt, loaded["model"], loaded["optimizer"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded["model"][k])
    assert len(opt.state) == len(list(model.parameters()))

    # Writing step 14 removes leftovers of killed runs older than it.
    checkpointing.save_checkpoint(run, 14, _state(14), keep_last=2)
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(run)] == [(8, True), (14, True)]

    with pytest.raises(UserError):
        checkpointing.load_checkpoint(str(tmp_path / "nope"))


def test_checkpoint_on_s3(s3_prefix):
    run = s3_prefix + "/run"
    checkpointing.save_checkpoint(run, 3, _state(3), keep_last=1)
    checkpointing.save_checkpoint(run, 5, _state(5), keep_last=1)
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(run)] == [(5, True)]
    assert checkpointing.load_checkpoint(checkpointing.latest_complete(run))["step"] == 5

    logger = metrics.MetricsLogger(run, total_steps=4, progress=False)
    logger.log(1, {"loss": 2.0})
    logger.close()
    assert io.read_jsonl(io.join(run, "metrics.jsonl")) == [{"step": 1, "loss": 2.0}]
    assert any("tfevents" in u for u in io.ls(io.join(run, "tb")))


def test_metrics_files_and_resume_cut(tmp_path):
    run = str(tmp_path / "run")
    logger = metrics.MetricsLogger(run, total_steps=10, progress=True)
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step, "lr": torch.tensor(0.5)})
        logger.advance()
    logger.close()
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[1]["loss"] == 0.5 and rows[0]["lr"] == 0.5

    # A resumed run at step 3 drops the history of steps 4-5 and continues from there.
    logger = metrics.MetricsLogger(run, start_step=3, total_steps=10, progress=False)
    logger.log(4, {"loss": 9.0})
    logger.close()
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["loss"]) for r in rows][-2:] == [(3, 1.0 / 3), (4, 9.0)] and len(rows) == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert acc.Scalars("train/loss")[-1].value == 9.0
    assert metrics.MetricsLogger(None).enabled is False


def test_distributed_single_process_defaults(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert info.device == torch.device("cpu") and info.backend is None
    assert distributed.world_info_from_env({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4, 0)
    with pytest.raises(UserError):
        distributed.world_info_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError):
        distributed.world_info_from_env({"WORLD_SIZE": "two"})
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(5) == [5]
    m = nn.Linear(2, 2)
    assert runtime.wrap_model(m, info, fsdp="on") == (m, False)  # one process: nothing to wrap or shard
    assert math.isclose(float(distributed.all_reduce_sum(torch.tensor(2.5))), 2.5)


def test_full_state_roundtrip_with_parameters_that_never_had_a_gradient():
    model = TinyBackbone()
    opt = optim.build_optimizer(optim.build_param_groups(model, 0.05), lr=1e-3)
    model.head(model.norm(torch.ones(1, 8))).sum().backward()  # the layers and embeddings get no gradient
    opt.step()
    model_sd, optim_sd = copy.deepcopy(checkpointing.full_state(model, opt))
    fresh = TinyBackbone()
    fresh_opt = optim.build_optimizer(optim.build_param_groups(fresh, 0.05), lr=1e-3)
    checkpointing.load_full_state(fresh, fresh_opt, model_sd, optim_sd)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    assert all(p.requires_grad for p in fresh.parameters())


@dataclass(frozen=True)
class _Config:
    name: str = config.setting(help="a required flag")
    lr: float = config.setting(0.1, "learning rate", exact=True)
    betas: tuple[float, float] = config.setting((0.9, 0.99), "betas", exact=True)
    items: tuple[str, ...] = config.setting((), "any number of items")
    warmup: int | None = config.setting(None, "optional")
    switch: bool = config.setting(False, "on or off")
    mode: str = config.setting("a", "a choice", choices=("a", "b"))


def test_parser_generated_from_config_fields():
    parser = config.make_parser(_Config, "prog", "a config")

    def parse(*argv):
        return config.config_from(_Config, vars(parser.parse_args(list(argv))))

    assert parse("--name", "n") == _Config(name="n")
    assert parse("--name", "n", "--lr", "0.5", "--betas", "0.8", "0.9", "--items", "a", "b", "--warmup", "3",
                 "--switch", "--mode", "b") == _Config("n", 0.5, (0.8, 0.9), ("a", "b"), 3, True, "b")
    assert parse("--name", "n", "--no-switch").switch is False
    with pytest.raises(UserError, match="--name"):
        parser.parse_args([])
    with pytest.raises(UserError, match="--mode"):
        parser.parse_args(["--name", "n", "--mode", "c"])
    with pytest.raises(UserError, match="--lr"):
        parser.parse_args(["--name", "n", "--lr", "fast"])


def test_resume_refuses_what_breaks_exactness_and_logs_the_rest(caplog):
    saved = asdict(_Config(name="a"))
    with caplog.at_level("WARNING"):
        checkpointing.check_settings("ckpt", saved, _Config(name="b", items=("x",)), 1, 1)
    assert "--name b --items x (was --name a --items ())" in caplog.text
    refused = "written with --lr 0.1 --betas 0.9 0.99; this job has --lr 0.2 --betas 0.8 0.99"
    with pytest.raises(UserError, match=refused):
        checkpointing.check_settings("ckpt", saved, _Config(name="a", lr=0.2, betas=(0.8, 0.99)), 1, 1)
    with pytest.raises(UserError, match="written by 2 process"):
        checkpointing.check_settings("ckpt", saved, _Config(name="a"), 2, 1)
