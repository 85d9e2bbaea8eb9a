"""Sharded training checkpoints (beit3train.sharded_checkpoint, torch.distributed.checkpoint): layout, the
COMPLETE-marker protocol, loading into another layout, what a load trusts, and the format choice. The
multi-process cases (FSDP2 under torchrun, resharding 2 <-> 1 ranks, exact resume after SIGKILL) are in
tests/test_checkpoint_sharded_torchrun.py."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from beit3core import io
from beit3core.errors import UserError
from beit3train import checkpointing, sharded_checkpoint
from beit3train.config import setting

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class _Config:
    seed: int = setting(0, "seed", exact=True)


class _Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)
        self.idle = nn.Linear(2, 2)  # never in the forward: no gradient, no optimizer state (an idle expert)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _state(seed: int, steps: int) -> checkpointing.TrainState:
    model = _Net(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    for step in range(steps):
        model(torch.full((3, 4), float(step + 1))).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return checkpointing.TrainState(model, optimizer, scheduler, step=steps, progress={"samples_seen": steps * 3})


def _save(run: str, state, *, keep_last: int = 3, on_write=None) -> None:
    checkpointing.save_train_state(run, state, _Config(), world_size=1, keep_last=keep_last, on_write=on_write,
                                   sharded=True)


def _assert_same(a: checkpointing.TrainState, b: checkpointing.TrainState) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    # (the full format gives betas back as a list: the same numbers)
    assert [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sa["param_groups"]] == \
        [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sb["param_groups"]]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for key, entries in sa["state"].items():
        for name, value in entries.items():
            assert torch.equal(value, sb["state"][key][name]), (key, name)


def test_sharded_layout_and_resume_into_a_fresh_model(tmp_path):
    """The sharded format: shards/ (a DCP folder: one .distcp file per rank + .metadata), train_state.pt (no
    model or optimizer tensor), COMPLETE last; a resume restores model, optimizer (the idle parameter keeps
    no state), scheduler, step and progress."""
    run = str(tmp_path / "run")
    saved = _state(seed=1, steps=3)
    _save(run, saved)
    folder = tmp_path / "run" / "checkpoints" / "step-0000003"
    assert sorted(os.listdir(folder)) == ["COMPLETE", "shards", "train_state.pt"]
    assert sorted(os.listdir(folder / "shards")) == [".metadata", "__0_0.distcp"]
    assert io.read_json(str(folder / "COMPLETE"))["format"] == "sharded"
    meta = checkpointing.load_checkpoint(str(folder))
    assert "model" not in meta and "optimizer" not in meta and meta["step"] == 3
    assert [g["params"] for g in meta["param_groups"]] == [["body.weight", "body.bias", "head.weight", "head.bias",
                                                            "idle.weight", "idle.bias"]]

    fresh = _state(seed=2, steps=0)
    fresh.progress = {"samples_seen": 0}
    resumed = checkpointing.resume_train_state(run, fresh, _Config(), world_size=1)
    assert resumed.uri.endswith("step-0000003") and fresh.step == 3 and fresh.progress == {"samples_seen": 9}
    assert fresh.scheduler.state_dict() == saved.scheduler.state_dict()
    assert fresh.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
    _assert_same(saved, fresh)
    assert fresh.model.idle.weight not in fresh.optimizer.state
    # Training on from the resumed state matches training on from the saved one.
    for s in (saved, fresh):
        s.model(torch.ones(3, 4)).sum().backward()
        s.optimizer.step()
    _assert_same(saved, fresh)


def test_a_killed_sharded_save_is_ignored_and_pruning_keeps_complete_ones(tmp_path):
    """Same protocol as the full format: COMPLETE is written last, after every shard and train_state.pt, so a
    run killed before it leaves a folder `latest_complete` skips; keep_last counts complete checkpoints."""
    run = str(tmp_path / "run")
    state = _state(seed=1, steps=2)
    _save(run, state, keep_last=2)

    def killed(step, phase):
        if phase == "before-marker":
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs

    state.step = 4
    with pytest.raises(KeyboardInterrupt):
        _save(run, state, keep_last=2, on_write=killed)
    assert (tmp_path / "run" / "checkpoints" / "step-0000004" / "shards" / ".metadata").exists()
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(run)] == [(2, True), (4, False)]
    assert checkpointing.latest_complete(run).endswith("step-0000002")
    for step in (4, 6, 8):  # step 4 again: the leftover folder is replaced, not mixed with
        state.step = step
        _save(run, state, keep_last=2)
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(run)] == [(6, True), (8, True)]


def test_full_and_sharded_checkpoints_resume_alike(tmp_path):
    """A run may switch format between saves: the resume reads whichever format the newest folder has."""
    run = str(tmp_path / "run")
    saved = _state(seed=1, steps=2)
    checkpointing.save_train_state(run, saved, _Config(), world_size=1, keep_last=3, sharded=False)
    assert checkpointing.checkpoint_format(checkpointing.latest_complete(run)) == "full"
    saved2 = _state(seed=3, steps=3)
    _save(run, saved2)
    assert checkpointing.checkpoint_format(checkpointing.latest_complete(run)) == "sharded"
    fresh = _state(seed=2, steps=0)
    checkpointing.resume_train_state(run, fresh, _Config(), world_size=1)
    _assert_same(saved2, fresh)


def test_sharded_checkpoint_on_s3(s3_prefix):
    """Shards and metadata go through the platform's fsspec store (s3fs on the local S3 store)."""
    run = s3_prefix + "/run"
    saved = _state(seed=1, steps=2)
    _save(run, saved)
    uri = checkpointing.latest_complete(run)
    assert uri.endswith("step-0000002")
    assert "__0_0.distcp" in io.sizes(io.join(uri, "shards"))
    fresh = _state(seed=2, steps=0)
    checkpointing.resume_train_state(run, fresh, _Config(), world_size=1)
    _assert_same(saved, fresh)


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # any callable: unpickling it would run it


