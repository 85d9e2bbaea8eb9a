"""Cancellation: SIGTERM (what KFP sends when a run is cancelled) as an exception the runners clean up after."""

from __future__ import annotations

import contextlib
import signal
import threading


class Cancel(BaseException):
    """Raised from the signal handler; a BaseException so that no `except Exception` swallows it."""


@contextlib.contextmanager
def cancel_on_signals(signals=(signal.SIGTERM,)):
    """Turn SIGTERM into a `Cancel` exception for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Cancel(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
