"""fusefs/statedir/store.py DirHandles: witness directories' descriptors kept open for their
fsync, reused, evicted oldest-first beyond `limit`, closed by their last user when evicted in
use, and never leaked, also when threads share them."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from fusefs.statedir.store import DirHandles


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def _dirs(tmp_path: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        d = tmp_path / f"d{i}"
        d.mkdir()
        out.append(str(d))
    return out


def _names(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_directory_keeps_one_descriptor(tmp_path: Path) -> None:
    (d,) = _dirs(tmp_path, 1)
    h = DirHandles(limit=2)
    fd = h.acquire(d)
    assert h.acquire(d) == fd  # two users at once: the same descriptor
    h.release(fd)
    h.release(fd)
    assert _is_open(fd)  # kept for the next commit into d
    assert h.acquire(d) == fd and _names(fd) == d
    h.release(fd)
    h.close()
    assert not _is_open(fd)


def test_eviction_beyond_the_limit_closes_the_oldest_unused(tmp_path: Path) -> None:
    a, b, c = _dirs(tmp_path, 3)
    h = DirHandles(limit=2)
    fds = {}
    for d in (a, b, c):
        fds[d] = h.acquire(d)
        h.release(fds[d])
    assert not _is_open(fds[a])  # the oldest, evicted by c
    assert _is_open(fds[b]) and _is_open(fds[c])
    assert h.acquire(b) == fds[b]  # still kept
    h.release(fds[b])
    again = h.acquire(a)  # reopened: evicts b, the oldest kept now
    h.release(again)
    assert _names(again) == a and not _is_open(fds[b]) and _is_open(fds[c])
    h.close()
    assert not _is_open(again) and not _is_open(fds[c])


def test_a_descriptor_evicted_in_use_is_closed_by_its_last_release(tmp_path: Path) -> None:
    a, b, c = _dirs(tmp_path, 3)
    h = DirHandles(limit=1)
    fa = h.acquire(a)
    fa2 = h.acquire(a)  # two users
    fb = h.acquire(b)  # evicts a, in use
    assert _is_open(fa) and fa2 == fa
    os.fsync(fa)  # its users can still fsync through it
    h.release(fa)
    assert _is_open(fa)  # one user left
    new_a = h.acquire(a)  # a fresh one for a new user (fb evicted in use now)
    assert new_a != fa and _names(new_a) == a
    h.release(fa)
    assert not _is_open(fa)  # its last user closed it
    h.release(fb)
    assert not _is_open(fb)  # evicted while in use by new_a's acquire
    h.release(new_a)
    assert _is_open(new_a)
    fc = h.acquire(c)
    h.release(fc)
    assert not _is_open(new_a) and _is_open(fc)
    h.close()
    assert not _is_open(fc)


def test_close_keeps_descriptors_in_use_until_their_release(tmp_path: Path) -> None:
    a, b = _dirs(tmp_path, 2)
    h = DirHandles(limit=4)
    fa, fb = h.acquire(a), h.acquire(b)
    h.release(fb)
    h.close()
    assert not _is_open(fb) and _is_open(fa)
    h.release(fa)
    assert not _is_open(fa)


def test_a_missing_directory_raises_and_keeps_nothing(tmp_path: Path) -> None:
    h = DirHandles(limit=2)
    before = _open_fds()
    with pytest.raises(FileNotFoundError):
        h.acquire(str(tmp_path / "absent"))
    assert _open_fds() == before
    assert h._fds == {} and h._users == {}


def test_threads_sharing_few_handles_leak_nothing(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path, 12)
    h = DirHandles(limit=2)
    before = _open_fds()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            start.wait()
            for i in range(300):
                d = dirs[(i * (k + 1)) % len(dirs)]
                if i % 3:
                    h.fsync(d)
                else:  # hold one across another's acquire, as a commit awaiting its fsync does
                    fd = h.acquire(d)
                    other = h.acquire(dirs[(i + k) % len(dirs)])
                    assert _names(fd) == d
                    h.release(other)
                    os.fsync(fd)
                    h.release(fd)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(h._fds) <= 2 and all(n == 0 for n in h._users.values())
    assert set(h._users) == set(h._fds.values())  # no evicted descriptor left behind
    h.close()
    assert _open_fds() == before