def test_hostile_metadata_is_refused_without_running_it(tmp_path):
    """torch's FileSystemReader.read_metadata (torch/distributed/checkpoint/filesystem.py) unpickles `.metadata`
    with plain pickle.load: a checkpoint folder from elsewhere could run code. Ours allows DCP's metadata
    classes only, so a foreign global is one UserError naming the file, and never called."""
    run = str(tmp_path / "run")
    _save(run, _state(seed=1, steps=1))
    metadata = tmp_path / "run" / "checkpoints" / "step-0000001" / "shards" / ".metadata"
    victim = tmp_path / "pwned"
    metadata.write_bytes(pickle.dumps(_Exploit(str(victim))))
    fresh = _state(seed=2, steps=0)
    with pytest.raises(UserError, match=r"\.metadata: not DCP checkpoint metadata"):
        checkpointing.resume_train_state(run, fresh, _Config(), world_size=1)
    assert not victim.exists()
    metadata.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"\.metadata: not DCP checkpoint metadata"):
        checkpointing.resume_train_state(run, fresh, _Config(), world_size=1)


def test_byte_entries_are_never_unpickled():
    """DCP's DefaultLoadPlanner.load_bytes reads a non-tensor entry with torch.load(weights_only=False); our
    checkpoints hold tensors only, so the planner refuses such an entry instead."""
    planner = sharded_checkpoint._TensorsOnlyPlanner()

    class _Item:
        class dest_index:  # the shape of DCP's ReadItem
            fqn = "optim.state.x.step"

    with pytest.raises(UserError, match="not a tensor"):
        planner.load_bytes(_Item(), None)


def test_a_checkpoint_for_another_model_is_refused(tmp_path):
    run = str(tmp_path / "run")
    _save(run, _state(seed=1, steps=1))
    other = _state(seed=2, steps=0)
    other.model.extra = nn.Linear(1, 1)
    with pytest.raises(UserError, match="'extra.weight'"):
        checkpointing.resume_train_state(run, other, _Config(), world_size=1)


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "full"])
def test_resume_on_another_number_of_processes(tmp_path, caplog, sharded):
    """The number of processes may change where the trainer's data order does not depend on it: logged, and
    the per-rank RNG streams (which cannot carry over) are left to the trainer to seed (`rng` is None)."""
    run = str(tmp_path / "run")
    state = _state(seed=1, steps=2)
    checkpointing.save_train_state(run, state, _Config(), world_size=2, keep_last=3, sharded=sharded)
    with pytest.raises(UserError, match="written by 2 process"):
        checkpointing.resume_train_state(run, _state(seed=2, steps=0), _Config(), world_size=1)
    fresh = _state(seed=2, steps=0)
    with caplog.at_level(logging.WARNING):
        resumed = checkpointing.resume_train_state(run, fresh, _Config(), world_size=1, world_size_may_change=True)
    assert "written by 2 process(es), resuming with 1" in caplog.text
    assert resumed.rng is None and fresh.step == 2
    _assert_same(state, fresh)
    before = torch.get_rng_state()
    assert checkpointing.restore_rank_rng(resumed.rng, 0) is False
    assert torch.equal(torch.get_rng_state(), before)
    assert checkpointing.restore_rank_rng([checkpointing.capture_rng_state()], 0) is True


@pytest.mark.parametrize("fmt,fsdp,world,width,expected", [
    ("auto", True, 2, 32, True),  # FSDP-sharded: no rank may gather the state
    ("auto", False, 4, 1024, True),  # large under DDP: every rank writes a share
    ("auto", False, 4, 768, False),  # base: one file
    ("auto", False, 1, 1408, False),  # one process: nothing to spread
    ("full", True, 2, 1408, False),
    ("sharded", False, 1, 32, True),
])
def test_checkpoint_format_choice(fmt, fsdp, world, width, expected):
    assert checkpointing.use_sharded(fmt, fsdp=fsdp, world_size=world, embed_dim=width) is expected


def test_checkpoint_format_flag():
    from beit3train.pretrain import build_parser

    with pytest.raises(UserError, match="--checkpoint-format"):
        checkpointing.use_sharded("zip", fsdp=False, world_size=1, embed_dim=8)
    assert "--checkpoint-format" in build_parser().format_help()
