"""`beit3`: one command, a subcommand per stage.

Each subcommand is the `main(argv)` of the module that does the work, so `beit3 X ...`, `python -m MODULE ...`,
the DVC stage and the Kubeflow component all run the same code. Modules load only when their command runs:
`beit3 --help` imports neither torch nor great_expectations.
"""

from __future__ import annotations

import importlib
import sys

from beit3core import __version__
from beit3core.errors import run_main

COMMANDS: dict[str, tuple[str, str]] = {
    "store": ("beit3ops.store", "start/stop the local S3 store (SeaweedFS on 127.0.0.1)"),
    "data": ("beit3core.data.cli", "import, synthesise and validate datasets"),
    "tokenize": ("beit3core.tokenizers.cli", "train or import the text / visual tokenizers and tokenize a dataset"),
    "pretrain": ("beit3train.pretrain", "masked data modeling over images, texts and image-text pairs"),
    "finetune": ("beit3train.finetune", "fine-tune on one downstream task"),
    "evaluate": ("beit3train.evaluate", "evaluate a fine-tuned model and write its report"),
    "register": ("beit3ops.model_registry", "record an evaluated model in a model registry"),
    "launch": ("beit3ops.launch.cli", "run a training stage as a PyTorchJob, a TrainJob or local torchrun"),
    "models": ("beit3core.models.cli", "list the registered model configs and their parameter counts"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: beit3 COMMAND [ARGS...]", "", "BEiT-3 end to end: data, tokenizers, pretraining, fine-tuning.", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`beit3 COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "--version":
        print(f"beit3 {__version__}")
        return 0
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
