"""Times each stage of a `dvc repro` run from its output, for `make demo`'s per-stage table.

    python -m beit3ops.stage_clock --out artifacts/stage_times.json -- dvc repro

Runs the command, passes its output through line by line, and starts a stage's clock at the line where DVC
announces it (`Running stage 'NAME':`, dvc/stage/run.py); the stage ends where the next one starts or the
command ends. Stages DVC skips as unchanged are not timed. Writes {"command", "exit_code", "total_s",
"stages": [{"stage", "seconds"}]} and prints the table; exits with the command's exit code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from beit3core import io
from beit3core.errors import ArgumentParser, UserError, run_main

RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':")


def stage_times(lines_with_times: list[tuple[float, str]], end: float) -> list[dict]:
    """[{"stage", "seconds"}] from (time, line) pairs of DVC's output; a stage lasts until the next starts."""
    starts = [(t, m["stage"]) for t, line in lines_with_times if (m := RUNNING.match(line))]
    out = []
    for i, (t, stage) in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else end
        out.append({"stage": stage, "seconds": round(until - t, 1)})
    return out


def table(stages: list[dict], total: float) -> str:
    width = max([len(s["stage"]) for s in stages] + [5])
    rows = [f"{s['stage']:<{width}}  {s['seconds']:8.1f} s" for s in stages]
    return "\n".join(["stage times:", *rows, f"{'total':<{width}}  {total:8.1f} s"])


def run_timed(command: list[str]) -> tuple[int, list[tuple[float, str]], float, float]:
    started = time.monotonic()
    seen: list[tuple[float, str]] = []
    try:
        # Python stages would hold their output in a pipe's buffer until they exit: unbuffered, they stream.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as err:
        raise UserError(f"{command[0]}: cannot run ({err.strerror})") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        seen.append((time.monotonic(), line))
    code = proc.wait()
    return code, seen, started, time.monotonic()


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m beit3ops.stage_clock", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the stage times")
    p.add_argument("command", nargs="+", help="the command to run, after --")
    args = p.parse_args(argv)
    code, seen, started, ended = run_timed(args.command)
    stages = stage_times(seen, ended)
    total = round(ended - started, 1)
    io.write_text(args.out, json.dumps({"command": " ".join(args.command), "exit_code": code, "total_s": total,
                                        "stages": stages}, indent=1) + "\n")
    if stages:
        print(table(stages, total))
    return code


if __name__ == "__main__":
    sys.exit(run_main(main, None))
