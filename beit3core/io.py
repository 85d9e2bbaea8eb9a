"""Every read and write of the platform goes through these functions.

A location is a URI: `s3://bucket/key` (or `minio://bucket/key`, KFP's name for the same store) or a local
path. S3 endpoint and credentials come only from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN and AWS_DEFAULT_REGION), never from
arguments, so they cannot leak into parameters, YAML or logs; `~/.aws/` and the instance-metadata endpoint
are never consulted, so a machine's cloud role is never used by accident.

Writes are atomic from a reader's view: a local file goes to a temporary name and is renamed into place; an
S3 object appears only when its upload completes (an aborted upload publishes nothing).

Published folders on S3 (see `beit3core.publish`) live in generations: `OUT/.beit3-gen-<id>/...` plus one
small pointer object `OUT/.beit3-current` naming the current generation, written last. Every function
here resolves the pointer (also in a local copy of such a folder), so readers see `OUT/dataset.json` and
never a half-uploaded generation.
Store and disk failures (missing or wrong credentials, dead endpoint, bad bucket name, full or read-only
disk) are UserErrors that name the location.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io as _pyio
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec

from beit3core.errors import UserError

TMP_MARK = ".tmp-"  # temporary objects carry this in their name; listings skip them
POINTER = ".beit3-current"  # names the current generation of a folder published on S3
GEN_MARK = ".beit3-gen-"  # generation folders of a published S3 folder; listings skip them
S3_SCHEMES = ("s3", "s3a", "minio")  # one store, one set of AWS_* settings
_GEN_TTL = 2.0  # seconds a resolved pointer is trusted before it is read again (other processes may publish)
_GENERATIONS: dict[str, tuple[float, str | None]] = {}
# botocore reads ~/.aws/config and ~/.aws/credentials (and the profile AWS_PROFILE names) unless told otherwise;
# these session variables point both files at nothing and ignore the profile, so settings and keys come from
# the AWS_* variables this module passes explicitly, alone.
_NO_AWS_FILES = {"config_file": (None, None, os.devnull, None), "credentials_file": (None, None, os.devnull, None),
                 "profile": (None, None, None, None)}


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _scheme(uri: str) -> str:
    return str(uri).split("://", 1)[0].lower() if is_remote(uri) else "file"


def _storage_options(uri: str) -> dict[str, Any]:
    if _scheme(uri) not in S3_SCHEMES:
        return {}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise UserError(f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                        "(for the local store: eval \"$(beit3 store env)\")")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = {"region_name": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}  # no region lookup (IMDS)
    if endpoint:
        client["endpoint_url"] = endpoint
    # The keys and endpoint are part of the options, so fsspec's instance cache follows environment changes.
    return {"key": key, "secret": secret, "token": os.environ.get("AWS_SESSION_TOKEN") or None,
            "client_kwargs": client, "session_vars": _NO_AWS_FILES,
            "config_kwargs": {"connect_timeout": 10, "retries": {"max_attempts": 3}}}


def _raw_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    uri = str(uri)
    if _scheme(uri) in S3_SCHEMES:
        return fsspec.core.url_to_fs("s3://" + uri.split("://", 1)[1], **_storage_options(uri))
    if not is_remote(uri):
        return fsspec.core.url_to_fs(uri)
    try:
        return fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise UserError(f"{uri}: unsupported location ({e})") from None


# -- errors --------------------------------------------------------------------------------------------------------
_OS_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a path component is a file, not a folder",
               errno.EISDIR: "is a folder, not a file"}


def store_error(uri: str, err: BaseException) -> UserError | None:
    """The one-line UserError for a storage failure, or None when `err` is not one (a bug keeps its traceback)."""
    name = type(err).__name__
    text = " ".join(str(err).split())[:200]
    if isinstance(err, PermissionError) and is_remote(uri):
        return UserError(f"{uri}: access denied by the S3 store (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): "
                         f"{text}")
    if isinstance(err, OSError) and err.errno in _OS_REASONS:
        what = "cannot write" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "cannot read or write"
        return UserError(f"{uri}: {what}: {_OS_REASONS[err.errno]}")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
                "ServerDisconnectedError", "ReadTimeoutError") or isinstance(err, ConnectionError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        return UserError(f"{uri}: cannot reach the S3 store at {endpoint} ({name})")
    if name in ("ParamValidationError", "InvalidBucketName") or (isinstance(err, ValueError) and is_remote(uri)
                                                                and "bucket" in text.lower()):
        if "bucket" in text.lower():
            bucket = str(uri).split("://", 1)[-1].split("/", 1)[0]
            return UserError(f"{uri}: invalid S3 bucket name {bucket!r} (3-63 lowercase letters, digits, '.', '-')")
        return UserError(f"{uri}: invalid S3 location ({text})")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return UserError(f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if name == "ClientError" or (isinstance(err, OSError) and is_remote(uri) and not isinstance(err, FileNotFoundError)):
        return UserError(f"{uri}: the S3 store refused the request ({text})")
    return None


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn storage failures inside the block into a one-line UserError naming `uri`."""
    try:
        yield
    except (UserError, FileNotFoundError, KeyboardInterrupt):
        raise
    except Exception as err:
        mapped = store_error(str(uri), err)
        if mapped is None:
            raise
        raise mapped from None


