"""fusefs/engine/durable.py: fsyncs awaited through Linux AIO really reach the kernel (no worker
thread: `_in_thread` is forbidden in those tests), many at once share the slots and the reaper,
an fd's own error is raised without giving AIO up, a refusal by AIO itself falls back to worker
threads for good, and a cancelled fsync leaves nothing behind."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import fusefs.engine.durable as durable
from fusefs.engine.durable import SLOTS, Fsyncer
from tests.support.aio import aio_unavailable
from tests.support.loopfs import loop_ext4

NR = durable.SYSCALLS.get(platform.machine())


NO_AIO = aio_unavailable()
needs_aio = pytest.mark.skipif(NO_AIO is not None, reason=f"Linux AIO unavailable: {NO_AIO}")


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any fsync that falls back to a worker thread fails the test: what succeeds went
    through io_submit and came back through the eventfd and io_getevents."""

    async def forbidden(fd: int, datasync: bool) -> int:
        raise AssertionError(f"fsync of fd {fd} fell back to a worker thread")

    monkeypatch.setattr(Fsyncer, "_in_thread", staticmethod(forbidden))


@pytest.fixture
def opcodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The opcode of every iocb handed to io_submit."""
    seen: list[int] = []
    real = Fsyncer._submit

    def spy(self: Fsyncer, ptrs: Any) -> str:
        seen.append(ptrs[0].contents.aio_lio_opcode)  # io_submit's array of one request
        return real(self, ptrs)

    monkeypatch.setattr(Fsyncer, "_submit", spy)
    return seen


@pytest.fixture
def fsyncer() -> Iterator[Fsyncer]:
    f = Fsyncer()
    yield f
    f.close()


def _dirty_file(d: Path, name: str = "f", size: int = 4096) -> int:
    """An fd of a new file in `d` with `size` unsynced bytes."""
    fd = os.open(d / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, os.urandom(size))
    return fd


def _fsync_all(f: Fsyncer, fds: list[int], datasync: bool = False) -> None:
    async def main() -> None:
        for fd in fds:
            await f.fsync(fd, datasync=datasync)

    trio.run(main)


def _fsync_closed_fd(f: Fsyncer, path: Path) -> None:
    """fsync a descriptor number just closed (inside the run: trio.run's own epoll and
    wake-up sockets would take a number freed before it)."""

    async def main() -> None:
        closed = os.open(path, os.O_RDONLY)
        os.close(closed)  # nothing opens a file before the fsync: the number stays free
        await f.fsync(closed)

    trio.run(main)


@needs_aio
def test_file_dir_and_fdatasync_go_through_aio(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None, opcodes: list[int]
) -> None:
    assert fsyncer.mode == "thread"  # lazily: no AIO context before the first fsync
    f = _dirty_file(tmp_path)
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync_all(fsyncer, [f, d])
        assert fsyncer.mode == "aio"
        _fsync_all(fsyncer, [f], datasync=True)
    finally:
        os.close(f)
        os.close(d)
    assert opcodes == [durable.IOCB_CMD_FSYNC] * 2 + [durable.IOCB_CMD_FDSYNC]
    assert fsyncer._flying == {} and fsyncer._done == {}


@needs_aio
@pytest.mark.parametrize("where", ["tmpfs", "work"])
def test_aio_fsync_on_tmpfs_and_on_the_work_disk(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None, where: str
) -> None:
    """/dev/shm (tmpfs, no FUSE under it) and the test's own tmp dir (the machine's disk)."""
    base = Path("/dev/shm") if where == "tmpfs" else tmp_path
    if where == "tmpfs" and not (base.is_dir() and os.access(base, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    d = Path(os.path.realpath(base)) / f"durable-{os.getpid()}"
    d.mkdir(exist_ok=True)
    try:
        fd = _dirty_file(d, size=1 << 20)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _fsync_all(fsyncer, [fd, dfd, fd])
        finally:
            os.close(fd)
            os.close(dfd)
    finally:
        shutil.rmtree(d)
    assert fsyncer.mode == "aio"


@needs_aio
def test_more_concurrent_fsyncs_than_slots_all_complete(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None
) -> None:
    n = 300
    assert n > SLOTS  # some wait for a slot, and one reaper reaps for the others
    fds = [_dirty_file(tmp_path, f"f{i}", 512) for i in range(n)]
    finished: list[int] = []

    async def one(fd: int) -> None:
        await fsyncer.fsync(fd)
        finished.append(fd)

    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for fd in fds:
                    nursery.start_soon(one, fd)

    try:
        trio.run(main)
    finally:
        for fd in fds:
            os.close(fd)
    assert sorted(finished) == sorted(fds)
    assert fsyncer.mode == "aio" and fsyncer._flying == {} and fsyncer._done == {}


@needs_aio
def test_a_closed_fd_is_ebadf_and_aio_stays_usable(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None
) -> None:
    fd = _dirty_file(tmp_path)
    _fsync_all(fsyncer, [fd])
    with pytest.raises(OSError) as e:
        _fsync_closed_fd(fsyncer, tmp_path / "f")
    assert e.value.errno == errno.EBADF
    _fsync_all(fsyncer, [fd])
    os.close(fd)
    assert fsyncer.mode == "aio"


@needs_aio
@pytest.mark.parametrize("kind", ["pipe", "devnull", "socket"])
def test_an_fd_without_fsync_is_its_own_error_not_a_reason_to_give_up_aio(
    tmp_path: Path, fsyncer: Fsyncer, kind: str
) -> None:
    """The kernel refuses IOCB_CMD_FSYNC of a file with no fsync at io_submit (EINVAL), as
    fsync(2) does. Before: that one refusal switched the Fsyncer to worker threads for good."""
    if kind == "pipe":
        odd, other = os.pipe()
    elif kind == "devnull":
        odd, other = os.open(os.devnull, os.O_RDONLY), -1
    else:
        odd, other = socket.socket().detach(), -1
    fd = _dirty_file(tmp_path)
    try:
        _fsync_all(fsyncer, [fd])
        assert fsyncer.mode == "aio"
        with pytest.raises(OSError) as e:
            _fsync_all(fsyncer, [odd])
        assert e.value.errno == errno.EINVAL  # what fsync(2) says of it too
        assert fsyncer.mode == "aio"
        _fsync_all(fsyncer, [fd])
        assert fsyncer.mode == "aio"
    finally:
        for x in (odd, other, fd):
            if x >= 0:
                os.close(x)


def test_aio_that_refuses_a_regular_file_is_given_up_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """io_submit answers EINVAL (a kernel before 4.18 does for every IOCB_CMD_FSYNC) for a file
    fsync(2) can sync: that fsync and every later one go to worker threads, and work."""
    if NO_AIO is not None:
        pytest.skip(f"Linux AIO unavailable: {NO_AIO}")
    f = Fsyncer()
    fd = _dirty_file(tmp_path)
    try:
        _fsync_all(f, [fd])
        assert f.mode == "aio"
        real = f._libc
        assert real is not None and NR is not None
        libc, io_submit = real, NR[2]

        class RefusingSubmit:
            def syscall(self, nr: ctypes.c_long, *args: Any) -> int:
                if nr.value == io_submit:
                    ctypes.set_errno(errno.EINVAL)
                    return -1
                return int(libc.syscall(nr, *args))

        f._libc = RefusingSubmit()  # type: ignore[assignment]
        threads: list[int] = []
        real_thread = Fsyncer._in_thread

        async def counted(fd: int, datasync: bool) -> int:
            threads.append(fd)
            return await real_thread(fd, datasync)

        monkeypatch.setattr(Fsyncer, "_in_thread", staticmethod(counted))
        _fsync_all(f, [fd, fd])
        assert f.mode == "thread" and threads == [fd, fd]
        f._libc = real
    finally:
        os.close(fd)
        f.close()


def test_io_submit_missing_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bogus io_submit number: the kernel's ENOSYS at the first submit, then threads."""
    if NR is None:
        pytest.skip(f"no AIO syscall numbers for {platform.machine()}")
    monkeypatch.setitem(durable.SYSCALLS, platform.machine(), (NR[0], NR[1], 100_000, NR[3]))
    f = Fsyncer()
    fd = _dirty_file(tmp_path)
    try:
        _fsync_all(f, [fd])
        assert f.mode == "thread"
        _fsync_all(f, [fd])
    finally:
        os.close(fd)
        f.close()


