"""The `beit3` command: fast help, one-line errors with exit status 2, the local store's lifecycle."""

import os
import subprocess
import sys

import pytest

from beit3core.errors import ArgumentParser, UserError
from beit3ops import cli, store


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "beit3ops.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_help_lists_every_stage_without_heavy_imports():
    code = ("import sys; from beit3ops import cli; cli.main(['--help']); "
            "print(sorted(m for m in ('torch', 'great_expectations', 'timm', 'kfp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    for name in cli.COMMANDS:
        assert f"  {name} " in out
    assert out.strip().splitlines()[-1] == "[]"


def test_unknown_command_is_one_line_exit_2():
    r = run("frobnicate")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown command 'frobnicate'" in r.stderr


def test_user_error_becomes_exit_2_without_traceback(capsys):
    def main(argv):
        raise UserError("data/pairs/train.jsonl: row 3: field 'caption':\n empty")

    assert cli.run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err == "error: data/pairs/train.jsonl: row 3: field 'caption': empty\n"


def test_bad_flag_is_a_user_error():
    parser = ArgumentParser(prog="beit3 x")
    parser.add_argument("--steps", type=int)
    with pytest.raises(UserError, match="beit3 x: argument --steps: invalid int value: 'many'"):
        parser.parse_args(["--steps", "many"])


def test_store_up_status_env_down(tmp_path):
    d = str(tmp_path / "store")
    r = run("store", "--dir", d, "up", "--port", "0")
    assert r.returncode == 0, r.stderr
    try:
        info = store.status(d)
        assert info is not None and info.endpoint.startswith("http://127.0.0.1:")
        env = run("store", "--dir", d, "env").stdout
        assert f"export AWS_ENDPOINT_URL={info.endpoint}" in env
        # Every listening socket of the server is bound to loopback only.
        ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        mine = [line for line in ss.splitlines() if f"pid={info.pid}," in line]
        assert mine and all("127.0.0.1:" in line for line in mine), mine
        assert run("store", "--dir", d, "up").returncode == 0  # idempotent
        assert store.status(d).pid == info.pid
        # The folder and every file holding a key are private; the state names the server's argv and start time.
        assert os.stat(d).st_mode & 0o777 == 0o700
        for name in ("credentials.json", "s3.json", "state.json"):
            assert os.stat(os.path.join(d, name)).st_mode & 0o777 == 0o600, name
        assert store._identity(info.pid) == (info.cmdline, info.start_time)
    finally:
        assert "stopped" in run("store", "--dir", d, "down").stdout
    assert store.status(d) is None
    r = run("store", "--dir", d, "env")
    assert r.returncode == 2 and "not running" in r.stderr
