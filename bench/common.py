"""Shared benchmark helpers: timing, tables, missions; scratch filesystems and daemons with
deadlines come from tests/support (loopfs, fuseproc), shared with the tests.

Every resource (tmpfs, loop ext4, FUSE mount, daemon process) is handed out by a context
manager that releases it in `finally`, so a failed or interrupted run leaves nothing mounted.
Processes are only ever stopped by the PID we started them with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # bench scripts run as `python bench/X.py`: reach tests.support
    sys.path.insert(0, str(ROOT))

from tests.support import fuseproc, loopfs  # noqa: E402
from tests.support.fuseproc import MOUNT_DEADLINE, PYTHON, FuseProc, mounted  # noqa: E402
from tests.support.mounts import write_mission as support_mission  # noqa: E402

__all__ = ["MOUNT_DEADLINE", "PYTHON", "FuseProc", "mounted"]


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
    return support_mission(
        path, name, str(s), str(w), str(n), str(e), step=step, phrases=tuple(phrases)
    )


def phrases(n: int) -> list[str]:
    return [f"phrase {i:05d}" for i in range(n)]


# -- scratch filesystems (tests/support/loopfs.py) ------------------------------------------------
@contextlib.contextmanager
def tmpfs(size: str = "8G", prefix: str = "bench-tmpfs-") -> Iterator[Path]:
    """A private tmpfs in a new temp dir (trees and state dirs: fast creates, no disk noise)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with loopfs.tmpfs(d, size):
            yield d
    finally:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def loop_ext4(size: str = "2G", prefix: str = "bench-ext4-") -> Iterator[Path]:
    """A fresh journaled ext4 on a loop image (fsync-sensitive tests; root fs has no journal)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        with loopfs.loop_ext4(base / "fs.img", base / "mnt", size) as mnt:
            yield mnt
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- FUSE daemons (tests/support/fuseproc.py) ------------------------------------------------------
def daemon_env(checkout: Path | None) -> dict[str, str] | None:
    """The environment that makes `-m fusefs` import the package of `checkout` (None: ours)."""
    if checkout is None:
        return None
    return {**os.environ, "PYTHONPATH": str(checkout)}


def start_missionfs(
    mission: Path,
    mnt: Path,
    state: Path,
    timeout: float = MOUNT_DEADLINE,
    extra: tuple[str, ...] = (),
    checkout: Path | None = None,
) -> FuseProc:
    """`missionfs mount --foreground` as our child, of this checkout or of `checkout`.

    cwd=bench/: `-m fusefs` then imports the installed package or PYTHONPATH's, not ./fusefs."""
    return fuseproc.start_missionfs(
        mission, mnt, state, BENCH, timeout, extra, env=daemon_env(checkout)
    )


def start_minimal(spec: Path, mnt: Path, timeout: float = MOUNT_DEADLINE) -> FuseProc:
    """bench/minimal_fs.py serving the pending tree of `spec` (the Python FUSE floor)."""
    cmd = [PYTHON, str(BENCH / "minimal_fs.py"), str(spec), str(mnt)]
    return fuseproc.start(
        cmd, mnt, mnt.parent / f"{mnt.name}.minimal.err", "minimal", BENCH, timeout
    )


def start_passthrough(backing: Path, mnt: Path, timeout: float = MOUNT_DEADLINE) -> FuseProc:
    """bench/passthrough_fs.py serving `backing` (the write-path floor of pyfuse3)."""
    cmd = [PYTHON, str(BENCH / "passthrough_fs.py"), str(backing), str(mnt)]
    err = mnt.parent / f"{mnt.name}.passthrough.err"
    return fuseproc.start(cmd, mnt, err, "passthrough", BENCH, timeout)
