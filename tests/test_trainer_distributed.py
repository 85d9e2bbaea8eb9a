"""Distributed helpers across 2 real processes (torchrun, gloo on CPU): collectives, the differentiable
all-gather, and full-state save/load under DDP and FSDP2 with rank-0 broadcast."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn
    from beit3train import checkpointing, distributed

    out_dir = sys.argv[1]
    info = distributed.init_distributed("cpu")
    r, w = info.rank, info.world_size
    result = {"rank": r, "world": w, "backend": info.backend}
    result["broadcast"] = distributed.broadcast_object({"from": r}, src=0)
    result["gathered"] = distributed.all_gather_object(r * 10)
    result["sum"] = float(distributed.all_reduce_sum(torch.tensor(float(r + 1))))

    # all_gather_with_grad: every rank's loss sees every slice, so each slice's gradient is the sum over ranks.
    x = torch.full((2, 3), float(r + 1), requires_grad=True)
    g = distributed.all_gather_with_grad(x)
    weights = torch.arange(g.numel(), dtype=torch.float32).reshape(g.shape) * (r + 1)
    (g * weights).sum().backward()
    result["gathered_values"] = g.detach()[:, 0].tolist()
    result["grad"] = x.grad.tolist()

    # Full state under DDP: rank 0 alone holds the dict; load_full_state broadcasts it.
    def build():
        torch.manual_seed(100 + r)  # deliberately different per rank
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    ddp = nn.parallel.DistributedDataParallel(build())
    opt = torch.optim.AdamW(ddp.parameters(), lr=0.1)
    ddp(torch.randn(3, 4)).sum().backward()
    opt.step()
    model_sd, optim_sd = checkpointing.full_state(ddp, opt)
    result["ddp_keys"] = sorted(model_sd)
    fresh = nn.parallel.DistributedDataParallel(build())
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    checkpointing.load_full_state(fresh, fresh_opt, model_sd if r == 0 else None, optim_sd if r == 0 else None)
    result["ddp_weights"] = [p.detach().flatten()[:4].tolist() for p in fresh.parameters()]
    result["ddp_exp_avg"] = fresh_opt.state_dict()["state"][0]["exp_avg"].flatten()[:4].tolist()

    # FSDP2 on CPU: the gathered full state is the same on save and round-trips through load.
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    for layer in (m[0], m[2]):
        fully_shard(layer)
    fully_shard(m)
    fopt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.full((3, 4), float(r))).sum().backward()
    fopt.step()
    f_sd, f_opt_sd = checkpointing.full_state(m, fopt)
    result["fsdp_full"] = {k: v.flatten()[:3].tolist() for k, v in f_sd.items()} if r == 0 else None
    torch.manual_seed(55 + r)
    m2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    for layer in (m2[0], m2[2]):
        fully_shard(layer)
    fully_shard(m2)
    fopt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    checkpointing.load_full_state(m2, fopt2, f_sd if r == 0 else None, f_opt_sd if r == 0 else None)
    back, _ = checkpointing.full_state(m2, fopt2)
    result["fsdp_roundtrip"] = {k: v.flatten()[:3].tolist() for k, v in back.items()} if r == 0 else None

    with open(f"{out_dir}/rank{r}.json", "w") as f:
        json.dump(result, f)
    distributed.cleanup_distributed()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script_path, args, nproc=2, timeout=240, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script_path), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_collectives_and_full_state_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    run_torchrun(script, [str(tmp_path)])
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, out in enumerate(res):
        assert out["rank"] == r and out["world"] == 2 and out["backend"] == "gloo"
        assert out["broadcast"] == {"from": 0}
        assert out["gathered"] == [0, 10]
        assert out["sum"] == 3.0
        assert out["gathered_values"] == [1.0, 1.0, 2.0, 2.0]
        # d/dx_r of sum_k (k+1) * <g, arange>: slice r of arange times (1 + 2) = 3
        base = [[float(r * 6 + i * 3 + j) for j in range(3)] for i in range(2)]
        assert out["grad"] == [[3 * v for v in row] for row in base]
    # full_state gathers onto rank 0 only (cpu_offload): the others get an empty dict.
    assert res[0]["ddp_keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"] and res[1]["ddp_keys"] == []
    assert res[0]["ddp_weights"] == res[1]["ddp_weights"]
    assert res[0]["ddp_exp_avg"] == res[1]["ddp_exp_avg"]
    assert any(v != 0 for v in res[0]["ddp_exp_avg"])
    assert res[0]["fsdp_full"] == res[0]["fsdp_roundtrip"]
    assert set(res[0]["fsdp_full"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
