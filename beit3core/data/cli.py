"""`beit3 data {import,synth,validate}`: the data stage commands (python -m beit3core.data.cli ...)."""

from __future__ import annotations

import argparse
import logging
import sys

from beit3core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from beit3core.data import importers, synth, validate

    parser = argparse.ArgumentParser(prog="beit3 data", description="Import, synthesize and validate datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{import,synth,validate}")
    p = sub.add_parser("import", help="convert a dataset in a common format into a raw dataset")
    importers.add_arguments(p)
    p.set_defaults(run=importers.run)
    p = sub.add_parser("synth", help="write the seeded synthetic shapes collection")
    synth.add_arguments(p)
    p.set_defaults(run=synth.run)
    p = sub.add_parser("validate", help="validate datasets (Great Expectations), quarantine bad rows, write shards")
    validate.add_arguments(p)
    p.set_defaults(run=validate.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a data command; a user mistake prints one `error:` line and returns 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code


if __name__ == "__main__":
    sys.exit(main())
