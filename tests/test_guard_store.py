"""`beit3 store`: `down` signals only the server `up` recorded, key files are private, a corrupt state file is one
error line. Crafted state files name pid 1, a live foreign process and a dead pid; the os signal calls are
recorded so a wrong signal fails the test instead of reaching the host."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from beit3core.errors import UserError, run_main
from beit3ops import store

_REAL_KILL = os.kill


def _state(data_dir, pid, **extra):
    os.makedirs(data_dir, exist_ok=True)
    info = {"pid": pid, "endpoint": "http://127.0.0.1:1", "data_dir": str(data_dir), "access_key": "a",
            "secret_key": "s", **extra}
    with open(os.path.join(data_dir, "state.json"), "w") as f:
        json.dump(info, f)


@pytest.fixture
def signals(monkeypatch):
    """Every kill/killpg call with a real signal (not the 0 probe), recorded and never delivered."""
    sent = []

    def kill(pid, sig):
        if sig:
            sent.append(("kill", pid, sig))
        else:
            os_kill(pid, 0)

    os_kill = os.kill
    monkeypatch.setattr(store.os, "kill", kill)
    monkeypatch.setattr(store.os, "killpg", lambda pgid, sig: sent.append(("killpg", pgid, sig)))
    return sent


@pytest.fixture
def sleeper():
    """A live process of our own in its own session, as the store's server would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    while store._identity(proc.pid) is None:  # right after exec, /proc/<pid>/cmdline can still read empty
        time.sleep(0.01)
    yield proc
    if proc.poll() is None:  # not already stopped (and reaped) by the test
        _REAL_KILL(proc.pid, signal.SIGKILL)  # os.kill may be the recording stand-in of `signals` here
        proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_down_with_state_naming_pid_1_signals_nothing(tmp_path, signals, capsys):
    """Before: `down` ran os.killpg(1, SIGTERM), i.e. kill(-1): every process of the user on the host."""
    _state(tmp_path, 1, cmdline=["/sbin/init"], start_time=1)
    assert run_main(store.main, ["--dir", str(tmp_path), "down"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid <= 1" in err and "nothing signalled" in err
    assert signals == []
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("recorded", ["matching_cmdline_other_start", "old_state_without_identity", "other_cmdline"])
def test_down_with_state_naming_a_foreign_live_process_signals_nothing(tmp_path, signals, sleeper, recorded, capsys):
    """A reused pid (same pid, another start time or command line) or a pre-identity state file is not the
    server: nothing is signalled, the process lives on, the stale state is cleared."""
    argv, start = store._identity(sleeper.pid)
    extra = {"matching_cmdline_other_start": {"cmdline": list(argv), "start_time": start - 1},
             "old_state_without_identity": {},
             "other_cmdline": {"cmdline": ["weed", "server"], "start_time": start}}[recorded]
    _state(tmp_path, sleeper.pid, **extra)
    assert run_main(store.main, ["--dir", str(tmp_path), "down"]) == 0
    assert capsys.readouterr().out == "store was not running\n"
    assert signals == [] and sleeper.poll() is None
    assert not (tmp_path / "state.json").exists()


def test_down_with_state_naming_a_dead_pid_signals_nothing(tmp_path, signals, capsys):
    _state(tmp_path, _dead_pid(), cmdline=["weed"], start_time=5)
    assert run_main(store.main, ["--dir", str(tmp_path), "down"]) == 0
    assert capsys.readouterr().out == "store was not running\n" and signals == []


def test_down_never_signals_its_own_process(tmp_path, signals):
    argv, start = store._identity(os.getpid())
    _state(tmp_path, os.getpid(), cmdline=list(argv), start_time=start)
    assert store.down(str(tmp_path)) is False and signals == []


def test_down_stops_the_recorded_server_by_its_group(tmp_path, sleeper):
    argv, start = store._identity(sleeper.pid)
    _state(tmp_path, sleeper.pid, cmdline=list(argv), start_time=start)
    assert store.down(str(tmp_path)) is True
    sleeper.wait(timeout=10)  # `down` may have reaped it already (it is our child here): then the code reads 0
    assert store._identity(sleeper.pid) is None
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("content", ["{not json", '{"pid": "12"}', "[1, 2]", '{"pid": 0, "endpoint": "x"}',
                                     b"\xff\xfe"], ids=["syntax", "pid-str", "list", "pid-0", "not-utf8"])
def test_status_with_a_corrupt_state_file_is_one_error_line(tmp_path, content, capsys):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(tmp_path / "state.json", mode) as f:
        f.write(content)
    for action in ("status", "env"):
        assert run_main(store.main, ["--dir", str(tmp_path), action]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "corrupt store state" in err and "store down" in err


def test_key_files_are_private_and_stay_private_when_rewritten(tmp_path):
    """Before: state.json (which holds the secret key) was written with the umask's 0644."""
    d = tmp_path / "store"
    d.mkdir(mode=0o755)
    creds = d / "credentials.json"
    creds.write_text(json.dumps({"access_key": "a", "secret_key": "s"}))
    os.chmod(creds, 0o644)  # an older version's file
    store._private_dir(str(d))
    store._credentials(str(d))
    info = {"pid": 2, "secret_key": "s"}
    store._write_private(store._state_path(str(d)), info)
    (d / "state.json").chmod(0o644)
    store._write_private(store._state_path(str(d)), info)  # a rewrite over a wider file
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("credentials.json", "state.json"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert sorted(os.listdir(d)) == ["credentials.json", "state.json"]  # no temporary file left


def test_a_shared_folder_is_not_made_private_or_used(tmp_path):
    """`--dir` naming a folder open to others that is not a store folder (like /tmp) is refused, mode kept."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("x")
    shared.chmod(0o777)
    with pytest.raises(UserError, match="not a store folder"):
        store._private_dir(str(shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    fresh = tmp_path / "a" / "new"
    store._private_dir(str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
