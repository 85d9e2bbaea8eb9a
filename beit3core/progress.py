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


class LineProgress(tqdm):
    """tqdm that writes a full line per refresh instead of redrawing one line in place."""

    def __init__(self, *args, **kwargs):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), line_interval())
        kwargs["miniters"] = 1  # with dynamic miniters tqdm would refresh on count, not on time
        kwargs["ascii"] = True
        kwargs["dynamic_ncols"] = False
        kwargs["ncols"] = kwargs.get("ncols") or 100
        kwargs["leave"] = True  # a log keeps its last line; clearing is a terminal notion
        self._last_line = None
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "":  # tqdm clears the line before redrawing or on close: nothing to clear in a log
            return True
        line = (msg if msg is not None else self.__str__()).strip()
        if line and line != self._last_line:
            # The newline goes before a line, not after: tqdm's close() ends the last one with its own.
            self.fp.write(("\n" if self._last_line is not None else "") + line)
            self.fp.flush()
            self._last_line = line
        return True


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A progress bar over `iterable` (tqdm's arguments): tqdm on a terminal, `LineProgress` in a log."""
    if kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    return (tqdm if interactive else LineProgress)(iterable, **kwargs)
