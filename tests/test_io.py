"""beit3core.io: URIs, atomic writes and fingerprints, locally and on the real local S3 store."""

import os
from pathlib import Path

import pytest

from beit3core import io
from beit3core.errors import UserError


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_prefix")


def test_round_trips(base):
    io.write_json(io.join(base, "a", "x.json"), {"k": [1, 2]})
    io.write_jsonl(io.join(base, "a", "rows.jsonl"), [{"id": 1}, {"id": 2, "t": "caf\udce9"}])
    io.write_text(io.join(base, "b.txt"), "héllo")
    assert io.read_json(io.join(base, "a", "x.json")) == {"k": [1, 2]}
    rows = io.read_jsonl(io.join(base, "a", "rows.jsonl"))
    assert rows[1]["t"] == "caf\udce9"  # an undecodable byte survives for validation to name
    assert io.read_text(io.join(base, "b.txt")) == "héllo"
    assert [os.path.basename(u) for u in io.ls(base)] == ["a", "b.txt"]
    assert io.exists(io.join(base, "b.txt")) and not io.exists(io.join(base, "nope"))


def test_atomic_write_publishes_nothing_on_failure(base):
    target = io.join(base, "out.bin")
    with pytest.raises(RuntimeError), io.atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("killed mid-write")
    assert not io.exists(target)
    assert io.ls(base) == [] if io.exists(base) else True


def test_fingerprint_tracks_content(base):
    io.write_text(io.join(base, "d", "f1"), "one")
    first = io.fingerprint(io.join(base, "d"))
    assert first == io.fingerprint(io.join(base, "d"))
    io.write_text(io.join(base, "d", "f1"), "two")
    assert io.fingerprint(io.join(base, "d")) != first


def test_local_path_round_trip(base, tmp_path):
    target = io.join(base, "model.bin")
    with io.local_path(target, "w") as local, open(local, "wb") as f:
        f.write(b"weights")
    with io.local_path(target) as local:
        assert Path(local).read_bytes() == b"weights"
    io.put_dir(_make_dir(tmp_path), io.join(base, "dir"))
    got = io.get_dir(io.join(base, "dir"), str(tmp_path / "back"))
    assert Path(got, "sub", "f.txt").read_text() == "x"


def _make_dir(tmp_path):
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.txt").write_text("x")
    return str(d)


def test_missing_input_is_a_user_error(base):
    with pytest.raises(UserError, match="no such file"):
        io.read_bytes(io.join(base, "missing.json"))


def test_a_folder_where_a_file_belongs_is_a_user_error(base):
    io.write_text(io.join(base, "d", "f.txt"), "x")
    with pytest.raises(UserError, match="is a folder, not a file"):
        io.read_bytes(io.join(base, "d"))


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    target = str(tmp_path / "f.json")
    io.write_json(target, {"v": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(UserError, match=r"f\.json: cannot write: no space left on device"):
        io.write_json(target, {"v": 2})
    monkeypatch.undo()
    assert io.read_json(target) == {"v": 1} and os.listdir(tmp_path) == ["f.json"]
