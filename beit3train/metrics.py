"""Training metrics: TensorBoard event files, a metrics.jsonl file and a console progress bar, same figures.

    RUN_URI/metrics.jsonl     one JSON object per logged step: {"step": 10, "loss": ..., ...}
    RUN_URI/tb/               TensorBoard events (scalar per key, x = step)

For a local run URI the files are written in place. For s3:// they are written to a local staging folder
and uploaded on `flush()` (called at every checkpoint) and `close()`: an object store has no append. On
resume the history is cut at the resumed step (records of steps the killed run did after its last
checkpoint would be replayed) and TensorBoard is told to purge later events.

Only rank 0 should hold an enabled MetricsLogger; others get `MetricsLogger(None)` which does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from beit3core import io
from beit3core.progress import progress_bar

log = logging.getLogger(__name__)


def _fmt(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")


class MetricsLogger:
    def __init__(self, run_uri: str | None, *, start_step: int = 0, total_steps: int | None = None,
                 progress: bool = True, desc: str = "train"):
        self.run_uri = run_uri
        self.enabled = run_uri is not None
        self._bar = None
        self._tb = None
        if not self.enabled:
            return
        self.remote = io.is_remote(run_uri)
        self._stage = tempfile.mkdtemp(prefix="beit3-metrics-") if self.remote else None
        self.local_dir = self._stage if self.remote else run_uri
        os.makedirs(self.local_dir, exist_ok=True)
        self.jsonl_path = os.path.join(self.local_dir, "metrics.jsonl")
        self._restore_history(start_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        # purge_step hides events a killed run wrote after its last checkpoint.
        self._tb = SummaryWriter(os.path.join(self.local_dir, "tb"),
                                 purge_step=start_step + 1 if start_step > 0 else None)
        if progress:
            self._bar = progress_bar(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def _restore_history(self, start_step: int) -> None:
        uri = io.join(self.run_uri, "metrics.jsonl")
        rows: list[dict] = []
        if io.exists(uri):
            rows = [r for r in io.read_jsonl(uri) if r.get("step", 0) <= start_step]
        with open(self.jsonl_path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Record `values` for `step` (the number of optimizer steps done) everywhere."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
        self._jsonl.flush()
        for key, value in clean.items():
            self._tb.add_scalar(f"train/{key}", value, step)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in clean.items()}, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def flush(self) -> None:
        if not self.enabled:
            return
        self._jsonl.flush()
        self._tb.flush()
        if self.remote:
            io.put_dir(self._stage, self.run_uri)

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        self._jsonl.close()
        self._tb.close()
        if self._bar is not None:
            self._bar.close()
        if self.remote:
            io.put_dir(self._stage, self.run_uri)
            shutil.rmtree(self._stage, ignore_errors=True)
        self.enabled = False
