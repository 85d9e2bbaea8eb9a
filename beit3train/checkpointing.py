"""Step-granular, atomic training checkpoints with keep-last-K and exact resume.

Layout under a run URI (local path or s3://):

    RUN_URI/checkpoints/step-0000200/checkpoint.pt   torch.save of a dict of tensors and plain values
    RUN_URI/checkpoints/step-0000200/COMPLETE         written last: {"step": 200, "bytes": N}

`checkpoint.pt` is published atomically (temporary name, then rename or server-side move) and `COMPLETE` only
after it, so a process killed at any point leaves either a finished checkpoint or a folder without
`COMPLETE`, which `latest_complete` never returns. Rank 0 writes; rank 0 alone lists the folder on resume
and broadcasts its choice (ranks can see different listings on a shared filesystem or object store under
load). Files load with `torch.load(weights_only=True)`, so the dict holds only tensors, numbers, strings,
lists, tuples, dicts and None: RNG states are converted accordingly.

The checkpoint dict the trainers write: {"model", "optimizer", "scheduler", "step", "samples_seen",
"data_position", "rng" (a list, one entry per rank), "config", "world_size"}.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from beit3core import io
from beit3core.errors import UserError
from beit3core.io import TMP_MARK  # noqa: F401 - re-exported for tests of partial writes

from . import distributed

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "checkpoint.pt"
MARKER = "COMPLETE"
_STEP_RE = re.compile(r"^step-(\d+)$")
_CHUNK = 16 << 20

# Test hook: BEIT3_TEST_CRASH_IN_CHECKPOINT=STEP[:PHASE] makes the process SIGKILL itself while writing the
# checkpoint of step STEP; PHASE "partial-file" (default) dies with half of checkpoint.pt written,
# "before-marker" dies after checkpoint.pt is published but before COMPLETE.
CRASH_ENV = "BEIT3_TEST_CRASH_IN_CHECKPOINT"


def checkpoint_uri(run_uri: str, step: int) -> str:
    return io.join(run_uri, CHECKPOINTS, f"step-{step:07d}")


def _crash_phase(step: int) -> str | None:
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return None
    target, _, phase = spec.partition(":")
    return (phase or "partial-file") if int(target) == step else None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def list_checkpoints(run_uri: str) -> list[tuple[int, str, bool]]:
    """(step, uri, complete) for every step folder, in increasing step order."""
    root = io.join(run_uri, CHECKPOINTS)
    fs, path = io.filesystem(root)
    fs.invalidate_cache(path)  # another process (or our own pruning) may have changed the listing
    if not io.exists(root):
        return []
    found = []
    for entry in io.ls(root):
        match = _STEP_RE.match(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            has_marker, has_state = io.exists(io.join(entry, MARKER)), io.exists(io.join(entry, STATE_FILE))
            if has_marker or has_state or _has_files(entry):
                found.append((int(match.group(1)), entry.rstrip("/"), has_marker and has_state))
            # else: an empty folder left by a store that keeps directories (SeaweedFS) after a removal
    return sorted(found)


def _has_files(uri: str) -> bool:
    try:
        return bool(io.ls(uri, recursive=True))
    except UserError:
        return False


def latest_complete(run_uri: str) -> str | None:
    """URI of the newest checkpoint whose COMPLETE marker exists, or None. Partial folders are ignored."""
    complete = [uri for _, uri, ok in list_checkpoints(run_uri) if ok]
    return complete[-1] if complete else None


def resolve_resume(run_uri: str) -> str | None:
    """`latest_complete`, decided by rank 0 and broadcast to every rank."""
    choice = latest_complete(run_uri) if not _rank() else None
    return distributed.broadcast_object(choice, src=0)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def save_checkpoint(run_uri: str, step: int, state: dict[str, Any], keep_last: int = 3) -> str:
    """Write `state` as the checkpoint of `step` (call on rank 0 only), then prune to the newest `keep_last`
    complete checkpoints. Returns the checkpoint folder URI."""
    uri = checkpoint_uri(run_uri, step)
    phase = _crash_phase(step)
    with tempfile.TemporaryDirectory(prefix="beit3-ckpt-") as tmp:
        local = os.path.join(tmp, STATE_FILE)
        torch.save(state, local)
        size = os.path.getsize(local)
        with open(local, "rb") as src, io.atomic_write(io.join(uri, STATE_FILE), "wb") as dst:
            written = 0
            while block := src.read(_CHUNK if phase != "partial-file" else max(1, size // 2)):
                dst.write(block)
                written += len(block)
                if phase == "partial-file" and written < size:
                    dst.flush()
                    _die()
    if phase == "before-marker":
        _die()
    io.write_json(io.join(uri, MARKER), {"step": step, "bytes": size})
    log.info("checkpoint step %d -> %s (%.1f MB)", step, uri, size / 1e6)
    _prune(run_uri, step, keep_last)
    return uri


def _prune(run_uri: str, current_step: int, keep_last: int) -> None:
    entries = list_checkpoints(run_uri)
    complete = [(s, u) for s, u, ok in entries if ok]
    doomed = [u for s, u in complete[:-keep_last]] if keep_last > 0 else []
    # Folders without COMPLETE older than the newest checkpoint are leftovers of a killed run.
    doomed += [u for s, u, ok in entries if not ok and s < current_step]
    for u in doomed:
        io.remove(u, recursive=True)
        log.info("removed old checkpoint %s", u)


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Load a checkpoint folder (or its checkpoint.pt) on CPU with weights_only=True."""
    path = uri if uri.rstrip("/").endswith(".pt") else io.join(uri, STATE_FILE)
    if not io.exists(path):
        raise UserError(f"{path}: no such checkpoint")
    with io.local_path(path) as local:
        return torch.load(local, map_location="cpu", weights_only=True)


# ----- RNG states (converted to weights_only-safe values) -----

def capture_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (collective), so a resumed rank r continues exactly where rank r stopped."""
    return distributed.all_gather_object(capture_rng_state())


def restore_rank_rng(states: list[dict[str, Any]], rank: int) -> None:
    if rank >= len(states):
        raise UserError(f"checkpoint holds RNG states for {len(states)} ranks; this job has rank {rank}")
    restore_rng_state(states[rank])


# ----- model / optimizer state, DDP and FSDP alike -----

def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """(model_state, optimizer_state) as full, unsharded CPU state dicts (collective under FSDP; every rank
    must call it; rank 0 receives the dicts, the other ranks get empty ones). Keys have no DDP `module.` prefix."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_sd, optim_sd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None,
                    optim_sd: dict | None) -> None:
    """Inverse of `full_state`. Under a process group only rank 0 needs the dicts (others pass None); the
    values are broadcast from rank 0, so only one process reads the file."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    multi = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=multi, strict=True)
    set_model_state_dict(model, model_sd or {}, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd or {}, options=options)
