"""Stage outputs: OUT is replaced only when it is this stage's own earlier output, and a failed or killed publish
leaves the previous output complete, locally (atomic swap) and on S3 (generation + pointer written last).

Upstream behaviour this relies on: S3 has no rename and a PUT (or a completed multipart upload) makes an object
appear whole (AWS S3 user guide, "Amazon S3 data consistency model"; s3fs `S3File.commit` / `discard`)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from beit3core import data, io, publish
from beit3core.data.cli import main as _data_main
from beit3core.errors import UserError, run_main

REPO = Path(__file__).resolve().parents[1]


def data_main(argv: list[str]) -> int:
    """`beit3 data ARGV` as the command runs it: a user mistake is one `error:` line and exit status 2."""
    return run_main(_data_main, argv)


def _publish(out: str, files: dict[str, str], stage: str = "data synth") -> None:
    with publish.publish(out, stage) as folder:
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(folder, rel)) or folder, exist_ok=True)
            Path(folder, rel).write_text(text)


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_prefix")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]  # progress bars share stderr
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- what may be replaced ---------------------------------------------------------------------------------------------
def test_synth_refuses_a_users_folder_a_file_and_a_link(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    plain = tmp_path / "plain.txt"
    plain.write_text("precious too")
    link = tmp_path / "link"
    link.symlink_to(user)
    for out, reason in [(user, "is not an output of `beit3 data synth`"), (plain, "is a file"),
                        (link, "symbolic link")]:
        assert data_main(["synth", str(out), "--scale", "0.05"]) == 2
        assert reason in _one_error_line(capsys)
    assert (user / "notes.txt").read_text() == "precious" and plain.read_text() == "precious too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "mine", "plain.txt"]  # no staging left behind


def test_a_stage_replaces_only_its_own_output(base):
    out = io.join(base, "out")
    _publish(out, {"a.txt": "one", "sub/b.txt": "two"})
    _publish(out, {"a.txt": "three"})  # its own earlier output: replaced whole
    assert io.read_text(io.join(out, "a.txt")) == "three" and not io.exists(io.join(out, "sub", "b.txt"))
    with pytest.raises(UserError, match="holds the output of `beit3 data synth`, not of `beit3 data import`"):
        _publish(out, {"x": "y"}, stage="data import")
    io.write_text(io.join(base, "foreign", "keep.txt"), "keep")
    with pytest.raises(UserError, match="is not an output of"):
        _publish(io.join(base, "foreign"), {"x": "y"})
    assert io.read_text(io.join(base, "foreign", "keep.txt")) == "keep"
    with pytest.raises(UserError, match="is a file"):
        _publish(io.join(base, "foreign", "keep.txt"), {"x": "y"})


def test_a_bucket_root_is_never_an_output(s3_store):
    with pytest.raises(UserError, match="bucket root is never an output"):
        publish.check_place(f"s3://{s3_store['bucket']}", "data synth")
    with pytest.raises(UserError, match="bucket root"):
        publish.check_place(f"minio://{s3_store['bucket']}/", "data validate")


def test_src_and_out_may_not_contain_each_other(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    for out in (src, src / "inside"):
        assert data_main(["import", "--format", "text", str(src), str(out)]) == 2
        assert "must be outside SRC" in _one_error_line(capsys)
    assert data_main(["validate", str(src), "--out", str(tmp_path)]) == 2  # OUT holding SRC
    assert "must be outside SRC" in _one_error_line(capsys)
    assert sorted(p.name for p in src.iterdir()) == ["a.txt"]
    with pytest.raises(UserError, match="must be outside"):
        publish.check_disjoint("s3://b/data", "minio://b/data/out")  # one store under two names


# -- failures while publishing ------------------------------------------------------------------------------------
def test_a_failed_stage_leaves_the_previous_output(base):
    out = io.join(base, "out")
    _publish(out, {"a.txt": "old", "b.txt": "old"})
    with pytest.raises(RuntimeError), publish.publish(out, "data synth") as folder:
        Path(folder, "a.txt").write_text("new")
        raise RuntimeError("the stage died")
    assert io.read_text(io.join(out, "a.txt")) == "old" and io.read_text(io.join(out, "b.txt")) == "old"
    assert publish.check_complete(out, what="test") is not None


def test_a_store_failure_mid_upload_leaves_the_previous_output(s3_prefix, monkeypatch):
    out = f"{s3_prefix}/out"
    _publish(out, {"a.txt": "old", "b.txt": "old", "c.txt": "old"})
    fs, _ = io.filesystem(out)
    real, calls = fs._put_file, []

    async def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise PermissionError("Access Denied")  # the store refuses half way
        return await real(*args, **kwargs)

    monkeypatch.setattr(fs, "_put_file", flaky)  # fsspec's cached instance: the one publish uses
    with pytest.raises(UserError, match="access denied"):
        _publish(out, {"a.txt": "new", "b.txt": "new", "c.txt": "new"})
    monkeypatch.undo()
    io.forget_generations()
    assert [io.read_text(io.join(out, n)) for n in ("a.txt", "b.txt", "c.txt")] == ["old"] * 3
    _publish(out, {"a.txt": "newer"})  # the next run publishes and drops the unfinished generation
    assert len(_generations(out)) == 1 and io.read_text(io.join(out, "a.txt")) == "newer"


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_previous_output(tmp_path, capsys, monkeypatch, code,
                                                                            reason):
    from beit3core.data import synth

    out = tmp_path / "data"
    assert data_main(["synth", str(out), "--scale", "0.05", "--image-size", "16"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()

    def no_room(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(synth, "_text", no_room)  # a write inside the stage fails
    assert data_main(["synth", str(out), "--scale", "0.05", "--image-size", "16"]) == 2
    assert reason in _one_error_line(capsys)
    monkeypatch.undo()
    monkeypatch.setattr(publish, "_exchange", no_room)  # the swap itself fails
    assert data_main(["synth", str(out), "--scale", "0.05", "--image-size", "16"]) == 2
    assert reason in _one_error_line(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- kills at each phase ----------------------------------------------------------------------------------------------
_CHILD = """
import os, signal, sys
from pathlib import Path
from beit3core import io, publish
out, phase = sys.argv[1], sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if phase == "staging":
    with publish.publish(out, "data synth") as folder:
        Path(folder, "a.txt").write_text("new")
        die()
