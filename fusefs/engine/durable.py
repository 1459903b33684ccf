"""fsync awaited on trio's thread, without a worker thread: Linux AIO's IOCB_CMD_FSYNC.

Why: a commit must fsync the witness and its directory before it is acknowledged, and the rule
is that nothing waiting for a disk runs on the event loop. Through `trio.to_thread` that wait
cost more CPU than everything else in a commit (docs/benchmarks.md, "CPU per task"): a wake-up
of a worker thread, one of trio's loop back, and a GIL hand-off with the busy trio thread for
every syscall the worker makes (about ten context switches a commit). Linux runs an AIO fsync
(since 4.18) in a kernel worker and signals its end on an eventfd, which trio waits for like
a socket: the loop never blocks and no Python thread is involved.

Where AIO is missing (another OS or architecture, a kernel before 4.18, a seccomp profile that
forbids io_setup, aio-max-nr used up, a file system whose files refuse it) each fsync goes to a
worker thread, as before: `Fsyncer.mode` says which ("aio" or "thread"). A request AIO refuses
is retried in a worker thread, and AIO is given up for good only if that fsync succeeds: a
descriptor that has no fsync at all (a pipe, /dev/null, a socket: EINVAL from fsync(2) too)
is the descriptor's own error, not AIO's, and switching for it would cost every later commit.
The CPU of the kernel's own fsync work is the kernel worker's, not the daemon's, in this mode
(on tmpfs it is nothing; on a disk it is the device's wait, not CPU).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import platform
from collections.abc import Callable

import trio

log = logging.getLogger("missionfs")

# (io_setup, io_destroy, io_submit, io_getevents) by `uname -m`: x86_64's own numbers, the
# asm-generic table's (arm64, riscv64) and 32-bit ARM's EABI table's. Others: worker threads.
SYSCALLS: dict[str, tuple[int, int, int, int]] = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
    "arm64": (0, 1, 2, 4),
    "riscv64": (0, 1, 2, 4),
    "armv7l": (243, 244, 246, 245),
    "armv6l": (243, 244, 246, 245),
}
POINTER_BYTES = {"armv7l": 4, "armv6l": 4}  # the others above are 64-bit tables
IOCB_CMD_FSYNC = 2
IOCB_CMD_FDSYNC = 3
IOCB_FLAG_RESFD = 1  # signal the completion on aio_resfd (an eventfd)
SLOTS = 128  # AIO requests in flight at most (io_setup); more wait for a slot
_REFUSED = 1  # _aio_fsync's answer when io_submit refused the request (results are 0 or -errno)


def syscall_numbers(machine: str, pointer_bytes: int) -> tuple[int, int, int, int] | None:
    """SYSCALLS for this process: `uname -m` names the kernel's architecture, and a 32-bit
    process on a 64-bit kernel (an i386 or armhf userland) has the other table, where these
    numbers are other calls (x86_64's 206 is i386's setgroups32): None then, worker threads."""
    numbers = SYSCALLS.get(machine)
    if numbers is None or POINTER_BYTES.get(machine, 8) != pointer_bytes:
        return None
    return numbers


class _Iocb(ctypes.Structure):
    """struct iocb of linux/aio_abi.h (little-endian order of aio_key and aio_rw_flags)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    """struct io_event."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


_OnePointer = ctypes.POINTER(_Iocb) * 1  # io_submit's array of one request
_ZERO, _ONE, _SLOTS = ctypes.c_long(0), ctypes.c_long(1), ctypes.c_long(SLOTS)


class Fsyncer:
    """fsync(2) of descriptors, awaited (see the module docstring). One per daemon; `close`
    at its end. Only for trio's thread: its waits are trio's."""

    def __init__(self, *, use_aio: bool = True) -> None:
        self.mode = "thread"
        self._ctx = ctypes.c_ulong(0)
        self._efd = -1
        self._nr = syscall_numbers(platform.machine(), ctypes.sizeof(ctypes.c_void_p))
        self._ids = itertools.count(1)
        # id -> its request (block, io_submit's array), alive until its event is reaped; then
        # kept in `_free` for the next fsync
        self._flying: dict[int, tuple[_Iocb, ctypes.Array[ctypes._Pointer[_Iocb]]]] = {}
        self._free: list[tuple[_Iocb, ctypes.Array[ctypes._Pointer[_Iocb]]]] = []
        self._abandoned: set[int] = set()  # ids whose waiter was cancelled
        self._done: dict[int, int] = {}  # id -> result (0 or -errno), until its waiter takes it
        # One task at a time waits on the eventfd and reaps for all (`_reaping`); the others
        # wait for `_reaped`, set after each reap (trio allows one waiter per descriptor).
        self._reaping = False
        self._reaped: trio.Event | None = None
        nr = self._nr or (0, 0, 0, 0)
        self._submit_nr, self._getevents_nr = ctypes.c_long(nr[2]), ctypes.c_long(nr[3])
        self._events = (_Event * SLOTS)()
        self._zero = ctypes.create_string_buffer(16)  # a timespec of 0: reap what is there
        self._libc: ctypes.CDLL | None = None
        # The AIO context is made at the first fsync: commands that never commit make none.
        self._pending_setup = use_aio and self._nr is not None and hasattr(os, "eventfd")

    def _setup(self) -> None:
        assert self._nr is not None
        self._pending_setup = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            nr = ctypes.c_long(self._nr[0])
            if libc.syscall(nr, ctypes.c_long(SLOTS), ctypes.byref(self._ctx)) < 0:
                raise OSError(ctypes.get_errno(), "io_setup")
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (OSError, AttributeError) as e:
            log.info("fsync through worker threads (no Linux AIO here: %s)", e)
            if self._ctx.value:  # io_setup worked, the eventfd did not
                libc.syscall(ctypes.c_long(self._nr[1]), self._ctx)
                self._ctx.value = 0
            return
        self._libc = libc
        self.mode = "aio"

    def describe(self) -> str:
        """For the status file: "aio" or "thread", "untried" before the first fsync (the AIO
        context is made then)."""
        return "untried" if self._pending_setup else self.mode

    async def fsync(self, fd: int, *, datasync: bool = False) -> None:
        """fsync(2) (fdatasync(2) with `datasync`) of `fd`; raises its OSError. A cancelled
        wait leaves the request to the kernel (its completion is reaped and dropped later): a
        caller whose next step depends on the outcome shields the call (the commit does)."""
        if self._pending_setup:
            self._setup()
        res = await self._aio_fsync(fd, datasync) if self.mode == "aio" else None
        if res is None or res == _REFUSED:  # no AIO, no slot, or refused: a worker thread
            refused, res = res == _REFUSED, await self._in_thread(fd, datasync)
            if refused and res == 0:  # AIO refused what fsync(2) does: threads from now on
                log.info("fsync through worker threads from now on (AIO fsync refused)")
                self.mode = "thread"
        if res < 0:
            raise OSError(-res, os.strerror(-res))

    async def _aio_fsync(self, fd: int, datasync: bool) -> int | None:
        """The AIO fsync's result (0 or -errno); None if the kernel had no AIO slot free,
        _REFUSED if io_submit refused it (the caller decides whether AIO is what refused)."""
        # All slots in flight: wait for a reap (or reap, if no waiter does: all abandoned)
        await self._wait_until(lambda: len(self._flying) < SLOTS)
        ident = next(self._ids)
        request = self._free.pop() if self._free else self._request()
        iocb = request[0]
        iocb.aio_data = ident
        iocb.aio_lio_opcode = IOCB_CMD_FDSYNC if datasync else IOCB_CMD_FSYNC
        iocb.aio_fildes = fd
        try:
            submitted = self._submit(request[1])
        except OSError:
            self._free.append(request)
            raise
        if submitted != "ok":
            self._free.append(request)
            return None if submitted == "busy" else _REFUSED
        self._flying[ident] = request
        try:
            await self._wait_until(lambda: ident in self._done)
        except BaseException:  # cancelled: its completion is dropped when reaped
            if self._done.pop(ident, None) is None:
                self._abandoned.add(ident)
            raise
        return self._done.pop(ident)

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        """Until `done()`: reap when no other task does, else wait for its next reap."""
        while not done():
            if self._reaping:  # another task waits on the eventfd; it wakes us after its reap
                await self._next_reap()
                continue
            self._reaping = True
            try:
                await trio.lowlevel.wait_readable(self._efd)
                self._reap()
            finally:
                self._reaping = False
                reaped, self._reaped = self._reaped, None
                if reaped is not None:
                    reaped.set()

    async def _next_reap(self) -> None:
        if self._reaped is None:
            self._reaped = trio.Event()
        await self._reaped.wait()

    @staticmethod
    async def _in_thread(fd: int, datasync: bool) -> int:
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0

    def _request(self) -> tuple[_Iocb, ctypes.Array[ctypes._Pointer[_Iocb]]]:
        """A request block and io_submit's array pointing to it (kept for reuse)."""
        iocb = _Iocb(aio_flags=IOCB_FLAG_RESFD, aio_resfd=self._efd)
        return iocb, _OnePointer(ctypes.pointer(iocb))

    def _submit(self, ptrs: ctypes.Array[ctypes._Pointer[_Iocb]]) -> str:
        """ "ok", "busy" (no AIO slot in the kernel now: this one in a thread) or "refused"
        (EINVAL, ENOSYS, EOPNOTSUPP: no AIO fsync here, or no fsync for this descriptor at all:
        `fsync` tells which); raises an fd's own error (EBADF)."""
        assert self._libc is not None and self._nr is not None
        if self._libc.syscall(self._submit_nr, self._ctx, _ONE, ptrs) == 1:
            return "ok"
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            return "busy"
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return "refused"
        raise OSError(err, os.strerror(err))

    def _reap(self) -> None:
        """Take every finished request's result (the eventfd counts them)."""
        assert self._libc is not None and self._nr is not None
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        while True:
            n = self._libc.syscall(
                self._getevents_nr, self._ctx, _ZERO, _SLOTS, self._events, self._zero
            )
            if n <= 0:
                return
            for ev in self._events[:n]:
                request = self._flying.pop(ev.data, None)
                if request is not None:
                    self._free.append(request)
                if ev.data in self._abandoned:
                    self._abandoned.discard(ev.data)
                else:
                    self._done[ev.data] = ev.res
            if n < SLOTS:
                return

    def close(self) -> None:
        """Destroy the AIO context (the kernel waits for requests in flight first)."""
        if self._libc is not None and self._nr is not None and self._ctx.value:
            self._libc.syscall(ctypes.c_long(self._nr[1]), self._ctx)
            self._ctx.value = 0
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
        self.mode = "thread"
        self._pending_setup = False
