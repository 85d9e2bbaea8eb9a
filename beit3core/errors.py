"""The one error type for user mistakes.

A UserError carries a single line that names the file, row or field at fault. The `beit3` command prints
it as `error: <message>` and exits with status 2; anything else is a bug and keeps its traceback.
"""

import argparse


class UserError(Exception):
    """A mistake in the user's input: missing file, bad parameter, malformed data."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages hide the part that names the culprit.
        super().__init__(" ".join(str(message).split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors: one line naming the argument, exit status 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")
