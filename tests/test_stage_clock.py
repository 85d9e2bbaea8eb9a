"""beit3ops.stage_clock: per-stage times of a `dvc repro` run, read from DVC's own stage announcements."""

import json
import sys

from beit3ops import stage_clock


def test_a_stage_lasts_until_the_next_one_starts():
    """DVC prints `Running stage 'NAME':` when it starts a stage (dvc/stage/run.py) and `Stage 'NAME' didn't
    change, skipping` for a cached one: only the running ones are timed, each until the next starts."""
    lines = [(0.0, "Running stage 'validate':\n"), (0.5, "> beit3 data validate data\n"),
             (2.0, "Stage 'tokenize_text' didn't change, skipping\n"),
             (3.0, "Running stage 'finetune@vqa':\n"), (4.0, "Updating lock file 'dvc.lock'\n")]
    assert stage_clock.stage_times(lines, end=10.0) == [
        {"stage": "validate", "seconds": 3.0}, {"stage": "finetune@vqa", "seconds": 7.0}]
    assert stage_clock.stage_times([(0.0, "Everything is up to date.\n")], end=1.0) == []


def test_runs_the_command_passes_output_and_exit_code_through(tmp_path, capsys):
    script = "print(\"Running stage 'a':\"); print('work'); print(\"Running stage 'b':\"); raise SystemExit(3)"
    out = tmp_path / "times.json"
    code = stage_clock.main(["--out", str(out), "--", sys.executable, "-c", script])
    assert code == 3
    printed = capsys.readouterr().out
    assert "work" in printed and "stage times:" in printed
    record = json.loads(out.read_text())
    assert record["exit_code"] == 3 and [s["stage"] for s in record["stages"]] == ["a", "b"]


def test_a_command_that_cannot_start_is_one_line_exit_2(tmp_path, capsys):
    code = stage_clock.run_main(stage_clock.main, ["--out", str(tmp_path / "t.json"), "--", "/nonexistent/dvc"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: /nonexistent/dvc: cannot run")
