"""Progress output in logs: whole lines at intervals, not a bar redrawn with carriage returns (issue 17)."""

import io as _io

from beit3core.progress import LineProgress, progress_bar


class _Tty(_io.StringIO):
    def isatty(self):
        return True


def test_log_output_is_whole_lines_without_carriage_returns(monkeypatch):
    monkeypatch.setenv("BEIT3_PROGRESS_INTERVAL", "0")
    out = _io.StringIO()
    bar = progress_bar(range(200), desc="tokenize", file=out, leave=False)
    assert isinstance(bar, LineProgress)
    assert sum(1 for _ in bar) == 200
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("tokenize:") for line in lines)
    assert "200/200" in lines[-1]  # the final line survives even with leave=False
    assert len(lines) == len(set(lines))  # an unchanged bar is not printed twice


def test_log_lines_are_rate_limited(monkeypatch):
    monkeypatch.setenv("BEIT3_PROGRESS_INTERVAL", "3600")
    out = _io.StringIO()
    for _ in progress_bar(range(10_000), desc="steps", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 3  # the first refresh, and the closing line


def test_terminal_keeps_the_redrawn_bar():
    out = _Tty()
    bar = progress_bar(range(3), file=out)
    assert not isinstance(bar, LineProgress)
    list(bar)
    bar.close()
    assert "\r" in out.getvalue()


def test_other_log_lines_never_join_a_progress_line(monkeypatch):
    """A log record written between two refreshes starts on a line of its own (in `dvc repro` output a
    checkpoint message was glued to the end of the bar), and no line is cut to a terminal width."""
    monkeypatch.setenv("BEIT3_PROGRESS_INTERVAL", "0")
    out = _io.StringIO()
    bar = progress_bar(total=3, desc="pretrain", file=out)
    bar.set_postfix({"loss": 1.25, "grad_norm": 3.5, "samples_per_s": 157.25, "lr": 0.001}, refresh=False)
    bar.update(1)
    out.write("INFO checkpoint step 1\n")
    bar.update(2)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "INFO checkpoint step 1" in lines
    assert lines[-1].startswith("pretrain: 100% 3/3") and "samples_per_s=157" in lines[-1]