# -- S3 generations ------------------------------------------------------------------------------------------------
def _pointer(fs, folder: str) -> str | None:
    """The current generation named by `folder`'s pointer (cached for _GEN_TTL seconds), or None."""
    now = time.monotonic()
    hit = _GENERATIONS.get(folder)
    if hit and now - hit[0] < _GEN_TTL:
        return hit[1]
    try:
        gen = json.loads(fs.cat_file(f"{folder}/{POINTER}"))["generation"]
        if not (isinstance(gen, str) and gen.startswith(GEN_MARK) and "/" not in gen):
            gen = None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        gen = None
    except PermissionError:
        # Without s3:ListBucket, S3 answers 403 for a missing key: no pointer either (not cached: the keys may
        # be wrong). A real access problem surfaces on the read or write itself, with its own error line.
        return None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{folder}/{POINTER}: malformed generation pointer") from None
    _GENERATIONS[folder] = (now, gen)
    return gen


def forget_generations(prefix: str = "") -> None:
    """Drop cached pointers at or under `prefix` (a physical path): after publishing or removing there."""
    for key in [k for k in _GENERATIONS if k == prefix or k.startswith(prefix.rstrip("/") + "/") or not prefix]:
        del _GENERATIONS[key]


def _resolve(fs, path: str, *, last: bool = True) -> str:
    """The physical path of `bucket/a/b/...`: the first folder (outermost first) holding a pointer is replaced by
    its current generation. `last=False` leaves the final component itself unresolved."""
    parts = path.rstrip("/").split("/")
    for i in range(2, len(parts) + (1 if last else 0)):
        if parts[i - 1].startswith(GEN_MARK):
            return path  # already physical
        gen = _pointer(fs, "/".join(parts[:i]))
        if gen:
            return "/".join([*parts[:i], gen, *parts[i:]])
    return path


