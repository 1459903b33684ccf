"""Real S3-compatible servers on 127.0.0.1 for the tests, started as subprocesses.

moto's server mode for the quick tests; SeaweedFS (a real distributed object store whose
conditional writes are atomic) for races and for outages that must keep the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

BIN = Path(sys.executable).parent
ACCESS_KEY = "missionfs-test"
SECRET_KEY = "missionfs-test-secret"


def free_port(also_plus: int = 0) -> int:
    """A free loopback port (and port + also_plus free too, for SeaweedFS's gRPC ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + also_plus > 65000:
            continue
        if not also_plus or _is_free(port + also_plus):
            return int(port)
    raise RuntimeError("no free port pair")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def s3_client(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def s3_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.pop("AWS_PROFILE", None)
    env.update(extra or {})
    return env


class Server:
    endpoint: str
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        return s3_client(self.endpoint)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited with {self.proc.returncode}")
            try:
                c = self.client()
                with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
                    c.create_bucket(Bucket="missionfs-ready")
                c.put_object(Bucket="missionfs-ready", Key="ready", Body=b"1")
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.1)
        raise RuntimeError(f"{type(self).__name__} not ready after {timeout} s: {last}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def bucket(self, name: str) -> str:
        """Create a bucket and wait until it takes writes (SeaweedFS needs a moment)."""
        c = self.client()
        c.create_bucket(Bucket=name)
        deadline = time.monotonic() + 60
        while True:
            try:
                c.put_object(Bucket=name, Key=".ready", Body=b"x" * 4096)  # needs a volume
                c.delete_object(Bucket=name, Key=".ready")
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class MotoServer(Server):
    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log

    def start(self) -> MotoServer:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self


class SeaweedServer(Server):
    """`weed server` with master, volume, filer and S3 gateway, all on loopback."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = {
            name: free_port(also_plus=10000) for name in ("master", "volume", "filer", "s3")
        }
        while len(set(self.ports.values())) < 4:
            self.ports = {n: free_port(also_plus=10000) for n in self.ports}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> SeaweedServer:
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.data / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "missionfs",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        cmd = [
            str(BIN / "weed"),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data}",
            "-filer",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.config={config}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.max=2000",  # every bucket is a collection with 7 volumes of its own (sparse)
            "-master.volumeSizeLimitMB=64",
        ]
        with open(self.data / "weed.log", "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(90)
        return self

    def stop(self, kill: bool = True) -> None:
        # SIGTERM waits 15 s for gRPC to drain; SIGKILL keeps what was written (volumes are files).
        super().stop(kill=kill)
        with contextlib.suppress(OSError):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{self.ports['filer'] + 10000}.sock"):
                sock.unlink()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
