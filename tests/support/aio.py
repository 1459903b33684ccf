"""Whether Linux AIO (io_setup) works in this process's environment: tests of the AIO fsync
path (fusefs/engine/durable.py) skip with the reason when it does not."""

from __future__ import annotations

import ctypes
import os
import platform

from fusefs.engine.durable import SYSCALLS


def aio_unavailable() -> str | None:
    """Why AIO cannot be used here (None: it can): the io_setup of a probe context."""
    nr = SYSCALLS.get(platform.machine())
    if nr is None:
        return f"no AIO syscall numbers for {platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ctx = ctypes.c_ulong(0)
    if libc.syscall(ctypes.c_long(nr[0]), ctypes.c_long(1), ctypes.byref(ctx)) < 0:
        return f"io_setup fails here: {os.strerror(ctypes.get_errno())}"
    libc.syscall(ctypes.c_long(nr[1]), ctx)
    return None
