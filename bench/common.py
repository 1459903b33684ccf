"""Shared benchmark helpers: scratch filesystems, daemons with deadlines, timing, tables.

Every resource (tmpfs, loop ext4, FUSE mount, daemon process) is handed out by a context
manager that releases it in `finally`, so a failed or interrupted run leaves nothing mounted.
Processes are only ever stopped by the PID we started them with.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
MOUNT_DEADLINE = 120.0


# -- small utilities -----------------------------------------------------------------------------
def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_of(fn: Callable[[], float], reps: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Run `fn` (which returns seconds) warmup + reps times; median of the reps and all reps."""
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(reps)]
    return statistics.median(runs), runs


def run(cmd: Sequence[str], timeout: float = 120.0, check: bool = True) -> str:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def shell_time(script: str, timeout: float = 600.0) -> tuple[float, str]:
    """Wall time of a bash command line (fork/exec included, same for every system)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{script!r} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return dt, res.stdout.strip()


def drop_caches() -> None:
    """Drop dentries and inodes (echo 2): FUSE lookups/attributes are then asked for again."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout
) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    for i, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print(line, file=out)
    out.flush()


# -- missions --------------------------------------------------------------------------------------
def write_mission(
    path: Path,
    name: str,
    rows: int,
    cols: int,
    phrases: Sequence[str],
    step: str = "0.01",
    south: str = "10",
    west: str = "20",
) -> Path:
    """A grid mission of exactly rows x cols tiles x phrases tasks (bounds computed exactly)."""
    st = Decimal(step)
    s, w = Decimal(south).quantize(st), Decimal(west).quantize(st)
    n, e = s + rows * st, w + cols * st
    ph = ", ".join(json.dumps(p) for p in phrases)
    path.write_text(
        f'name = "{name}"\n[grid]\nsouth = {s}\nwest = {w}\nnorth = {n}\neast = {e}\n'
        f"step = {step}\nphrases = [{ph}]\n",
        encoding="utf-8",
    )
    return path


def phrases(n: int) -> list[str]:
    return [f"phrase {i:05d}" for i in range(n)]


# -- scratch filesystems ---------------------------------------------------------------------------
def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _umount(path: Path) -> None:
    for cmd in (["umount", str(path)], ["umount", "-l", str(path)]):
        if not _mounted(path):
            return
        subprocess.run(cmd, capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(size: str = "8G", prefix: str = "bench-tmpfs-") -> Iterator[Path]:
    """A private tmpfs (trees and state dirs: fast creates, no disk noise)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=0", "tmpfs", str(d)])
        yield d
    finally:
        _umount(d)
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def loop_ext4(size: str = "2G", prefix: str = "bench-ext4-") -> Iterator[Path]:
    """A fresh journaled ext4 on a loop image (fsync-sensitive tests; root fs has no journal)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    img, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    try:
        run(["truncate", "-s", size, str(img)])
        run(["mkfs.ext4", "-q", "-F", str(img)])
        run(["mount", "-o", "loop", str(img), str(mnt)])
        yield mnt
    finally:
        _umount(mnt)
        shutil.rmtree(base, ignore_errors=True)


# -- FUSE daemons ----------------------------------------------------------------------------------
@dataclass
class FuseProc:
    """A FUSE daemon we started (missionfs or the minimal tree) and its mountpoint."""

    proc: subprocess.Popen[bytes]
    mnt: Path
    err_path: Path
    mount_seconds: float
    kind: str

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
        if self.proc.poll() is None and _mounted(self.mnt):
            if self.kind == "missionfs":
                cmd = [PYTHON, "-m", "fusefs", "umount", str(self.mnt)]
            else:
                cmd = ["fusermount3", "-u", str(self.mnt)]
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(cmd, capture_output=True, timeout=90, check=False, cwd=BENCH)
        if _mounted(self.mnt):
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


def _start(cmd: list[str], mnt: Path, err_path: Path, kind: str, timeout: float) -> FuseProc:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(err_path, "ab") as err:
        t0 = time.perf_counter()
        # cwd=bench/: `-m fusefs` then imports the installed package (or PYTHONPATH), not ./fusefs
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=BENCH)
    fp = FuseProc(proc, mnt, err_path, 0.0, kind)
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
    timeout: float = MOUNT_DEADLINE,
    extra: tuple[str, ...] = (),
) -> FuseProc:
    """`missionfs mount --foreground` as our child; mount_seconds = spawn -> mounted."""
    cmd = [PYTHON, "-m", "fusefs", "mount", str(mission), str(mnt), "--state", str(state)]
    cmd += ["--foreground", "--quiet", *extra]
    state.parent.mkdir(parents=True, exist_ok=True)
    return _start(cmd, mnt, state.parent / f"{state.name}.daemon.err", "missionfs", timeout)


def start_minimal(spec: Path, mnt: Path, timeout: float = MOUNT_DEADLINE) -> FuseProc:
    """bench/minimal_fs.py serving the pending tree of `spec` (the Python FUSE floor)."""
    cmd = [PYTHON, str(BENCH / "minimal_fs.py"), str(spec), str(mnt)]
    return _start(cmd, mnt, mnt.parent / f"{mnt.name}.minimal.err", "minimal", timeout)


def start_passthrough(backing: Path, mnt: Path, timeout: float = MOUNT_DEADLINE) -> FuseProc:
    """bench/passthrough_fs.py serving `backing` (the write-path floor of pyfuse3)."""
    cmd = [PYTHON, str(BENCH / "passthrough_fs.py"), str(backing), str(mnt)]
    return _start(cmd, mnt, mnt.parent / f"{mnt.name}.passthrough.err", "passthrough", timeout)


@contextlib.contextmanager
def mounted(start: Callable[[], FuseProc]) -> Iterator[FuseProc]:
    fp = start()
    try:
        yield fp
    finally:
        fp.stop()
