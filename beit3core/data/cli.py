"""`beit3 data {import,synth,validate}`: the data stage commands (python -m beit3core.data.cli ...)."""

from __future__ import annotations

import argparse
import sys

from beit3core.data import importers, synth, validation
from beit3core.errors import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="beit3 data", description="Import, synthesize and validate datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{import,synth,validate}")
    p = sub.add_parser("import", help="convert a dataset in a common format into a raw dataset")
    importers.add_arguments(p)
    p.set_defaults(run=importers.run)
    p = sub.add_parser("synth", help="write the seeded synthetic shapes collection")
    synth.add_arguments(p)
    p.set_defaults(run=synth.run)
    p = sub.add_parser("validate", help="validate datasets (Great Expectations), quarantine bad rows, write shards")
    validation.add_arguments(p)
    p.set_defaults(run=validation.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a data command (through `run_main`, a user mistake is one `error:` line and exit 2)."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(run_main(main, None))
