"""Sharded checkpoints across real processes (torchrun, gloo on CPU, the model sharded with FSDP2 by
beit3train.runtime.wrap_model --fsdp on): exact resume after a SIGKILL between the shards and COMPLETE, and
DCP resharding: a checkpoint of 2 ranks resumed by 1 process and one of 1 process resumed by 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from beit3train import checkpointing

MODEL = textwrap.dedent('''
    from dataclasses import dataclass
    from types import SimpleNamespace
    from torch import nn
    from beit3train.config import setting

    @dataclass(frozen=True)
    class Config:
        lr: float = setting(0.05, "lr", exact=True)

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(embed_dim=16)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Dropout(0.2)) for _ in range(2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Body()
            self.head = nn.Linear(16, 4)
            self.idle = nn.Linear(4, 4)  # never used: no gradient, no optimizer state

        def forward(self, x):
            for block in self.backbone.blocks:
                x = block(x)
            return self.head(x)
''')

WORKER = MODEL + textwrap.dedent('''
    """worker.py RUN STEPS DUMP [KILL_AT]: the model above (FSDP2-sharded, or DDP with WORKER_FSDP=off) trained on a
    global batch of 8 rows split among the ranks, with dropout (so RNG streams matter) and a parameter that never
    has a gradient."""
    import json, logging, os, signal, sys
    import torch
    from beit3train import checkpointing, distributed, runtime

    run, steps, dump = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    fsdp = os.environ.get("WORKER_FSDP", "on")
    logging.basicConfig(level=logging.INFO)
    info = distributed.init_distributed("cpu")
    r, w = info.rank, info.world_size
    torch.manual_seed(0)
    model, sharded = runtime.wrap_model(Net(), info, fsdp=fsdp, find_unused_parameters=True)
    assert sharded == (w > 1 and fsdp == "on")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    state = checkpointing.TrainState(model, optimizer, scheduler, progress={"samples_seen": 0})
    os.makedirs(dump, exist_ok=True)

    def dump_state(name):
        model_sd, optim_sd = checkpointing.full_state(model, optimizer)  # collective
        if r == 0:
            torch.save({"model": model_sd, "optimizer": optim_sd, "step": state.step,
                        "scheduler": scheduler.state_dict()}, os.path.join(dump, name))

    resumed = checkpointing.resume_train_state(run, state, Config(), world_size=w, world_size_may_change=True)
    if resumed is not None:
        dump_state("loaded.pt")
    if resumed is None or not checkpointing.restore_rank_rng(resumed.rng, r):
        torch.manual_seed(1000 + r + 7919 * state.step)

    def on_write(step, phase):
        if step == kill_at and phase == "before-marker":
            os.kill(os.getpid(), signal.SIGKILL)

    model.train()
    for step in range(state.step, steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
        rows = slice(r * 8 // w, (r + 1) * 8 // w)
        loss = ((model(x[rows]) - y[rows]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.step = step + 1
        state.progress["samples_seen"] += 8
        mean = float(distributed.all_reduce_sum(loss.detach().double())) / w
        if r == 0:
            with open(os.path.join(run, "losses.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.step, "loss": mean, "world": w}) + "\\n")
        if state.step % 2 == 0:
            dump_state(f"step{state.step}.pt")
            checkpointing.save_train_state(run, state, Config(), world_size=w, keep_last=2, on_write=on_write,
                                           sharded=True)
    dump_state("final.pt")
    distributed.cleanup_distributed()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, run, steps, dump, *extra, nproc=2, expect_kill=False, fsdp="on"):
    os.makedirs(run, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORKER_FSDP": fsdp}
    if nproc == 1:
        cmd = [sys.executable, str(script)]
        env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(script)]
    proc = subprocess.run([*cmd, str(run), str(steps), str(dump), *map(str, extra)], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    if expect_kill:
        assert proc.returncode != 0, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _load(path):
    return torch.load(path, weights_only=True)


def _assert_equal(a, b, where=""):
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(a), sorted(b))
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _losses(run):
    with open(os.path.join(run, "losses.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {row["step"]: row for row in rows}  # a rerun step overwrites the killed run's row


@pytest.mark.slow
def test_sharded_exact_resume_and_resharding(tmp_path):
    """(1) 2 ranks under FSDP2, killed after every shard and train_state.pt of step 4 are written but before
    COMPLETE, then rerun: resumes from step 2 and ends bit for bit equal to the uninterrupted run (parameters,
    optimizer state, logged losses). (2) The uninterrupted run's step-2 checkpoint (2 ranks) resumed by one
    process: the same model and optimizer values at step 2, and training continues. (3) That process's step-4
    checkpoint resumed by 2 DDP ranks: the same values again; their step-6 checkpoint (written by 2 DDP ranks)
    loads back into one plain module."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    _launch(script, straight, 4, tmp_path / "dump_straight")
    assert sorted(os.listdir(straight / "checkpoints" / "step-0000004" / "shards")) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank: no rank gathered the state

    _launch(script, broken, 4, tmp_path / "dump_broken", 4, expect_kill=True)
    assert [(s, ok) for s, _, ok in checkpointing.list_checkpoints(str(broken))] == [(2, True), (4, False)]
    proc = _launch(script, broken, 4, tmp_path / "dump_broken")
    assert "resuming from" in proc.stderr and "step-0000002" in proc.stderr
    _assert_equal(_load(tmp_path / "dump_straight" / "final.pt"), _load(tmp_path / "dump_broken" / "final.pt"))
    assert _losses(straight) == _losses(broken) and sorted(_losses(broken)) == [1, 2, 3, 4]

    # 2 ranks -> 1 process: the checkpoint of step 2 (the later one removed so that it is the newest)
    one = tmp_path / "one"
    shutil.copytree(straight, one)
    shutil.rmtree(one / "checkpoints" / "step-0000004")
    os.remove(one / "losses.jsonl")
    proc = _launch(script, one, 4, tmp_path / "dump_one", nproc=1)
    assert "written by 2 process(es), resuming with 1" in proc.stderr
    loaded = _load(tmp_path / "dump_one" / "loaded.pt")
    assert loaded["step"] == 2
    _assert_equal(_load(tmp_path / "dump_straight" / "step2.pt"), loaded)
    assert sorted(_losses(one)) == [3, 4] and {row["world"] for row in _losses(one).values()} == {1}
    assert sorted(os.listdir(one / "checkpoints" / "step-0000004" / "shards")) == [".metadata", "__0_0.distcp"]

    # 1 process -> 2 ranks under DDP: its step-4 checkpoint, then 2 more steps saved by the DDP ranks
    _launch(script, one, 6, tmp_path / "dump_two", fsdp="off")
    _assert_equal(_load(tmp_path / "dump_one" / "step4.pt"), _load(tmp_path / "dump_two" / "loaded.pt"))
    shards = one / "checkpoints" / "step-0000006" / "shards"
    assert sorted(os.listdir(shards)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    # ... and that DDP checkpoint back in this process, into a plain module
    namespace = {}
    exec(MODEL, namespace)  # noqa: S102 - the test's own model code, shared with the worker
    torch.manual_seed(5)
    model = namespace["Net"]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    state = checkpointing.TrainState(model, optimizer, scheduler, progress={"samples_seen": 0})
    checkpointing.resume_train_state(str(one), state, namespace["Config"](), world_size=1, world_size_may_change=True)
    model_sd, optim_sd = checkpointing.full_state(model, optimizer)
    _assert_equal(_load(tmp_path / "dump_two" / "step6.pt"),
                  {"model": model_sd, "optimizer": optim_sd, "step": state.step, "scheduler": scheduler.state_dict()})