def _locate(uri: str, *, last: bool = True) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = _raw_filesystem(uri)
    # Local paths too: a plain copy of a published S3 folder (`aws s3 sync`, KFP's input download) keeps the
    # generation layout, and reads the same way.
    with storage_errors(uri):
        return fs, _resolve(fs, path, last=last)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URI and the (physical) path inside it."""
    return _locate(str(uri))


def _checked(uri: str, test) -> tuple[fsspec.AbstractFileSystem, str, Any]:
    """(fs, path, test(fs, path)); when the answer is negative and came through a cached pointer, the pointers
    are read again once: another process may have published (or replaced) the folder since."""
    fs, path = filesystem(uri)
    with storage_errors(uri):
        answer = test(fs, path)
        if answer or not is_remote(uri):
            return fs, path, answer
        logical = _raw_filesystem(uri)[1].rstrip("/").split("/")
        cached = ["/".join(logical[:i]) for i in range(2, len(logical) + 1) if "/".join(logical[:i]) in _GENERATIONS]
        if not cached:
            return fs, path, answer
        for key in cached:
            _GENERATIONS.pop(key, None)
        fs.invalidate_cache()
        fs, path = filesystem(uri)
        return fs, path, test(fs, path)


def _hidden(name: str) -> bool:
    return TMP_MARK in name or name == POINTER or name.startswith(GEN_MARK)


def _logical_files(fs, root: str) -> dict[str, tuple[str, int]]:
    """rel path -> (physical path, size) of every file under `root`, seen through nested pointers."""
    prefix = root.rstrip("/") + "/"
    found = {e[len(prefix):]: (e, int(info.get("size") or 0))
             for e, info in fs.find(root, detail=True).items() if e.startswith(prefix)}
    while True:
        pointers = sorted((r for r in found if posixpath.basename(r) == POINTER), key=lambda r: r.count("/"))
        if not pointers:
            break
        folder = posixpath.dirname(pointers[0])
        gen = _pointer(fs, prefix + folder if folder else root.rstrip("/"))
        head = f"{folder}/" if folder else ""
        keep = f"{head}{gen}/" if gen else None
        rest = {r: v for r, v in found.items() if not r.startswith(head)}
        for r, v in found.items():
            if r.startswith(head) and keep and r.startswith(keep):
                rest[head + r[len(keep):]] = v
        found = rest
    return {r: v for r, v in found.items() if not any(_hidden(p) for p in r.split("/"))}


# -- basic operations -------------------------------------------------------------------------------------------------
def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *[str(p).strip("/") for p in parts])
    return os.path.join(base, *[str(p) for p in parts])


def exists(uri: str) -> bool:
    return _checked(uri, lambda fs, path: fs.exists(path))[2]


def isdir(uri: str) -> bool:
    return _checked(uri, lambda fs, path: fs.isdir(path))[2]


def ls(uri: str, *, recursive: bool = False) -> list[str]:
    """Sorted entries under a folder (full URIs), skipping unfinished temporary objects and generations."""
    uri = str(uri)
    fs, path, found = _checked(uri, lambda fs, path: fs.exists(path))
    with storage_errors(uri):
        if not found:
            raise UserError(f"{uri}: no such file or folder")
        if recursive:
            rels = list(_logical_files(fs, path))
        else:
            own = path.rstrip("/")  # some S3 servers list a folder's own marker; it is not an entry
            rels = [posixpath.basename(e.rstrip("/")) for e in fs.ls(path, detail=False) if e.rstrip("/") != own]
            rels = [r for r in rels if not _hidden(r)]
    return sorted(join(uri, *r.split("/")) for r in rels)


def sizes(uri: str) -> dict[str, int]:
    """rel path -> size of every file under a folder (through generations; temporary objects skipped)."""
    fs, path, folder = _checked(uri, lambda fs, path: fs.isdir(path))
    with storage_errors(uri):
        if not folder:
            return {}
        return {r: size for r, (_, size) in _logical_files(fs, path).items()}


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    with storage_errors(uri):
        fs.makedirs(path, exist_ok=True)


def remove(uri: str, *, recursive: bool = False) -> None:
    """Remove a file or folder; a published S3 folder goes with all its generations and its pointer."""
    fs, path = _locate(str(uri), last=False)
    with storage_errors(uri):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    forget_generations(path)


def open(uri: str, mode: str = "rb", **kwargs) -> IO:
    """Open for reading (or non-atomic writing); a missing input is a user error naming the file."""
    fs, path, is_file = _checked(uri, lambda fs, path: "r" not in mode or fs.isfile(path))
    with storage_errors(uri):
        if not is_file:
            raise UserError(f"{uri}: no such file" if not fs.exists(path) else f"{uri}: is a folder, not a file")
        if "w" in mode or "a" in mode:
            parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
            if parent:
                fs.makedirs(parent, exist_ok=True)
        return fs.open(path, mode, **kwargs)


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Write `uri` so that it appears complete or not at all: a failure in the block publishes nothing."""
    uri = str(uri)
    fs, path = filesystem(uri)
    text = "b" not in mode
    with storage_errors(uri):
        if is_remote(uri):
            # An S3 object appears only when its upload completes: no temporary key, nothing left by a kill
            # but an incomplete multipart upload, which the store never lists.
            parent = posixpath.dirname(path)
            if parent and not is_s3(uri):
                fs.makedirs(parent, exist_ok=True)
            raw = fs.open(path, mode.replace("t", "") + ("b" if text else ""))
            f = _pyio.TextIOWrapper(raw, encoding=kwargs.pop("encoding", "utf-8"), **kwargs) if text else raw
            try:
                yield f
                f.close()
            except BaseException:
                with contextlib.suppress(Exception):
                    raw.discard()
                raw.closed = True  # discarded: closing it later must not publish (or fail on) the dropped buffer
                raise
            return
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f"{name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            with builtins.open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


