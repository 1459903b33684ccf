"""A FUSE daemon process with a mount deadline, for benchmarks and scripted runs.

`tests/support/mounts.Mount` is the test fixture's handle (asserts, the real CLI unmount);
`FuseProc` is the lighter handle the bench/ scripts time: spawn -> mounted is measured, any
pyfuse3 program can be started (missionfs, bench/minimal_fs.py, bench/passthrough_fs.py), and
`env` lets a run start the daemon of another checkout (PYTHONPATH) next to this one. A daemon
is only ever stopped by its PID, after a clean unmount was tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.loopfs import is_mounted

PYTHON = sys.executable
MOUNT_DEADLINE = 120.0


@dataclass
class FuseProc:
    """A FUSE daemon we started and its mountpoint."""

    proc: subprocess.Popen[bytes]
    mnt: Path
    err_path: Path
    mount_seconds: float
    kind: str
    cwd: Path
    env: dict[str, str] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        return json.loads((self.mnt / "status").read_text())

    def stop(self) -> None:
        """Clean unmount (missionfs saves its index), then the PID, never a name."""
        if self.proc.poll() is None and is_mounted(self.mnt):
            if self.kind == "missionfs":
                cmd = [PYTHON, "-m", "fusefs", "umount", str(self.mnt)]
            else:
                cmd = ["fusermount3", "-u", str(self.mnt)]
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    cmd, capture_output=True, timeout=90, check=False, cwd=self.cwd, env=self.env
                )
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], deadline: float, err: Path) -> None:
    """Poll until `mnt` is a mount that answers statfs (reaches the daemon), or fail."""
    while True:
        if proc.poll() is not None:
            tail = err.read_text(errors="replace")[-1500:] if err.exists() else ""
            raise RuntimeError(f"daemon exited with {proc.returncode} before mounting: {tail}")
        if os.path.ismount(mnt):
            try:
                os.statvfs(mnt)
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mnt} not mounted within the deadline")
        time.sleep(0.002)


def start(
    cmd: list[str],
    mnt: Path,
    err_path: Path,
    kind: str,
    cwd: Path,
    timeout: float = MOUNT_DEADLINE,
    env: dict[str, str] | None = None,
) -> FuseProc:
    """Spawn `cmd` (a foreground FUSE daemon) and wait for `mnt`; mount_seconds = spawn ->
    mounted. On any failure the daemon is stopped before the error propagates."""
    mnt.mkdir(parents=True, exist_ok=True)
    with open(err_path, "ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=cwd, env=env
        )
    fp = FuseProc(proc, mnt, err_path, 0.0, kind, cwd, env)
    try:
        wait_mounted(mnt, proc, time.monotonic() + timeout, err_path)
    except BaseException:
        fp.stop()
        raise
    fp.mount_seconds = time.perf_counter() - t0
    return fp


def start_missionfs(
    mission: Path,
    mnt: Path,
    state: Path,
    cwd: Path,
    timeout: float = MOUNT_DEADLINE,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> FuseProc:
    """`missionfs mount --foreground --quiet` as our child; its output in STATE.daemon.err.

    `cwd` matters: `-m fusefs` imports ./fusefs first when there is one, so a caller that wants
    the package of PYTHONPATH (another checkout) runs it from a directory without one."""
    cmd = [PYTHON, "-m", "fusefs", "mount", str(mission), str(mnt), "--state", str(state)]
    cmd += ["--foreground", "--quiet", *extra]
    state.parent.mkdir(parents=True, exist_ok=True)
    err = state.parent / f"{state.name}.daemon.err"
    return start(cmd, mnt, err, "missionfs", cwd, timeout, env)


@contextlib.contextmanager
def mounted(start_fn: Callable[[], FuseProc]) -> Iterator[FuseProc]:
    """The daemon `start_fn` starts, stopped when the block ends (even by an exception)."""
    fp = start_fn()
    try:
        yield fp
    finally:
        fp.stop()