def test_io_setup_failure_means_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = platform.machine()
    monkeypatch.setitem(durable.SYSCALLS, machine, (100_000, 100_001, 100_002, 100_003))
    f = Fsyncer()
    fd = _dirty_file(tmp_path)
    try:
        _fsync_all(f, [fd, fd])
        assert f.mode == "thread" and f._efd == -1 and f._libc is None
        with pytest.raises(OSError) as e:  # a thread's fsync error is raised all the same
            _fsync_closed_fd(f, tmp_path / "f")
        assert e.value.errno == errno.EBADF
    finally:
        os.close(fd)
        f.close()


def test_without_aio_and_after_close_fsync_uses_threads(tmp_path: Path) -> None:
    fd = _dirty_file(tmp_path)
    off = Fsyncer(use_aio=False)
    try:
        _fsync_all(off, [fd])
        assert off.mode == "thread" and off._libc is None
        aio = Fsyncer()
        _fsync_all(aio, [fd])
        aio.close()
        assert aio.mode == "thread" and aio._efd == -1 and aio._ctx.value == 0
        _fsync_all(aio, [fd])  # after close: threads, and no new AIO context
        assert aio.mode == "thread" and aio._ctx.value == 0
    finally:
        os.close(fd)
        off.close()


@needs_aio
def test_a_cancelled_fsync_is_reaped_later_and_a_shielded_one_completes(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit shields its fsyncs (its next step depends on them): a shielded fsync in a
    cancelled scope completes. An unshielded one cancelled in flight raises Cancelled; its
    request is the kernel's, reaped and dropped by a later fsync: nothing is left behind."""
    fd = _dirty_file(tmp_path)
    done: list[str] = []
    # Completions are not reaped until the scope is cancelled: every fsync of the batch is
    # surely submitted and parked on the eventfd when the cancellation comes.
    reaping = False
    real_reap = Fsyncer._reap

    def gated_reap(self: Fsyncer) -> None:
        if reaping:
            real_reap(self)

    monkeypatch.setattr(Fsyncer, "_reap", gated_reap)

    async def main() -> None:
        nonlocal reaping
        with trio.CancelScope() as cs:  # cancelled before the call
            cs.cancel()
            reaping = True
            with trio.CancelScope(shield=True):
                await fsyncer.fsync(fd)
            done.append("shielded")
        reaping = False
        fds = [_dirty_file(tmp_path, f"g{i}", 1 << 16) for i in range(20)]

        async def one(x: int) -> None:
            await fsyncer.fsync(x)
            done.append("not cancelled?")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for x in fds:
                    nursery.start_soon(one, x)
                while len(fsyncer._flying) < len(fds):
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()  # all 20 in flight, none reaped
        assert len(fsyncer._abandoned) == len(fds)
        reaping = True
        with trio.fail_after(60):
            while fsyncer._flying:  # the next fsyncs reap the abandoned ones as they end
                await fsyncer.fsync(fd)
        for x in fds:
            os.close(x)
        done.append("after")

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert done == ["shielded", "after"]
    assert fsyncer.mode == "aio" and fsyncer._flying == {} and fsyncer._done == {}
    assert fsyncer._abandoned == set()


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@needs_aio
def test_a_kernel_fsync_error_surfaces_through_the_completion(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None
) -> None:
    """An ext4 shut down (as on a dying disk) accepts the AIO fsync and fails it with EIO in
    the kernel worker: the error comes back through io_getevents, and AIO stays in use."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted ext4")
    with loop_ext4(tmp_path / "disk.img", tmp_path / "disk", "16M") as disk:
        fd = _dirty_file(disk)
        try:
            _fsync_all(fsyncer, [fd])
            assert stat.S_ISREG(os.fstat(fd).st_mode)
            os.write(fd, b"more")
            flags = EXT4_GOING_FLAGS_NOLOGFLUSH.to_bytes(4, "little")
            dfd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.ioctl(dfd, EXT4_IOC_SHUTDOWN, flags)
            finally:
                os.close(dfd)
            with pytest.raises(OSError) as e:
                _fsync_all(fsyncer, [fd])
            assert e.value.errno == errno.EIO
            assert fsyncer.mode == "aio" and fsyncer._flying == {} and fsyncer._done == {}
        finally:
            os.close(fd)


@needs_aio
def test_a_full_context_of_abandoned_requests_does_not_wedge_the_next_fsync(
    tmp_path: Path, fsyncer: Fsyncer, no_threads: None
) -> None:
    """Every slot held by a request whose waiter was cancelled: nobody waits on the eventfd,
    so the next fsync, waiting for a slot, must reap itself (before: it waited forever)."""
    fds = [_dirty_file(tmp_path, f"a{i}", 512) for i in range(SLOTS)]
    fd = _dirty_file(tmp_path)

    async def main() -> None:
        for x in fds:
            with trio.move_on_after(0):  # cancelled at its first wait: abandoned in flight
                await fsyncer.fsync(x)
        assert len(fsyncer._flying) == len(fsyncer._abandoned) == SLOTS
        with trio.fail_after(30):
            await fsyncer.fsync(fd)

    try:
        trio.run(main)
    finally:
        for x in [*fds, fd]:
            os.close(x)
    assert fsyncer.mode == "aio" and fsyncer._done == {}


def test_the_syscall_table_is_the_processs_not_the_kernels() -> None:
    """`uname -m` names the kernel: a 32-bit userland on a 64-bit kernel has other numbers
    (x86_64's io_setup, 206, is i386's setgroups32): such a process uses worker threads."""
    assert durable.syscall_numbers("x86_64", 8) == (206, 207, 209, 208)
    assert durable.syscall_numbers("x86_64", 4) is None  # i386 or x32 on an x86_64 kernel
    assert durable.syscall_numbers("aarch64", 4) is None  # armhf on an arm64 kernel
    assert durable.syscall_numbers("aarch64", 8) == (0, 1, 2, 4)
    assert durable.syscall_numbers("armv7l", 4) == (243, 244, 246, 245)
    assert durable.syscall_numbers("armv7l", 8) is None
    assert durable.syscall_numbers("mips64", 8) is None
