"""Sharded model + optimizer state with torch.distributed.checkpoint (DCP): every rank writes its own part.

Layout of one sharded checkpoint folder (beside it `train_state.pt` and `COMPLETE`, see beit3train.checkpointing):

    step-0000200/shards/__0_0.distcp    rank 0's tensors (its FSDP shards; under DDP a share of the replicas)
    step-0000200/shards/__1_0.distcp    rank 1's tensors, ... one file per rank
    step-0000200/shards/.metadata       written last by rank 0: which chunk of which tensor is where

No rank ever holds the full state: under FSDP2 each rank saves its DTensor shards; DDP replicas are split among
ranks by DCP's de-duplication. A load reads the chunks each rank needs for its own layout, so a checkpoint
written by W ranks loads on any number of ranks, or in one process without a process group.

Only tensors go through DCP. The optimizer's param_groups (numbers and parameter names) travel in the caller's
weights-only file. Loading trusts nothing pickled beyond DCP's own bookkeeping: tensor files are read by torch
with weights_only=True, `.metadata` (a pickle written by torch) is unpickled with an allow-list of DCP's
metadata classes, and a byte entry (DCP unpickles those with weights_only=False) is refused.
"""

from __future__ import annotations

import contextlib
import io as _pyio
import pickle
import warnings
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import (
    FileSystem as _FsspecFileSystem,
)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from beit3core import io
from beit3core.checkpoint import strip_wrapper_prefixes
from beit3core.errors import UserError

SHARDS = "shards"
_METADATA = ".metadata"
_MODEL, _OPTIM = "model", "optim"


class _StoreFileSystem(_FsspecFileSystem):
    """DCP's fsspec file system on the platform's own: local paths and s3:// with credentials from the
    environment only (beit3core.io), so nothing else is configured here."""

    def init_path(self, path, **kwargs):
        self.fs, physical = io.filesystem(str(path))
        return physical


class _Writer(FileSystemWriter):
    def __init__(self, uri: str):
        super().__init__(uri, single_file_per_rank=True, sync_files=not io.is_remote(uri))
        self.fs = _StoreFileSystem()
        self.path = self.fs.init_path(uri)


# `.metadata` is pickled by torch (filesystem.py `finish`, read back with plain pickle.load); these are the only
# globals a checkpoint written by DCP needs. Anything else (os.system, builtins.eval, ...) is refused.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _ALLOWED.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                               torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP metadata")


class _Reader(FileSystemReader):
    def __init__(self, uri: str):
        super().__init__(uri)
        self.fs = _StoreFileSystem()
        self.path = self.fs.init_path(uri)
        self.uri = uri

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        where = io.join(self.uri, _METADATA)
        try:
            with self.fs.create_stream(self.fs.concat_path(self.path, _METADATA), "rb") as f:
                metadata = _MetadataUnpickler(_pyio.BytesIO(f.read())).load()
        except FileNotFoundError:
            raise UserError(f"{where}: missing; the checkpoint was not written completely") from None
        except Exception as e:  # noqa: BLE001 - truncated, garbage or a foreign pickle: a bad file, named as such
            raise UserError(f"{where}: not DCP checkpoint metadata ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
            raise UserError(f"{where}: not DCP checkpoint metadata ({type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnlyPlanner(DefaultLoadPlanner):
    """DCP reads a byte entry with torch.load(weights_only=False); our checkpoints hold tensors only."""

    def load_bytes(self, read_item, value) -> None:
        raise UserError(f"sharded checkpoint entry {read_item.dest_index.fqn!r}: not a tensor; refusing to unpickle it")


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every save/load without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _tensors_only(optim_state: dict, where: str) -> None:
    for fqn, entries in optim_state.items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{where}: optimizer state {fqn}.{key} is a {type(value).__name__}, not a tensor")


def save_sharded(uri: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict]:
    """Write the model's and optimizer's tensors under `uri/shards` (collective: every rank calls it and writes
    its own file; rank 0 writes `.metadata` once all have written). Returns the optimizer's param_groups
    (parameter names, lr, betas...), for the caller's weights-only file."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _tensors_only(optim_sd["state"], uri)
    with _single_process_quiet():
        dcp.save({_MODEL: model_sd, _OPTIM: optim_sd["state"]}, storage_writer=_Writer(io.join(uri, SHARDS)),
                 no_dist=not torch.distributed.is_initialized())
    return optim_sd["param_groups"]


def load_sharded(uri: str, model: nn.Module, optimizer: torch.optim.Optimizer, param_groups: list[dict]) -> None:
    """Load `uri/shards` into `model` and `optimizer` as they are laid out now (any number of ranks, FSDP2, DDP
    or a plain module; collective under a process group). Parameters that had no optimizer state when saved
    (never a gradient) have none after the load either."""
    reader = _Reader(io.join(uri, SHARDS))
    saved = set(reader.read_metadata().state_dict_metadata)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # a fresh optimizer gets zero state to load into
    missing = [k for k in model_sd if f"{_MODEL}.{k}" not in saved]
    if missing:
        raise UserError(f"{io.join(uri, SHARDS)}: has no {missing[0]!r} ({len(missing)} model tensors missing); "
                        "written for another model")
    optim_state = {fqn: entries for fqn, entries in optim_sd["state"].items()
                   if all(f"{_OPTIM}.{fqn}.{key}" in saved for key in entries)}
    with _single_process_quiet():
        dcp.load({_MODEL: model_sd, _OPTIM: optim_state}, storage_reader=reader, planner=_TensorsOnlyPlanner(),
                 no_dist=not torch.distributed.is_initialized())
    # not strict: the optimizer may lack state for some parameters (checked above for the model's tensors)
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict={"state": optim_state, "param_groups": param_groups},
                   options=StateDictOptions(strict=False))
    for name, param in model.named_parameters():
        if strip_wrapper_prefixes(name) not in optim_state:
            optimizer.state.pop(param, None)  # the zero state the fresh optimizer got above
