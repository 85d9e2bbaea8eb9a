"""Publishing a stage's whole output folder in one step, and the record that proves it complete.

A stage builds its output in a local staging folder and `publish` puts it in place:

- OUT is refused (one line, exit 2) unless it is absent, empty, or an earlier output of the same stage,
  recognised by its record `OUT/.beit3-output.json`. A user's folder, a plain file, a foreign S3 prefix and
  a bucket root are never replaced.
- The record is written last into the staged folder: the stage, files and bytes per folder, and what the
  stage adds (the tokenizer's fingerprint). It is both the ownership marker and the completeness record.
- Local OUT: the staged folder (a sibling of OUT) is swapped in with one atomic exchange (renameat2); where
  the kernel lacks it, two renames, undone on failure and repaired by the next run.
- S3 OUT: S3 has no rename. The folder is uploaded as a new generation `OUT/.beit3-gen-<id>/` and the small
  pointer object `OUT/.beit3-current` is written last; `beit3core.io` resolves it for every reader. A failed
  or killed upload leaves the pointer, and so the previous result, untouched. Older generations are deleted
  after the switch, and by the next publish when a kill came in between.
- Staging folders of killed runs are removed by the next run (their name holds the dead process id).

Consumers call `check_complete` on their inputs: a folder governed by a record must hold every file the
record counts, so a collection that lost 5 of its 8 datasets, or tokens beside another tokenizer, are
refused. Folders with no record at all (hand-made datasets) are accepted as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import posixpath
import re
import shutil
import time
from collections.abc import Iterator

from beit3core import io
from beit3core.errors import UserError

log = logging.getLogger(__name__)

RECORD = ".beit3-output.json"
RECORD_VERSION = 1
_STAGE_MARK = io.TMP_MARK  # `.<OUT name>.tmp-<pid>-<hex>`: a staging folder beside a local OUT


# -- where an output may go -------------------------------------------------------------------------------------------
def _norm(uri: str) -> str:
    """A comparable form: s3 scheme for every S3 alias, absolute real path locally."""
    uri = str(uri)
    if io.is_s3(uri):
        return "s3://" + uri.split("://", 1)[1].strip("/")
    if io.is_remote(uri):
        return uri.rstrip("/")
    return os.path.realpath(uri)


def check_disjoint(src: str, out: str, *, src_flag: str = "SRC", out_flag: str = "--out") -> None:
    """SRC and OUT may not be the same place or contain each other (writing OUT would destroy or re-read SRC)."""
    a, b = _norm(src), _norm(out)
    if a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/"):
        raise UserError(f"{out_flag} {out}: must be outside {src_flag} {src} (and not contain it)")


def read_record(uri: str) -> dict | None:
    """The record at the root of an output folder, or None when there is none."""
    where = io.join(uri, RECORD)
    if not io.exists(where):
        return None
    record = io.read_json(where)
    folders = record.get("folders") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str) or not isinstance(folders, dict) \
            or not all(isinstance(v, list) and len(v) == 2 and all(type(n) is int for n in v) for v in folders.values()):
        raise UserError(f"{where}: malformed output record (expected stage and folders: {{path: [files, bytes]}})")
    return record


def check_place(out: str, stage: str, *, flag: str = "OUT") -> None:
    """Refuse an OUT that this stage may not replace: only absent, empty or its own earlier output passes."""
    out = str(out)
    if io.is_remote(out):
        bucket_and_key = out.split("://", 1)[1].strip("/")
        if "/" not in bucket_and_key:
            raise UserError(f"{flag} {out}: a bucket root is never an output; name a prefix inside it")
        fs, physical = io._locate(out, last=False)
        with io.storage_errors(out):
            if fs.isfile(physical):
                raise UserError(f"{flag} {out}: is a file; an output is a folder (choose another place)")
            entries = [posixpath.basename(e.rstrip("/")) for e in fs.ls(physical, detail=False)] \
                if fs.exists(physical) else []
        entries = [e for e in entries if e != posixpath.basename(physical.rstrip("/"))]
        if all(e.startswith(io.GEN_MARK) for e in entries) and io.POINTER not in entries:
            return  # empty, or only generations a killed first publish left (removed by this one)
    else:
        if os.path.islink(out):
            raise UserError(f"{flag} {out}: is a symbolic link; an output is replaced in place, so name a real folder")
        if not os.path.lexists(out):
            return
        if not os.path.isdir(out):
            raise UserError(f"{flag} {out}: is a file; an output is a folder (choose another place)")
        try:
            if not os.listdir(out):
                return
        except OSError as err:
            raise io.store_error(out, err) or UserError(f"{flag} {out}: cannot list it ({err.strerror})") from None
    record = read_record(out)
    if record is None:
        raise UserError(f"{flag} {out}: exists and is not an output of `beit3 {stage}` (no {RECORD}); "
                        "it is left untouched: choose an empty or new place, or remove it yourself")
    if record["stage"] != stage:
        raise UserError(f"{flag} {out}: holds the output of `beit3 {record['stage']}`, not of `beit3 {stage}`; "
                        "it is left untouched: choose another place")


# -- the record -------------------------------------------------------------------------------------------------------
def _count_folders(files: dict[str, int]) -> dict[str, list[int]]:
    """folder (relative, "" for the root) -> [files directly in it, their bytes]."""
    folders: dict[str, list[int]] = {}
    for rel, size in files.items():
        entry = folders.setdefault(posixpath.dirname(rel), [0, 0])
        entry[0] += 1
        entry[1] += size
    return dict(sorted(folders.items()))


def _local_files(folder: str) -> dict[str, int]:
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return files


def write_record(folder: str, stage: str, extra: dict | None = None) -> dict:
    """Write the record of a finished local staging folder (its last file) and return it."""
    files = {r: s for r, s in _local_files(folder).items() if r != RECORD}
    record = {"record_version": RECORD_VERSION, "stage": stage, "folders": _count_folders(files), **(extra or {})}
    text = json.dumps(record, indent=1, sort_keys=True)
    text = re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text)  # one line per folder: [files, bytes]
    with open(os.path.join(folder, RECORD), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return record


_VERIFIED: dict[tuple[str, tuple[str, ...]], dict | None] = {}  # inputs checked in this process (cleared by publish)


def find_record(uri: str) -> tuple[str, str, dict] | tuple[None, None, None]:
    """(root, path of `uri` inside it, record) of the nearest output record at or above `uri`."""
    uri = str(uri).rstrip("/") if io.is_remote(uri) else os.path.abspath(uri)
    current, inner = uri, []
    while True:
        record = read_record(current)
        if record is not None:
            return current, "/".join(reversed(inner)), record
        if io.is_remote(current):
            scheme, rest = current.split("://", 1)
            if "/" not in rest.strip("/"):
                return None, None, None
            rest, name = rest.rsplit("/", 1)
            current = f"{scheme}://{rest}"
        else:
            parent, name = os.path.split(current)
            if parent == current:
                return None, None, None
            current = parent
        inner.append(name)


def check_complete(uri: str, *, what: str, stages: tuple[str, ...] = ()) -> dict | None:
    """The record governing `uri` after checking that every file it counts under `uri` is there (same count and
    bytes per folder), or None when no record governs it. `stages`: the stages allowed to have written it."""
    key = (str(uri), stages)
    if key in _VERIFIED:
        return _VERIFIED[key]
    _VERIFIED[key] = record = _check_complete(uri, what, stages)
    return record


def _check_complete(uri: str, what: str, stages: tuple[str, ...]) -> dict | None:
    root, inner, record = find_record(uri)
    if record is None:
        return None
    if stages and record["stage"] not in stages:
        raise UserError(f"{what} {uri}: is the output of `beit3 {record['stage']}`, expected "
                        + " or ".join(f"`beit3 {s}`" for s in stages))
    head = f"{inner}/" if inner else ""
    expected = {f[len(head):] if inner else f: tuple(v) for f, v in record["folders"].items()
                if not inner or f == inner or f.startswith(head)}
    if not expected:
        return None  # the record is of an enclosing output that does not cover this folder
    found = _count_folders({r: s for r, s in io.sizes(uri).items() if r != RECORD})
    wrong = [f for f, (count, size) in expected.items() if tuple(found.get(f, (0, 0))) != (count, size)]
    if wrong:
        have, want = found.get(wrong[0], (0, 0)), expected[wrong[0]]
        raise UserError(f"{what} {uri}: incomplete or changed output of `beit3 {record['stage']}`: {len(wrong)} of "
                        f"{len(expected)} folders differ from its record {io.join(root, RECORD)} (first: "
                        f"{wrong[0] or '.'} holds {have[0]} files, {have[1]} bytes; recorded {want[0]} files, "
                        f"{want[1]} bytes): rerun the stage (or delete the record if you changed it on purpose)")
    return record


# -- publishing -------------------------------------------------------------------------------------------------------
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def _stage_prefix(out: str) -> tuple[str, str]:
    out = os.path.abspath(out)
    return os.path.dirname(out), f".{os.path.basename(out)}{_STAGE_MARK}"


def _recover_local(out: str) -> None:
    """Undo what a run killed mid-swap left: restore the previous output if OUT is missing, then sweep."""
    parent, prefix = _stage_prefix(out)
    if not os.path.lexists(out):
        with contextlib.suppress(OSError):
            olds = sorted(e.path for e in os.scandir(parent) if e.name.startswith(prefix) and e.name.endswith("-old"))
            if olds:
                os.replace(olds[-1], out)
                log.warning("%s: restored the previous output a killed run had moved aside", out)
    io.sweep_stale(parent, prefix)


def _swap_local(stage: str, out: str) -> None:
    if not os.path.lexists(out):
        os.replace(stage, out)
        return
    if _exchange(stage, out):
        shutil.rmtree(stage, ignore_errors=True)  # now the previous output
        return
    old = f"{stage}-old"
    os.replace(out, old)
    try:
        os.replace(stage, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _generation() -> str:
    return f"{io.GEN_MARK}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{os.urandom(4).hex()}"


def _publish_remote(local: str, out: str) -> None:
    """Upload `local` as a new generation of `out`, then point `out` at it; then drop every other generation."""
    fs, physical = io._locate(out, last=False)
    root = physical.rstrip("/")
    gen = _generation()
    files = sorted(r for r in _local_files(local) if r != RECORD)
    with io.storage_errors(out):
        if files:  # concurrently (s3fs batches the uploads); the record last: without it a generation is unfinished
            fs.put([os.path.join(local, *r.split("/")) for r in files], [f"{root}/{gen}/{r}" for r in files])
        fs.put_file(os.path.join(local, RECORD), f"{root}/{gen}/{RECORD}")
        fs.pipe_file(f"{root}/{io.POINTER}", json.dumps({"generation": gen}).encode())  # the switch
        io.forget_generations(root)
        fs.invalidate_cache(root)
        for entry in fs.ls(root, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if name not in (gen, io.POINTER) and entry.rstrip("/") != root:
                fs.rm(entry, recursive=True)  # older generations, or an unpublished earlier layout
        fs.invalidate_cache(root)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextlib.contextmanager
def _write_errors(out: str, *, any_store_error: bool) -> Iterator[None]:
    """A full or read-only disk (and, while publishing, any storage failure) is one line naming OUT."""
    try:
        yield
    except OSError as err:
        mapped = io.store_error(out, err) if any_store_error or err.errno in _WRITE_ERRNOS else None
        if mapped is None:
            raise
        raise mapped from None


@contextlib.contextmanager
def publish(out: str, stage: str, *, extra: dict | None = None, flag: str = "OUT") -> Iterator[str]:
    """Yield a local staging folder; when the block succeeds, its content (plus the record) replaces `out`.

    `extra` (a dict, filled in by the block if it likes) is added to the record; `flag` names OUT in errors."""
    out = str(out)
    check_place(out, stage, flag=flag)
    if io.is_remote(out):
        with io.temp_dir("stage") as tmp:
            with _write_errors(out, any_store_error=False):
                yield tmp
            with _write_errors(out, any_store_error=True):
                write_record(tmp, stage, extra)
                _publish_remote(tmp, out)
        _VERIFIED.clear()
        return
    with _write_errors(out, any_store_error=True):
        _recover_local(out)
        parent, prefix = _stage_prefix(out)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{prefix}{os.getpid()}-{os.urandom(4).hex()}")
        os.makedirs(tmp)
    try:
        with _write_errors(out, any_store_error=False):
            yield tmp
        with _write_errors(out, any_store_error=True):
            write_record(tmp, stage, extra)
            check_place(out, stage, flag=flag)  # what sits at OUT may have changed while the stage ran
            _swap_local(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _VERIFIED.clear()
