"""A missionfs mount for tests and benchmarks: start a real daemon, poll with a deadline,
always clean up."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.loopfs import is_mounted as _mounted
from tests.support.s3_servers import Server

ROOT = Path(__file__).resolve().parents[2]
MISSIONFS = [sys.executable, "-m", "fusefs"]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll with a deadline (never sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_mission(
    path: Path,
    name: str = "test-mission",
    south: str = "40.70",
    west: str = "-74.02",
    north: str = "40.73",
    east: str = "-73.98",
    step: str = "0.01",
    phrases: tuple[str, ...] = ("coffee shop", "plumber"),
    extra: str = "",
) -> Path:
    ph = ", ".join(json.dumps(p) for p in phrases)
    path.write_text(
        f'name = "{name}"\n[grid]\nsouth = {south}\nwest = {west}\nnorth = {north}\n'
        f"east = {east}\nstep = {step}\nphrases = [{ph}]\n{extra}",
        encoding="utf-8",
    )
    return path


@dataclass
class Mount:
    mission: Path
    mnt: Path
    state: Path
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    def p(self, rel: str) -> Path:
        return self.mnt / rel

    def status(self) -> dict:
        return json.loads((self.mnt / "status").read_text())

    def start(self) -> None:
        try:
            self.mnt.mkdir(parents=True)
        except OSError:  # exists, or a dead mount that the daemon will release
            pass
        log_path = self.state.parent / f"{self.state.name}.daemon.log"
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            [
                *MISSIONFS,
                "mount",
                str(self.mission),
                str(self.mnt),
                "--state",
                str(self.state),
                "--foreground",
                *self.args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=self.env,
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}: {self.daemon_log()}"
                )
            try:
                os.statvfs(self.mnt)  # reaches the daemon: fails on a dead mount
                return os.path.ismount(self.mnt)
            except OSError:  # a dead mount left by a killed daemon, not yet released
                return False

        wait_for(up, 60, f"mount on {self.mnt}")

    def daemon_log(self) -> str:
        return (self.state.parent / f"{self.state.name}.daemon.log").read_text(errors="replace")[
            -3000:
        ]

    def umount(self) -> None:
        """The real CLI unmount; the daemon must exit cleanly."""
        res = subprocess.run(
            [*MISSIONFS, "umount", str(self.mnt)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr
        assert self.proc is not None
        assert self.proc.wait(timeout=30) == 0, self.daemon_log()

    def fsck(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`missionfs fsck MISSION --state STATE --quiet` (the oracle), run after unmounting."""
        return subprocess.run(
            [*MISSIONFS, "fsck", str(self.mission), "--state", str(self.state), "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=self.env,
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                res = subprocess.run(
                    ["fusermount3", "-u", str(self.mnt)], capture_output=True, timeout=30
                )
                if res.returncode != 0:  # busy: detach lazily so the daemon can exit
                    subprocess.run(
                        ["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30
                    )
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if _mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        with contextlib.suppress(Exception):
            self.log.close()


_buckets = iter(range(1, 1_000_000))


def new_bucket(server: Server) -> str:
    return server.bucket(f"mfs-test-{os.getpid()}-{next(_buckets)}")
