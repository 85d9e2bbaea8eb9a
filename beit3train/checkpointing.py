"""Step-granular, atomic training checkpoints with keep-last-K and exact resume.

Layout under a run URI (local path or s3://):

    RUN_URI/checkpoints/step-0000200/checkpoint.pt   full format: torch.save of a dict of tensors and plain values
    RUN_URI/checkpoints/step-0000200/COMPLETE         written last: {"step": 200, "bytes": N, "format": "full"}

or, in the sharded format (beit3train.sharded_checkpoint: every rank writes its own part, nothing is gathered):

    RUN_URI/checkpoints/step-0000200/shards/          __<rank>_0.distcp per rank + .metadata (DCP)
    RUN_URI/checkpoints/step-0000200/train_state.pt   the rest of the dict below, no model or optimizer tensors
    RUN_URI/checkpoints/step-0000200/COMPLETE         written last: {"step": 200, "bytes": N, "format": "sharded"}

`checkpoint.pt` (or `train_state.pt`, after every rank's shard) is published atomically (temporary name, then
rename or server-side move) and `COMPLETE` only after it, so a process killed at any point leaves either a
finished checkpoint or a folder without `COMPLETE`, which `latest_complete` never returns. Rank 0 writes (in
the sharded format every rank writes its shard first); rank 0 alone lists the folder on resume and broadcasts
its choice (ranks can see different listings on a shared filesystem or object store under load). Files load
with `torch.load(weights_only=True)`, so the dict holds only tensors, numbers, strings, lists, tuples, dicts
and None: RNG states are converted accordingly.

Both trainers save and resume through `save_train_state` / `resume_train_state`. The checkpoint dict:
{"model", "optimizer", "scheduler", "step", the trainer's progress counters (pretraining: "samples_seen",
"data_position"; fine-tuning: "epoch", "losses"), "rng" (a list, one entry per rank), "config", "world_size"};
in the sharded format "model" and "optimizer" are replaced by "param_groups" (the optimizer's, without state).
A resume reads either format, whatever format the run saves next. It refuses settings whose change breaks
exactness (config fields marked `exact`; the number of processes unless the trainer's data order does not
depend on it) and logs the other changes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from beit3core import io
from beit3core.checkpoint import strip_wrapper_prefixes
from beit3core.errors import UserError
from beit3core.io import TMP_MARK  # noqa: F401 - re-exported for tests of partial writes
from beit3train import distributed, sharded_checkpoint
from beit3train.config import describe, resume_changes
from beit3train.runtime import FSDP_MIN_EMBED_DIM

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "checkpoint.pt"
SHARDED_STATE_FILE = "train_state.pt"
MARKER = "COMPLETE"
FORMATS = ("auto", "full", "sharded")
_STEP_RE = re.compile(r"^step-(\d+)$")
_CHUNK = 16 << 20


def checkpoint_uri(run_uri: str, step: int) -> str:
    return io.join(run_uri, CHECKPOINTS, f"step-{step:07d}")


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
            has_marker = io.exists(io.join(entry, MARKER))
            has_state = any(io.exists(io.join(entry, name)) for name in (STATE_FILE, SHARDED_STATE_FILE))
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


def save_checkpoint(run_uri: str, step: int, state: dict[str, Any], keep_last: int = 3,
                    on_write: Callable[[int, str], None] | None = None) -> str:
    """Write `state` as the checkpoint of `step` (call on rank 0 only), then prune to the newest `keep_last`
    complete checkpoints. Returns the checkpoint folder URI.

    `on_write(step, phase)` (a test seam) is called with half of checkpoint.pt written ("partial-file") and
    with checkpoint.pt published but COMPLETE not yet written ("before-marker")."""
    uri = checkpoint_uri(run_uri, step)
    size = _write_state_file(io.join(uri, STATE_FILE), state, step, on_write)
    _publish(run_uri, step, {"bytes": size, "format": "full"}, keep_last, on_write)
    return uri


def _write_state_file(uri: str, state: dict[str, Any], step: int, on_write) -> int:
    """torch.save `state` to `uri` atomically; the file's size."""
    with tempfile.TemporaryDirectory(prefix="beit3-ckpt-") as tmp:
        local = os.path.join(tmp, "state.pt")
        torch.save(state, local)
        size = os.path.getsize(local)
        # with a watcher, the first block is at most half the file, so it sees a partial file
        first = min(_CHUNK, max(1, size // 2)) if on_write else _CHUNK
        with open(local, "rb") as src, io.atomic_write(uri, "wb") as dst:
            block = src.read(first)
            dst.write(block)
            if on_write and len(block) < size:
                dst.flush()
                on_write(step, "partial-file")
            while block := src.read(_CHUNK):
                dst.write(block)
    return size


def _publish(run_uri: str, step: int, marker: dict, keep_last: int, on_write) -> None:
    """Write the COMPLETE marker of `step` (its files are all written), then prune."""
    if on_write:
        on_write(step, "before-marker")
    uri = checkpoint_uri(run_uri, step)
    io.write_json(io.join(uri, MARKER), {"step": step, **marker})
    log.info("checkpoint step %d -> %s (%s, %.1f MB)", step, uri, marker["format"], marker["bytes"] / 1e6)
    _prune(run_uri, step, keep_last)


def save_sharded_checkpoint(run_uri: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            state: dict[str, Any], keep_last: int = 3,
                            on_write: Callable[[int, str], None] | None = None) -> str:
    """The sharded format (collective: every rank calls it). Every rank writes its part of the model and
    optimizer tensors; after all have, rank 0 writes `state` (the rest, plus the optimizer's param_groups) as
    train_state.pt, then COMPLETE, then prunes. `on_write` as in `save_checkpoint`, on rank 0."""
    uri = checkpoint_uri(run_uri, step)
    if not _rank() and io.exists(uri):
        io.remove(uri, recursive=True)  # a leftover of a killed run: no stale shard may mix with the new ones
    distributed.barrier()
    param_groups = sharded_checkpoint.save_sharded(uri, model, optimizer)  # returns once .metadata is written
    if not _rank():
        size = _write_state_file(io.join(uri, SHARDED_STATE_FILE), {**state, "param_groups": param_groups},
                                 step, on_write)
        size += sum(io.sizes(io.join(uri, sharded_checkpoint.SHARDS)).values())
        _publish(run_uri, step, {"bytes": size, "format": "sharded"}, keep_last, on_write)
    distributed.barrier()
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


def checkpoint_format(uri: str) -> str:
    """"sharded" when the folder holds the sharded format's state file, else "full"."""
    return "sharded" if io.exists(io.join(uri, SHARDED_STATE_FILE)) else "full"


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Load a checkpoint folder (or its .pt file) on CPU with weights_only=True: the whole dict in the full
    format; in the sharded format everything but the model and optimizer tensors (`load_train_state` has them)."""
    if uri.rstrip("/").endswith(".pt"):
        path = uri
    else:
        path = io.join(uri, SHARDED_STATE_FILE if checkpoint_format(uri) == "sharded" else STATE_FILE)
    if not io.exists(path):
        raise UserError(f"{path}: no such checkpoint")
    with io.local_path(path) as local:
        try:
            ckpt = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated, garbage or pickled code: a bad file, named as such
            raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}); delete its folder to resume "
                            "from the one before") from None
    _check_layout(path, ckpt, sharded=path.endswith(SHARDED_STATE_FILE))
    return ckpt


# The entries every trainer checkpoint has (see the module docstring), and their types.
_LAYOUT = {"scheduler": dict, "step": int, "rng": list, "config": dict, "world_size": int}
_TENSORS = {"model": dict, "optimizer": dict}  # the full format's; the sharded one has them in shards/
_SHARDED = {"param_groups": list}


def _check_layout(path: str, ckpt, *, sharded: bool = False) -> None:
    """Refuse a state file that is not a trainer's checkpoint before anything is restored from it."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: expected a trainer checkpoint (a dict), got {type(ckpt).__name__}")
    for key, kind in {**(_SHARDED if sharded else _TENSORS), **_LAYOUT}.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise UserError(f"{path}: entry {key!r}: expected {kind.__name__}, got {type(ckpt.get(key)).__name__}")
    bad = [] if sharded else [k for k, v in ckpt["model"].items()
                              if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: entry 'model': {str(bad[0])[:200]!r} is not a named tensor")
    if ckpt["step"] < 0 or ckpt["world_size"] < 1:
        raise UserError(f"{path}: entries 'step' / 'world_size': {ckpt['step']} / {ckpt['world_size']} out of range")


# ----- RNG states (converted to weights_only-safe values) -----

def capture_rng_state(generator: np.random.Generator | None = None) -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states, plus `generator`'s (a trainer's own) when given."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.bit_generator.state
    return state


def restore_rng_state(state: dict[str, Any], generator: np.random.Generator | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None:
        generator.bit_generator.state = state["generator"]


def gather_rng_states(generator: np.random.Generator | None = None) -> list[dict[str, Any]]:
    """Every rank's RNG state (collective), so a resumed rank r continues exactly where rank r stopped."""
    return distributed.all_gather_object(capture_rng_state(generator))


def restore_rank_rng(states: list[dict[str, Any]] | None, rank: int,
                     generator: np.random.Generator | None = None) -> bool:
    """Restore rank `rank`'s saved RNG states; False (nothing restored: the caller seeds) when `states` is None,
    i.e. the checkpoint was written by another number of processes (`Resumed.rng`)."""
    if states is None:
        return False
    if rank >= len(states):
        raise UserError(f"checkpoint holds RNG states for {len(states)} ranks; this job has rank {rank}")
    restore_rng_state(states[rank], generator)
    return True


# ----- model / optimizer state, DDP and FSDP alike -----

def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """(model_state, optimizer_state) as full, unsharded CPU state dicts (collective under FSDP; every rank
    must call it; rank 0 receives the dicts, the other ranks get empty ones). Keys have no DDP `module.` prefix."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_sd, optim_sd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None,
                    optim_sd: dict | None) -> None:
    """Inverse of `full_state`. Under a process group only rank 0 needs the dicts (others pass None); the
    values are broadcast from rank 0, so only one process reads the file."""
    multi = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=multi, strict=True)
    set_model_state_dict(model, model_sd or {}, options=options)
    if optimizer is None:
        return
    # Parameters that never had a gradient (a task's idle experts, mask_token) have no optimizer state; the
    # strict loader would reject that, so they are hidden from it while it runs, and keep having none.
    with_state = distributed.broadcast_object(set(optim_sd["state"]) if optim_sd else None)
    stateless = [p for name, p in model.named_parameters()
                 if p.requires_grad and strip_wrapper_prefixes(name) not in with_state]
    for p in stateless:
        p.requires_grad_(False)
    try:
        set_optimizer_state_dict(model, optimizer, optim_sd or {}, options=options)
    finally:
        for p in stateless:
            p.requires_grad_(True)


# ----- the train state: save and resume, one policy for changed settings -----

@dataclass
class TrainState:
    """What a checkpoint saves and a resume restores, besides the RNGs and the config."""

    model: nn.Module  # as trained: plain, DDP or FSDP2
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps done
    progress: dict[str, Any] = field(default_factory=dict)  # the trainer's own counters, saved beside `step`
    generator: np.random.Generator | None = None  # a per-rank RNG of the trainer's own (saved with the others)


@dataclass(frozen=True)
class Resumed:
    uri: str  # the checkpoint resumed from
    # every rank's RNG states: `restore_rank_rng` once the data loader is set up; None when the checkpoint was
    # written by another number of processes (each rank's streams cannot continue)
    rng: list[dict[str, Any]] | None


def use_sharded(checkpoint_format: str, *, fsdp: bool, world_size: int, embed_dim: int) -> bool:
    """Whether a run saves the sharded format: "sharded"/"full" as asked; "auto" when the model is
    FSDP-sharded, or spread over several processes and as wide as large/giant (no rank gathers it)."""
    if checkpoint_format not in FORMATS:
        raise UserError(f"--checkpoint-format: expected one of {', '.join(FORMATS)}, got {checkpoint_format!r}")
    if checkpoint_format != "auto":
        return checkpoint_format == "sharded"
    return fsdp or (world_size > 1 and embed_dim >= FSDP_MIN_EMBED_DIM)


def save_train_state(run_uri: str, state: TrainState, config, *, world_size: int, keep_last: int,
                     on_write: Callable[[int, str], None] | None = None, sharded: bool = False) -> None:
    """Checkpoint `state` at `state.step` under `run_uri` (collective: every rank calls it). Full format: the
    state is gathered and rank 0 writes it; sharded: every rank writes its own part (`save_sharded_checkpoint`)."""
    rest = {"scheduler": state.scheduler.state_dict(), "step": state.step, **state.progress,
            "config": dataclasses.asdict(config), "world_size": world_size}
    if sharded:
        rng = gather_rng_states(state.generator)
        save_sharded_checkpoint(run_uri, state.step, state.model, state.optimizer, {**rest, "rng": rng},
                                keep_last=keep_last, on_write=on_write)
        return
    model_sd, optim_sd = full_state(state.model, state.optimizer)
    rng = gather_rng_states(state.generator)
    if not _rank():
        payload = {"model": model_sd, "optimizer": optim_sd, **rest, "rng": rng}
        save_checkpoint(run_uri, state.step, payload, keep_last=keep_last, on_write=on_write)
    distributed.barrier()


def resume_train_state(run_uri: str, state: TrainState, config, *, world_size: int,
                       world_size_may_change: bool = False) -> Resumed | None:
    """Load the newest complete checkpoint under `run_uri` into `state`, or None when there is none.

    Rank 0 chooses it and reads its state file; in the full format weights and optimizer state are broadcast
    from rank 0, in the sharded one every rank reads the parts it needs (any number of ranks). The small rest
    travels with broadcast_object. `state.progress` takes the checkpoint's values of its keys. Settings that
    changed since the checkpoint are refused when they break exact resume, logged otherwise (`check_settings`;
    `world_size_may_change`: for a trainer whose data order does not depend on the number of processes)."""
    uri = resolve_resume(run_uri)
    if uri is None:
        return None
    ckpt = load_checkpoint(uri) if not _rank() else None
    meta = distributed.broadcast_object(None if ckpt is None else {
        **{k: v for k, v in ckpt.items() if k not in ("model", "optimizer")},
        "format": "full" if "model" in ckpt else "sharded"})
    check_settings(uri, meta["config"], config, meta["world_size"], world_size, world_size_may_change)
    if meta["format"] == "sharded":
        sharded_checkpoint.load_sharded(uri, state.model, state.optimizer, meta["param_groups"])
    else:
        load_full_state(state.model, state.optimizer, ckpt and ckpt["model"], ckpt and ckpt["optimizer"])
    del ckpt
    state.scheduler.load_state_dict(meta["scheduler"])
    state.step = int(meta["step"])
    state.progress = {key: meta[key] for key in state.progress}
    log.info("resuming from %s at step %d (%s format, written by %d process(es))", uri, state.step,
             meta["format"], meta["world_size"])
    return Resumed(uri, meta["rng"] if meta["world_size"] == world_size else None)


def check_settings(uri: str, saved: dict, config, saved_world_size: int, world_size: int,
                   world_size_may_change: bool = False) -> None:
    """Refuse a resume whose settings break exactness (fields marked `exact`; the number of processes unless
    `world_size_may_change`): it would not match an uninterrupted run. Log the other changes."""
    exact, other = resume_changes(saved, config)
    if exact:
        raise UserError(f"{uri}: settings differ from the checkpoint's: written with {describe(exact, 'saved')}; "
                        f"this job has {describe(exact, 'current')}; use a new --out")
    if saved_world_size != world_size and world_size_may_change:
        log.warning("%s: written by %d process(es), resuming with %d: same data position, new per-rank RNG "
                    "streams (drop path)", uri, saved_world_size, world_size)
    elif saved_world_size != world_size:
        raise UserError(f"{uri}: written by {saved_world_size} process(es); this job has {world_size}, which "
                        f"changes the data order and RNG streams; use the same number or a new --out")
    if other:
        log.warning("%s: resuming with changed %s (was %s)", uri, describe(other, "current"),
                    describe(other, "saved"))
