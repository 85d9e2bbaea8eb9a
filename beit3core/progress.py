"""Progress bars that read well in a log as on a terminal.

On a terminal this is plain tqdm. When stderr is not a terminal (`dvc repro` output, CI, a Kubeflow step's log) a
redrawn bar becomes thousands of carriage-return fragments, so the bar prints one whole line at most every
`BEIT3_PROGRESS_INTERVAL` seconds (default 30) and one final line when it closes.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0


def line_interval() -> float:
    raw = os.environ.get("BEIT3_PROGRESS_INTERVAL", "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class LineProgress(tqdm):
    """tqdm that writes a full line per refresh instead of redrawing one line in place."""

    def __init__(self, iterable=None, *args, **kwargs):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), line_interval())
        kwargs["miniters"] = 1  # with dynamic miniters tqdm would refresh on count, not on time
        kwargs["dynamic_ncols"] = False
        kwargs["ncols"] = None  # a log line is never cut to a terminal's width
        total = kwargs.get("total")
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        if total:
            kwargs["bar_format"] = LINE_FORMAT  # no bar: figures only
        # Not `leave`: tqdm would end the last line with a newline of its own; `display` ends every line itself
        # and prints the final one when close() asks to clear it.
        kwargs["leave"] = False
        self._last_line = None
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg=None, pos=None):
        line = self.__str__().strip() if not msg else msg.strip()
        if line and line != self._last_line:
            self.fp.write(line + "\n")
            self.fp.flush()
            self._last_line = line
        return False  # nothing to clear with a carriage return


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A progress bar over `iterable` (tqdm's arguments): tqdm on a terminal, `LineProgress` in a log."""
    if kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    return (tqdm if interactive else LineProgress)(iterable, **kwargs)
