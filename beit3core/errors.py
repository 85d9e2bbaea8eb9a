"""The one error type for user mistakes.

A UserError carries a single line that names the file, row or field at fault. The `beit3` command prints
it as `error: <message>` and exits with status 2; anything else is a bug and keeps its traceback.
"""

import argparse
import dataclasses
import logging
import math
import os
import sys


class UserError(Exception):
    """A mistake in the user's input: missing file, bad parameter, malformed data."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages hide the part that names the culprit.
        super().__init__(" ".join(str(message).split()))


def check_range(name: str, value, bounds: str) -> None:
    """Refuse `value` unless it is a finite number within `bounds`, an interval such as "[0, 1)", "(0, inf)" or
    "[1, inf)"; the one-line message names `name` (the flag the user typed, e.g. `--lr`)."""
    low, high = (float(x) for x in bounds[1:-1].split(","))
    inside = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (low <= value if bounds[0] == "[" else low < value)
              and (value <= high if bounds[-1] == "]" else value < high))
    if not inside:
        if high == math.inf:
            want = f"{'>=' if bounds[0] == '[' else '>'} {bounds[1:-1].split(',')[0].strip()}"
        else:
            want = f"in {bounds}"
        raise UserError(f"{name}: must be {want}, got {value!r}")


def check_bounds(config) -> None:
    """Refuse a dataclass field outside the interval in its metadata `bounds` (each value of a tuple), naming
    its flag: the parsers' rule, for configs built without a parser (task.json, params.yaml, components)."""
    for field in dataclasses.fields(config):
        value, bounds = getattr(config, field.name), field.metadata.get("bounds")
        if bounds and value is not None:
            for item in value if isinstance(value, tuple) else (value,):
                check_range("--" + field.name.replace("_", "-"), item, bounds)


def finite_float(text: str) -> float:
    """argparse type of every float flag: nan and inf are not numbers a setting can mean."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def in_range(parse, bounds: str):
    """An argparse type: `parse` the text, then refuse a value outside `bounds` (`check_range`), e.g.
    `add_argument("--workers", type=in_range(int, "[1, inf)"))`; argparse names the flag in the error line."""
    def parse_in_range(text: str):
        value = parse(text)
        try:
            check_range("value", value, bounds)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None
        return value

    parse_in_range.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid int value"
    return parse_in_range


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors: one line naming the argument, exit status 2. Abbreviated flags are
    refused, so a renamed flag (`--model` -> `--model-dir`) fails loudly instead of matching its successor.
    Every `type=float` flag (also in argument groups and subcommands) refuses nan and inf."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)
        self.register("type", float, finite_float)

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def run_main(main, argv: list[str] | None) -> int:
    """Run a stage's `main(argv)`: a UserError becomes one line `error: ...` on stderr and exit status 2, never
    a traceback. The `beit3` command and every `python -m` entrypoint go through here."""
    logging.basicConfig(level=os.environ.get("BEIT3_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
