"""Scratch filesystems for tests and benchmarks: a loop-mounted ext4 and a private tmpfs.

Both are context managers that unmount in `finally` (lazily if busy) and detach the loop device
they attached, so a failed test or an interrupted benchmark leaves nothing mounted. Used by
tests/mount/test_diskfull.py (a tiny ext4 to fill up), bench/common.py (a journaled ext4 for
fsync-sensitive runs, tmpfs for big trees) and bench/outage_run.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


def is_mounted(path: Path) -> bool:
    """Whether `path` is a mount point right now (a dead FUSE mount counts: it is in the table)."""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def _check(*cmd: str | Path) -> None:
    res = _run(*cmd)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({res.returncode}): {res.stderr}")


def umount(path: Path) -> None:
    """Unmount `path`, lazily when it is busy; nothing to do when it is not mounted."""
    for cmd in (("umount", path), ("umount", "-l", path)):
        if not is_mounted(path):
            return
        _run(*cmd)


@contextlib.contextmanager
def loop_ext4(img: Path, where: Path, size: str, *mkfs_opts: str) -> Iterator[Path]:
    """A fresh ext4 of `size` in the image file `img`, mounted on `where` (created if missing).

    `mkfs_opts` go to mkfs.ext4 (e.g. "-b", "1024", "-m", "0" for a tiny disk to fill up). The
    filesystem is journaled, unlike a root fs created without one: fsync costs are real."""
    _check("truncate", "-s", size, img)
    _check("mkfs.ext4", "-q", "-F", *mkfs_opts, img)
    where.mkdir(parents=True, exist_ok=True)
    _check("mount", "-o", "loop", img, where)
    dev = _run("findmnt", "-n", "-o", "SOURCE", where).stdout.strip()
    try:
        yield where
    finally:
        umount(where)
        if dev.startswith("/dev/loop") and img.name in _run("losetup", dev).stdout:
            _run("losetup", "-d", dev)


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "8G") -> Iterator[Path]:
    """A private tmpfs on `where` (fast creates, no disk noise); unlimited inodes."""
    where.mkdir(parents=True, exist_ok=True)
    _check("mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=0", "tmpfs", where)
    try:
        yield where
    finally:
        umount(where)


def fill(d: Path) -> None:
    """Write one file d/filler until the filesystem refuses even a byte more (ENOSPC)."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1 << 10, 1):
            while True:
                try:
                    os.write(fd, bytes(chunk))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


def free(d: Path) -> None:
    """Remove what `fill` wrote and give the blocks back now."""
    os.unlink(d / "filler")
    os.sync()  # ext4 gives the blocks back at the journal commit
