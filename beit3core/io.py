"""Every read and write of the platform goes through these functions.

A location is a URI: `s3://bucket/key` or a local path. S3 endpoint and credentials come only from the
standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION),
never from arguments, so they cannot leak into parameters, YAML or logs.

Writes are atomic from a reader's view: data goes to a temporary name first and is published under its
final name only once complete, so a killed stage never leaves a partial object that looks finished.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec

from beit3core.errors import UserError

TMP_MARK = ".tmp-"  # temporary objects carry this in their name; listings skip them


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _storage_options(protocol: str) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # Naming the endpoint in the kwargs makes fsspec's instance cache follow environment changes.
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URI and the path inside it."""
    uri = str(uri)
    protocol = uri.split("://", 1)[0] if is_remote(uri) else "file"
    return fsspec.core.url_to_fs(uri, **_storage_options(protocol))


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *[str(p).strip("/") for p in parts])
    return os.path.join(base, *[str(p) for p in parts])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isdir(path)


def _as_uri(uri: str, path: str) -> str:
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def ls(uri: str, *, recursive: bool = False) -> list[str]:
    """Sorted entries under a folder (full URIs), skipping unfinished temporary objects."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise UserError(f"{uri}: no such file or folder")
    entries = fs.find(path) if recursive else fs.ls(path, detail=False)
    own = path.rstrip("/")  # some S3 servers list a folder's own marker; it is not an entry
    return sorted(_as_uri(uri, e.rstrip("/")) for e in entries
                  if e.rstrip("/") != own and TMP_MARK not in posixpath.basename(e.rstrip("/")))


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def remove(uri: str, *, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def open(uri: str, mode: str = "rb", **kwargs) -> IO:  # noqa: A001 - mirrors fsspec.open
    """Open for reading (or non-atomic writing); a missing input is a user error naming the file."""
    fs, path = filesystem(uri)
    if "r" in mode and not fs.exists(path):
        raise UserError(f"{uri}: no such file")
    if "w" in mode or "a" in mode:
        parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
    return fs.open(path, mode, **kwargs)


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Write to a temporary name, publish under `uri` only when the block finishes without error."""
    uri = str(uri)
    fs, path = filesystem(uri)
    directory, name = posixpath.split(path) if is_remote(uri) else os.path.split(path)
    tmp = (posixpath.join if is_remote(uri) else os.path.join)(directory, f"{name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    if directory:
        fs.makedirs(directory, exist_ok=True)
    try:
        with fs.open(tmp, mode, **kwargs) as f:
            yield f
            if not is_remote(uri):
                f.flush()
                os.fsync(f.fileno())
        if is_remote(uri):
            fs.mv(tmp, path)  # server-side copy: the final key appears complete or not at all
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def read_bytes(uri: str) -> bytes:
    with open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_write(uri, "wb") as f:
        f.write(data)


def read_text(uri: str) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{uri}: byte {e.start}: not valid UTF-8") from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{uri}: line {e.lineno}: malformed JSON ({e.msg})") from None


def write_json(uri: str, obj: Any, *, indent: int | None = 2) -> None:
    write_text(uri, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def read_jsonl(uri: str) -> list[dict]:
    rows = []
    for n, line in enumerate(read_text(uri).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{uri}: row {n}: malformed JSON ({e.msg})") from None
    return rows


def write_jsonl(uri: str, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_write(uri, "wb") as f:
        for row in rows:
            # ensure_ascii writes lone surrogates (undecodable input bytes kept by importers) as escapes,
            # so they survive the round trip and validation can name them.
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=True).encode("utf-8") + b"\n")
            count += 1
    return count


@contextlib.contextmanager
def local_path(uri: str, mode: str = "r") -> Iterator[str]:
    """A local file path for tools that need one (SentencePiece, torch.load).

    mode "r": the file is downloaded first when remote. mode "w": the caller writes the yielded path and it
    is published atomically at `uri` when the block ends.
    """
    uri = str(uri)
    if mode == "r":
        if not is_remote(uri):
            if not os.path.exists(uri):
                raise UserError(f"{uri}: no such file")
            yield uri
            return
        with tempfile.TemporaryDirectory(prefix="beit3-") as tmp:
            local = os.path.join(tmp, posixpath.basename(uri.rstrip("/")) or "object")
            fs, path = filesystem(uri)
            if not fs.exists(path):
                raise UserError(f"{uri}: no such file")
            fs.get(path, local, recursive=fs.isdir(path))
            yield local
        return
    with tempfile.TemporaryDirectory(prefix="beit3-") as tmp:
        local = os.path.join(tmp, posixpath.basename(uri.rstrip("/")) or "object")
        yield local
        with builtins.open(local, "rb") as src, atomic_write(uri, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)



def put_dir(local_dir: str, uri: str) -> None:
    """Upload (or copy) a local folder to `uri`, file by file, each atomically."""
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with builtins.open(src, "rb") as f, atomic_write(join(uri, rel), "wb") as out:
                shutil.copyfileobj(f, out, length=8 << 20)


def get_dir(uri: str, local_dir: str) -> str:
    """Download (or copy) a folder to a local directory and return it."""
    fs, path = filesystem(uri)
    if not fs.isdir(path):
        raise UserError(f"{uri}: no such folder")
    os.makedirs(local_dir, exist_ok=True)
    prefix = path.rstrip("/") + "/"
    for entry in fs.find(path):
        if TMP_MARK in posixpath.basename(entry):
            continue
        dst = os.path.join(local_dir, *entry[len(prefix):].split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        fs.get_file(entry, dst)
    return local_dir


def fingerprint(uri: str) -> str:
    """A content hash of a file or a folder (relative names + bytes): the version recorded in artifacts."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise UserError(f"{uri}: no such file or folder")
    files = [path] if fs.isfile(path) else sorted(e for e in fs.find(path) if TMP_MARK not in posixpath.basename(e))
    prefix = path.rstrip("/") + "/"
    digest = hashlib.md5()
    for entry in files:
        digest.update(entry[len(prefix):].encode() if entry.startswith(prefix) else b"")
        digest.update(b"\0")
        with fs.open(entry, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
