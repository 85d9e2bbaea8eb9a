"""Run `beit3 pretrain` or `beit3 finetune` with test hooks, for tests that need a process of their own
(torchrun ranks, a SIGKILL in the middle of a run):

    python tests/helpers/run_with_hooks.py {pretrain,finetune} [--kill-in-checkpoint STEP[:PHASE]]
        [--dump-weights DIR] TRAINER_FLAGS...

--kill-in-checkpoint: SIGKILL the process while it writes the checkpoint of STEP, at PHASE "partial-file"
(the default: half of checkpoint.pt written) or "before-marker" (checkpoint.pt published, COMPLETE not yet).
--dump-weights: every rank saves its own weights as DIR/rank{r}.start.pt (as built) and DIR/rank{r}.pt (after
the last step).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

from beit3core.errors import run_main
from beit3train import finetune, pretrain
from beit3train.distributed import run_distributed
from beit3train.hooks import TrainHooks

TRAINERS = {"pretrain": pretrain, "finetune": finetune}


def kill_in_checkpoint(spec: str):
    target, _, phase = spec.partition(":")

    def on_write(step: int, at: str) -> None:
        if step == int(target) and at == (phase or "partial-file"):
            os.kill(os.getpid(), signal.SIGKILL)

    return on_write


def dump_weights(folder: str, suffix: str):
    def dump(model: torch.nn.Module) -> None:
        os.makedirs(folder, exist_ok=True)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(folder, f"rank{rank}{suffix}.pt"))

    return dump


def hooks_from(args: argparse.Namespace) -> TrainHooks:
    hooks = {}
    if args.kill_in_checkpoint:
        hooks["on_checkpoint_write"] = kill_in_checkpoint(args.kill_in_checkpoint)
    if args.dump_weights:
        hooks.update(on_start=dump_weights(args.dump_weights, ".start"), on_end=dump_weights(args.dump_weights, ""))
    return TrainHooks(**hooks)


def main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("trainer", choices=sorted(TRAINERS))
    parser.add_argument("--kill-in-checkpoint", metavar="STEP[:PHASE]")
    parser.add_argument("--dump-weights", metavar="DIR")
    args, trainer_argv = parser.parse_known_args(argv)
    trainer = TRAINERS[args.trainer]
    run_distributed(trainer.train, trainer.parse_args(trainer_argv), hooks_from(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