fs = io._raw_filesystem(out)[0] if io.is_remote(out) else None
if phase == "upload":
    real, calls = fs._put_file, []
    async def put(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            die()
        return await real(*a, **k)
    fs._put_file = put
if phase == "switched":
    real_pipe = fs.pipe_file
    def pipe(*a, **k):
        real_pipe(*a, **k)
        die()
    fs.pipe_file = pipe
if phase == "swap":  # the two-rename fallback, killed between its renames
    publish._exchange = lambda a, b: False
    real_replace, count = os.replace, []
    def replace(a, b):
        count.append(a)
        if len(count) == 2:
            die()
        real_replace(a, b)
    publish.os.replace = replace
with publish.publish(out, "data synth") as folder:
    Path(folder, "a.txt").write_text("new")
    Path(folder, "b.txt").write_text("new")
"""


def _killed(out: str, phase: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, out, phase], check=False, cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _generations(out: str) -> set[str]:
    """Generation folders that still hold objects (a filer-backed store may keep empty folder entries)."""
    fs, physical = io._raw_filesystem(out)
    fs.invalidate_cache()
    return {p[len(physical) + 1:].split("/")[0] for p in fs.find(physical)} - {io.POINTER}


def _texts(out: str) -> list[str]:
    io.forget_generations()
    if io.is_remote(out):
        io._raw_filesystem(out)[0].invalidate_cache()
    return [io.read_text(io.join(out, n)) for n in ("a.txt", "b.txt")]


@pytest.mark.parametrize("phase", ["staging", "swap"])
def test_a_kill_while_publishing_locally_keeps_the_previous_output(tmp_path, phase):
    out = str(tmp_path / "out")
    _publish(out, {"a.txt": "old", "b.txt": "old"})
    _killed(out, phase)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers  # the kill left its staging folder behind ...
    if phase == "staging":
        assert _texts(out) == ["old", "old"]
    _publish(out, {"a.txt": "next", "b.txt": "next"})  # ... and the next run restores, then removes it
    assert _texts(out) == ["next", "next"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_next_run_restores_an_output_a_kill_moved_aside(tmp_path):
    out = str(tmp_path / "out")
    _publish(out, {"a.txt": "old", "b.txt": "old"})
    _killed(out, "swap")
    publish._recover_local(out)
    assert _texts(out) == ["old", "old"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("phase,expected", [("staging", "old"), ("upload", "old"), ("switched", "new")])
def test_a_kill_while_publishing_to_s3_keeps_a_complete_output(s3_prefix, phase, expected):
    out = f"{s3_prefix}/out"
    _publish(out, {"a.txt": "old", "b.txt": "old"})
    _killed(out, phase)
    assert _texts(out) == [expected, expected]
    assert publish.check_complete(out, what="test")["stage"] == "data synth"
    _publish(out, {"a.txt": "next", "b.txt": "next"})
    assert len(_generations(out)) == 1  # older generations swept
    assert _texts(out) == ["next", "next"]


# -- the record -------------------------------------------------------------------------------------------------------
def test_a_collection_missing_datasets_is_refused(base):
    out = io.join(base, "coll")
    names = ["pairs", "images", "text", "tasks/a", "tasks/b", "tasks/c", "tasks/d", "tasks/e"]
    header = {"kind": "text", "name": "t", "splits": ["train"]}
    _publish(out, {**{f"{n}/dataset.json": json.dumps(header) for n in names},
                   **{f"{n}/train.jsonl": '{"id": "1", "text": "hi"}\n' for n in names}})
    assert publish.check_complete(out, what="--data")["stage"] == "data synth"
    for gone in names[3:]:
        io.remove(io.join(out, gone), recursive=True)
    publish._VERIFIED.clear()
    with pytest.raises(UserError, match=r"--data .*incomplete or changed output of `beit3 data synth`: 5 of 8"):
        publish.check_complete(out, what="--data")
    # a dataset that is still whole reads (fine-tuning, evaluation); the collection as a whole does not
    assert data.read_header(io.join(out, "pairs"))["kind"] == "text"
    io.write_text(io.join(out, "text", "train.jsonl"), '{"id": "1", "text": "hi"}\n{"id": "2", "text": "added"}\n')
    with pytest.raises(UserError, match=r"dataset .*/text: incomplete or changed output .* \(first: \. holds 2 files"):
        data.read_header(io.join(out, "text"))
