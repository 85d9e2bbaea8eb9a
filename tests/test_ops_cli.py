"""The platform commands (`beit3 store`, `register`, `launch`, and `python -m beit3ops.demo_summary`) parse with
the project's ArgumentParser: a bad flag, a bad value or a missing argument, in the command or in one of its
subcommands, is one `error:` line and exit status 2; `--help` still prints help and exits 0."""

from __future__ import annotations

import pytest

from beit3core.errors import run_main
from beit3ops import cli, demo_summary

BAD = [
    ["store", "--bogus"], ["store", "up", "--bogus"], ["store", "up", "--port", "many"],
    ["register", "--bogus"], ["register", "--model-dir", "m"], ["register", "list", "--bogus"],
    ["launch", "--bogus"], ["launch", "train"], ["launch", "pretrain", "--replicas", "two"],
    ["launch", "pretrain", "--toleration", "gpu:Sometimes"], ["launch", "pretrain", "--env", "NOEQUALS"],
]


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_bad_invocation_is_one_error_line_and_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize("argv", [["--bogus"], ["compare", "artifacts"], ["show"]], ids=" ".join)
def test_demo_summary_bad_invocation_is_one_error_line(argv, capsys):
    assert run_main(demo_summary.main, argv) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize("argv", [["store", "--help"], ["store", "up", "--help"], ["register", "--help"],
                                  ["register", "list", "--help"], ["launch", "--help"]], ids=" ".join)
def test_help_still_prints_and_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: beit3 ")
