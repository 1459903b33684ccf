"""Open files of a mount, one type per kind, and the table of their handle numbers.

Fixed        bytes decided at open (a task descriptor, the status file)
Backed       a real file: a tmp/ file or a witness opened for reading
DirectWrite  `cmd > done/REL`: a staged file committed at its close (writes.py)
Listing      an open tmp/ directory: its names, read once at opendir
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fusefs.fuse.fuseconn import proc_stat_fields


@dataclass
class Fixed:
    ino: int
    data: bytes


@dataclass
class Backed:
    ino: int
    fd: int
    path: Path | None = None  # None for a witness: never written, truncated or chmod'ed
    dirty: bool = False  # written since the last fsync (a commit must fsync it)


@dataclass
class DirectWrite(Backed):
    target: int = 0  # the task whose witness this becomes
    writer_pid: int = 0
    parent: int = 0  # the done/ tile and name it was created as (to invalidate their miss)
    name: bytes = b""
    committed: bool = False
    rejected: bool = False
    closing: bool = False  # its last request was a close (flush)


@dataclass
class Listing:
    ino: int
    names: list[str] = field(default_factory=list)


Handle = Fixed | Backed | DirectWrite | Listing


class Handles:
    """Handle number -> open file. Numbers are never reused while the mount lives."""

    def __init__(self) -> None:
        self.open: dict[int, Handle] = {}
        self.next_fh = 1

    def add(self, handle: Handle) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.open[fh] = handle
        return fh

    def __getitem__(self, fh: int) -> Handle:
        return self.open[fh]

    def get(self, fh: int) -> Handle | None:
        return self.open.get(fh)

    def pop(self, fh: int) -> Handle:
        return self.open.pop(fh)

    def discard(self, fh: int) -> None:
        self.open.pop(fh, None)

    def holds(self, ino: int) -> bool:
        """Is a file of inode `ino` open?"""
        return any(h.ino == ino for h in self.open.values())


def writer_was_killed(pid: int) -> bool:
    """True if process `pid` is exiting because of a signal (its close is not a real end)."""
    if pid <= 0:
        return False
    fields = proc_stat_fields(pid)
    # fields[0] is field 3 (state); exit_code is field 52 (Linux >= 3.5).
    if len(fields) < 50:
        return False
    return (int(fields[49]) & 0x7F) != 0