def is_s3(uri: str) -> bool:
    return _scheme(uri) in S3_SCHEMES


def read_bytes(uri: str) -> bytes:
    with storage_errors(uri), open(uri, "rb") as f:
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


def parse_jsonl(text: str, uri: str, *, unit: str = "row") -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank JSON line of `text` (read from `uri`); a malformed line is one
    UserError naming `uri` and the line (called a `unit`)."""
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{uri}: {unit} {n}: malformed JSON ({e.msg})") from None
    return values


def read_jsonl(uri: str) -> list[dict]:
    return [value for _, value in parse_jsonl(read_text(uri), uri)]


def write_jsonl(uri: str, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_write(uri, "wb") as f:
        for row in rows:
            # ensure_ascii writes lone surrogates (undecodable input bytes kept by importers) as escapes,
            # so they survive the round trip and validation can name them.
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=True).encode("utf-8") + b"\n")
            count += 1
    return count


# -- temporary folders ------------------------------------------------------------------------------------------------
TEMP_PREFIX = "beit3-"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parent: str, prefix: str) -> None:
    """Remove `parent/<prefix><pid>-<anything>` entries whose process is gone: what a killed run left behind."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith(prefix):
                continue
            pid, dash, _ = entry.name[len(prefix):].partition("-")
            if dash and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(entry.path)


@contextlib.contextmanager
def temp_dir(purpose: str = "tmp") -> Iterator[str]:
    """A private local scratch folder, removed at the end; those of killed runs are removed by the next one."""
    base = tempfile.gettempdir()
    sweep_stale(base, TEMP_PREFIX)
    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{purpose}-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
        with temp_dir("get") as tmp:
            local = os.path.join(tmp, posixpath.basename(uri.rstrip("/")) or "object")
            fs, path = filesystem(uri)
            with storage_errors(uri):
                if not fs.exists(path):
                    raise UserError(f"{uri}: no such file")
                if fs.isdir(path):
                    get_dir(uri, local)
                else:
                    fs.get_file(path, local)
            yield local
        return
    with temp_dir("put") as tmp:
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
    fs, path, folder = _checked(uri, lambda fs, path: fs.isdir(path))
    with storage_errors(uri):
        if not folder:
            raise UserError(f"{uri}: no such folder")
        os.makedirs(local_dir, exist_ok=True)
        for rel, (physical, _) in sorted(_logical_files(fs, path).items()):
            dst = os.path.join(local_dir, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            fs.get_file(physical, dst)
    return local_dir


def fingerprint(uri: str) -> str:
    """A content hash of a file or a folder (relative names + bytes): the version recorded in artifacts."""
    fs, path, found = _checked(uri, lambda fs, path: fs.exists(path))
    with storage_errors(uri):
        if not found:
            raise UserError(f"{uri}: no such file or folder")
        files = [("", path)] if fs.isfile(path) else [(r, p) for r, (p, _) in sorted(_logical_files(fs, path).items())]
        digest = hashlib.md5()
        for rel, physical in files:
            digest.update(rel.encode())
            digest.update(b"\0")
            with fs.open(physical, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
