"""Test seams of the trainers: callbacks `train(cfg, dist_info, hooks)` calls on every rank.

Production runs pass none (every hook does nothing). Tests that need a process of their own (torchrun, a
SIGKILL mid-run) run tests/helpers/run_with_hooks.py, which installs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


def _ignore(*_args) -> None:
    return None


@dataclass(frozen=True)
class TrainHooks:
    on_start: Callable[[nn.Module], None] = _ignore  # the model as built, before resuming and training
    on_end: Callable[[nn.Module], None] = _ignore  # the model after the last step
    # (step, phase) while rank 0 writes a checkpoint: see beit3train.checkpointing.save_checkpoint
    on_checkpoint_write: Callable[[int, str], None] | None = None
