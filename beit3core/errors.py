"""The one error type for user mistakes.

A UserError carries a single line that names the file, row or field at fault. The `beit3` command prints
it as `error: <message>` and exits with status 2; anything else is a bug and keeps its traceback.
"""

import argparse
import logging
import os
import sys


class UserError(Exception):
    """A mistake in the user's input: missing file, bad parameter, malformed data."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages hide the part that names the culprit.
        super().__init__(" ".join(str(message).split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors: one line naming the argument, exit status 2. Abbreviated flags are
    refused, so a renamed flag (`--model` -> `--model-dir`) fails loudly instead of matching its successor."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

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
