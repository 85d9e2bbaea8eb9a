"""Storage and credentials: S3 keys come only from AWS_*, `minio://` is the same store as `s3://`, store failures
are one line, and readers see published S3 folders through their generation pointer."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from beit3core import data, io, publish
from beit3core.data.cli import main as _data_main
from beit3core.errors import UserError, run_main

REPO = Path(__file__).resolve().parents[1]


def _clear_s3_instances():
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


@pytest.fixture
def fresh_clients():
    """New S3 clients before and after the test, so that environment changes take effect and do not leak."""
    _clear_s3_instances()
    io.forget_generations()
    yield
    _clear_s3_instances()
    io.forget_generations()


@pytest.fixture
def fake_imds(monkeypatch):
    """An instance-metadata endpoint that records every request (botocore's AWS_EC2_METADATA_SERVICE_ENDPOINT)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_GET = do_PUT = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    yield hits
    server.shutdown()


def _home_with_aws_files(monkeypatch, tmp_path, credentials: str = "", config: str = "") -> None:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(credentials)
    (home / ".aws" / "config").write_text(config)
    monkeypatch.setenv("HOME", str(home))
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_no_aws_keys_is_one_line_and_never_reads_aws_files_or_instance_metadata(s3_store, tmp_path, monkeypatch,
                                                                               fake_imds, fresh_clients):
    """botocore's default chain (botocore/credentials.py `create_credential_resolver`) would take keys from
    ~/.aws/credentials, then from the instance-metadata endpoint: a cloud VM's role. Neither may be used."""
    env = s3_store["env"]
    _home_with_aws_files(monkeypatch, tmp_path, credentials=(
        f"[default]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        io.exists(f"s3://{s3_store['bucket']}/anything")
    (tmp_path / "home" / ".aws" / "credentials").write_text("")  # nothing on disk: the chain would ask IMDS next
    _clear_s3_instances()
    with pytest.raises(UserError, match="no S3 credentials"):
        io.read_bytes(f"s3://{s3_store['bucket']}/anything")
    assert fake_imds == []


def test_aws_config_file_is_not_read(s3_store, s3_prefix, tmp_path, monkeypatch, fresh_clients):
    """With keys in AWS_*, botocore still reads ~/.aws/config (botocore/session.py `full_config`); a setting there
    (here: virtual-host addressing, which cannot reach a local endpoint) must change nothing."""
    _home_with_aws_files(monkeypatch, tmp_path, config="[default]\ns3 =\n    addressing_style = virtual\n"
                                                       "region = eu-central-1\n")
    monkeypatch.setenv("AWS_PROFILE", "not-a-profile")  # botocore would raise ProfileNotFound
    io.write_text(f"{s3_prefix}/x.txt", "still here")
    assert io.read_text(f"{s3_prefix}/x.txt") == "still here"


def test_minio_uris_are_the_same_store_as_s3(s3_store, s3_prefix):
    """KFP's default pipeline root in a Kubeflow profile is `minio://mlpipeline/v2/artifacts` (kfp backend
    `config.GetPipelineRoot` / the launcher's `minio` bucket scheme): the same endpoint and keys as s3://."""
    key = s3_prefix.split("://", 1)[1]
    io.write_text(f"minio://{key}/m/a.txt", "via minio")
    assert io.read_text(f"s3://{key}/m/a.txt") == "via minio"
    io.write_text(f"s3://{key}/m/b.txt", "via s3")
    assert io.read_text(f"minio://{key}/m/b.txt") == "via s3"
    assert io.ls(f"minio://{key}/m") == [f"minio://{key}/m/a.txt", f"minio://{key}/m/b.txt"]
    with publish.publish(f"minio://{key}/out", "data synth") as folder:
        Path(folder, "c.txt").write_text("published")
    assert io.read_text(f"s3://{key}/out/c.txt") == "published"
    assert io.fingerprint(f"minio://{key}/out") == io.fingerprint(f"s3://{key}/out")


def _synth_error(argv_out: str, capsys) -> str:
    assert run_main(_data_main, ["synth", argv_out, "--scale", "0.05"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case,env,expected", [
    ("no keys", {"AWS_ACCESS_KEY_ID": ""}, "no S3 credentials"),
    ("wrong secret", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "access denied by the S3 store"),
    ("dead endpoint", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the S3 store at http://127.0.0.1:9"),
])
def test_store_failures_are_one_line(s3_store, s3_prefix, monkeypatch, capsys, fresh_clients, case, env, expected):
    io.write_text(f"{s3_prefix}/keep.txt", "kept")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_s3_instances()
    assert expected in _synth_error(f"{s3_prefix}/out", capsys)
    monkeypatch.undo()
    _clear_s3_instances()
    assert io.read_text(f"{s3_prefix}/keep.txt") == "kept"


def test_an_invalid_bucket_name_is_one_line(s3_store, capsys):
    assert "invalid S3 bucket name 'Bad_Bucket!'" in _synth_error("s3://Bad_Bucket!/out", capsys)


_KILL_AT_COMMIT = """
import os, signal, sys
import s3fs
from beit3core import io
real = s3fs.core.S3File.commit
def commit(self):
    real(self)
    os.kill(os.getpid(), signal.SIGKILL)
s3fs.core.S3File.commit = commit
with io.atomic_write(sys.argv[1]) as f:
    f.write(b"new")
"""


def test_a_kill_in_an_s3_write_leaves_no_temporary_key(s3_prefix):
    target = f"{s3_prefix}/obj.bin"
    io.write_bytes(target, b"old")
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_COMMIT, target], check=False, cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    fs, physical = io._raw_filesystem(s3_prefix)
    fs.invalidate_cache()
    assert [p for p in fs.find(physical) if io.TMP_MARK in p] == []
    assert io.read_bytes(target) in (b"old", b"new")


def test_a_killed_runs_temporary_folders_are_removed_by_the_next(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    dead = int(proc.stdout)
    stale = Path(io.tempfile.gettempdir(), f"{io.TEMP_PREFIX}{dead}-stage-test")
    stale.mkdir(exist_ok=True)
    (stale / "part").write_text("left by a kill")
    with io.temp_dir("get") as fresh:
        assert os.path.isdir(fresh)
    assert not stale.exists() and not os.path.exists(fresh)


def test_readers_see_published_s3_folders_through_their_pointer(s3_prefix):
    """A collection published twice, and one more dataset published inside it: listings, dataset discovery
    and fingerprints see one current copy of each, never a generation folder."""
    coll = f"{s3_prefix}/coll"
    fingerprints = []
    for _ in range(2):
        with publish.publish(coll, "data synth") as folder:
            for name in ("a", "b"):
                os.makedirs(os.path.join(folder, name))
                Path(folder, name, "dataset.json").write_text(f'{{"kind": "text", "name": "{name}", "splits": ["train"]}}')
                Path(folder, name, "train.jsonl").write_text('{"id": "1", "text": "hi"}\n')
        fingerprints.append(io.fingerprint(coll))
    assert fingerprints[0] == fingerprints[1]  # same content, new generation: same version
    assert data.find_datasets(coll) == ["a", "b"]
    assert io.ls(f"{coll}/a") == [f"{coll}/a/dataset.json", f"{coll}/a/train.jsonl"]
    assert io.ls(coll, recursive=True)[0] == f"{coll}/.beit3-output.json"
    assert data.read_rows(f"{coll}/b", "train") == [{"id": "1", "text": "hi"}]
    io.remove(coll, recursive=True)  # the pointer and every generation go
    assert not io.exists(f"{coll}/a/dataset.json") and io.sizes(coll) == {}  # (a filer may keep empty folders)


def test_datasets_published_one_by_one_inside_a_collection_keep_their_names(s3_prefix):
    """A collection that was never published as a whole, holding datasets each published on its own: discovery
    names them by the logical listing, not by the physical generation path their files sit under."""
    coll = f"{s3_prefix}/loose"
    for name in ("a", "b"):
        with publish.publish(f"{coll}/{name}", "data import") as folder:
            Path(folder, "dataset.json").write_text(f'{{"kind": "text", "name": "{name}", "splits": ["train"]}}')
            Path(folder, "train.jsonl").write_text('{"id": "1", "text": "hi"}\n')
    assert data.find_datasets(coll) == ["a", "b"]
    assert data.read_rows(f"{coll}/a", "train") == [{"id": "1", "text": "hi"}]


_PUBLISH = """
import sys
from pathlib import Path
from beit3core import publish
with publish.publish(sys.argv[1], "data synth") as folder:
    Path(folder, "a.txt").write_text(sys.argv[2])
"""


def test_a_reader_sees_what_another_process_published_since(s3_prefix, monkeypatch):
    """Pointers are cached briefly; a miss through a cached pointer reads the pointer again, so a reader never
    trips over a generation another process has just replaced (or a folder it has just published)."""
    monkeypatch.setattr(io, "_GEN_TTL", 3600.0)  # as if the other process were quicker than the cache

    def other_process_publishes(text: str) -> None:
        subprocess.run([sys.executable, "-c", _PUBLISH, f"{s3_prefix}/out", text], check=True, cwd=REPO,
                       env=dict(os.environ), timeout=120)

    assert not io.exists(f"{s3_prefix}/out/a.txt")  # "no pointer" is now cached
    other_process_publishes("one")
    assert io.read_text(f"{s3_prefix}/out/a.txt") == "one"  # cached: generation one
    other_process_publishes("two")  # generation one is deleted
    assert io.read_text(f"{s3_prefix}/out/a.txt") == "two"
    assert io.ls(f"{s3_prefix}/out") == [f"{s3_prefix}/out/.beit3-output.json", f"{s3_prefix}/out/a.txt"]


def test_a_plain_copy_of_a_published_s3_folder_reads_locally(s3_prefix, tmp_path):
    """`aws s3 sync` (or KFP's download of an input artifact) copies the generation layout as it is."""
    out = f"{s3_prefix}/coll"
    with publish.publish(out, "data validate") as folder:
        os.makedirs(os.path.join(folder, "t"))
        Path(folder, "t", "dataset.json").write_text('{"kind": "text", "name": "t", "splits": ["train"]}')
        Path(folder, "t", "train.jsonl").write_text('{"id": "1", "text": "hi"}\n')
    fs, physical = io._raw_filesystem(out)
    fs.get(physical, str(tmp_path / "copy"), recursive=True)
    copy = str(tmp_path / "copy")
    assert any(p.name.startswith(io.GEN_MARK) for p in (tmp_path / "copy").iterdir())
    assert data.find_datasets(copy) == ["t"] and data.read_rows(f"{copy}/t", "train") == [{"id": "1", "text": "hi"}]
    assert publish.check_complete(copy, what="--data")["stage"] == "data validate"
    assert io.fingerprint(copy) == io.fingerprint(out)
