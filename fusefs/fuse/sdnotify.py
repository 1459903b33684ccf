# layer: fuse
"""systemd's readiness protocol (sd_notify(3)) without a dependency: one datagram a message.

A `Type=notify` unit starts the daemon with $NOTIFY_SOCKET set; systemd only considers the
service started (and starts units ordered after it, e.g. a scraper that writes to the mount)
when READY=1 arrives. The daemon sends it once the mount *answers* (a statfs reaches pyfuse3's
loop), not when pyfuse3.init returns: a mount that exists but does not answer yet would make
workers started after it block. Without $NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import trio

log = logging.getLogger("missionfs")


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") to $NOTIFY_SOCKET; False if there is none.

    Errors are logged, never raised: a supervisor that went away must not stop the mount.
    """
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace socket (what systemd itself uses)
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", addr, e)
        return False
    return True


async def ready_when_answering(mountpoint: Path, what: str) -> None:
    """READY=1 once a statfs of the mountpoint gets an answer from our own loop.

    Runs as a task in the daemon's nursery: the statfs runs in a thread, since the loop that
    must answer it is this one. A mount that never answers is left to systemd's start timeout.
    """
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:  # abandoned if the daemon stops first: never wait on a request nobody will answer
        await trio.to_thread.run_sync(os.statvfs, mountpoint, abandon_on_cancel=True)
    except OSError as e:
        log.warning("the mount did not answer (%s); READY=1 not sent", e)
        return
    notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving {what} on {mountpoint}")


def stopping(mountpoint: Path) -> None:
    """STOPPING=1: the daemon is unmounting and saving its index (may take a while)."""
    notify("STOPPING=1", f"STATUS=unmounting {mountpoint}, saving the index")
