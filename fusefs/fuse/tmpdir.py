"""tmp/: real files under STATE/tmp, with inode numbers given out by the mount.

The views' inodes are computed (inodes.py); tmp/ files and direct writes in progress are the
only names that need a table. A tmp/ file committed by `mv tmp/NAME done/REL` keeps its inode
as an alias of the task while the kernel holds it: handles opened before the commit now point
at the witness itself (a hard link), and writes through them are refused.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pyfuse3
import trio

from fusefs.fuse import inodes
from fusefs.fuse.attrs import Attrs
from fusefs.fuse.errors import fuse_error
from fusefs.fuse.handles import Backed, DirectWrite, Handle
from fusefs.fuse.inodes import Kind
from fusefs.statedir.store import LocalStore

if TYPE_CHECKING:
    from pathlib import Path

# Flags of the caller's open() that must not reach the backing file: O_DIRECT would make every
# unaligned pread/pwrite of the daemon's own buffers fail with EINVAL (the kernel already gives
# the caller direct I/O semantics on the FUSE side).
_BACKING_DROP = os.O_CREAT | os.O_EXCL | os.O_DIRECT
# Largest file offset accepted in tmp/ and direct writes: ext4's own limit with 4 KiB blocks,
# so a huge truncate or write gets EFBIG whatever filesystem holds the state directory.
MAX_FILE_BYTES = 2**44


class TmpDir:
    """The tmp/ inode table, direct writes in progress and aliases of committed inodes."""

    def __init__(self, store: LocalStore, attrs: Attrs) -> None:
        self.store = store
        self.dir = store.tmp
        self.attrs = attrs
        self.ino_of: dict[str, int] = {}  # tmp/ name -> inode
        self.name_of: dict[int, str] = {}
        self._next = 1
        self.staged: dict[int, DirectWrite] = {}  # inode of a direct write in progress
        self.alias: dict[int, int] = {}  # tmp/staged inode committed -> task
        self.synced: set[int] = set()  # tmp inodes fsync'd since their last write
        # tmp/staged inodes whose commit is running: writes and truncates through any handle
        # wait for it (the bytes hashed must be the bytes linked), then fail if it committed.
        self.frozen: dict[int, trio.Event] = {}

    def new_inode(self) -> int:
        ino = inodes.make(Kind.TMP, None, self._next)
        self._next += 1
        return ino

    def inode(self, fname: str) -> int:
        ino = self.ino_of.get(fname)
        if ino is None:
            ino = self.new_inode()
            self.ino_of[fname] = ino
            self.name_of[ino] = fname
        return ino

    # -- names --------------------------------------------------------------------------------
    def lookup(self, name: bytes) -> pyfuse3.EntryAttributes:
        fname = os.fsdecode(name)
        path = self.dir / fname
        if not os.path.isfile(path) or os.path.islink(path):
            raise fuse_error(errno.ENOENT)
        return self.attrs.real(self.inode(fname), path)

    def attr(self, inode: int) -> pyfuse3.EntryAttributes:
        task = self.alias.get(inode)
        if task is not None:
            return self.attrs.witness(inode, task)
        staged = self.staged.get(inode)
        if staged is not None:
            return self.attrs.staged(inode, staged.path, staged.fd)
        name = self.name_of.get(inode)
        if name is None:
            raise fuse_error(errno.ENOENT)
        return self.attrs.real(inode, self.dir / name)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.dir))

    def unlink(self, name: bytes) -> None:
        fname = os.fsdecode(name)
        try:
            os.unlink(self.dir / fname)
        except FileNotFoundError:
            raise fuse_error(errno.ENOENT) from None
        ino = self.ino_of.pop(fname, None)
        if ino is not None:
            self.name_of.pop(ino, None)
            self.synced.discard(ino)

    def rename(self, old: bytes, new: bytes, flags: int) -> None:
        src, dst = os.fsdecode(old), os.fsdecode(new)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self.dir / dst):
            raise fuse_error(errno.EEXIST)
        os.rename(self.dir / src, self.dir / dst)
        ino = self.ino_of.pop(src, None)
        old_ino = self.ino_of.pop(dst, None)
        if old_ino is not None:
            self.name_of.pop(old_ino, None)
        if ino is not None:
            self.ino_of[dst] = ino
            self.name_of[ino] = dst

    def committed(self, fname: str, task: int) -> None:
        """tmp/NAME became the witness of `task`: its inode is now an alias of the task."""
        ino = self.ino_of.pop(fname, None)
        if ino is not None:
            self.name_of.pop(ino, None)
            self.synced.discard(ino)
            self.alias[ino] = task

    # -- files --------------------------------------------------------------------------------
    def open(self, inode: int, flags: int) -> Backed:
        if inode in self.staged:
            raise fuse_error(errno.EBUSY, "refused open: another writer is writing this task")
        name = self.name_of.get(inode)
        if name is None:
            raise fuse_error(errno.ENOENT)
        fd = os.open(self.dir / name, flags & ~_BACKING_DROP)
        return Backed(inode, fd=fd, path=self.dir / name)

    def create(self, name: bytes, mode: int, flags: int) -> tuple[Backed, pyfuse3.EntryAttributes]:
        fname = os.fsdecode(name)
        path = self.dir / fname
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode & 0o777)
        ino = self.inode(fname)
        return Backed(ino, fd=fd, path=path), self.attrs.real(ino, path, fd)

    def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        h: Handle | None,
    ) -> pyfuse3.EntryAttributes:
        """Truncate, chmod or touch a tmp/ file or a direct write in progress (through the
        caller's handle `h` if it has one)."""
        staged = self.staged.get(inode)
        if h is not None:
            fd = h.fd if isinstance(h, Backed) else -1
        else:
            fd = staged.fd if staged is not None else -1
        path: Path | None = (
            staged.path if staged is not None else self.dir / self.name_of.get(inode, "")
        )
        if path is None or (fd < 0 and inode not in self.name_of):
            raise fuse_error(errno.ENOENT)
        target: int | str | Path = fd if fd >= 0 else path
        if fields.update_size:
            if attr.st_size > MAX_FILE_BYTES:
                raise fuse_error(errno.EFBIG)
            os.truncate(target, attr.st_size)
            self.synced.discard(inode)
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.stat(target)
            at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(target, ns=(at, mt))
        return self.attrs.real(inode, path, fd)

    # -- commits in progress ------------------------------------------------------------------
    async def thaw(self, ino: int) -> None:
        """Wait while a commit of inode `ino` runs (see frozen)."""
        ev = self.frozen.get(ino)
        while ev is not None:
            await ev.wait()
            ev = self.frozen.get(ino)

    def freeze(self, ino: int | None) -> trio.Event | None:
        if ino is None:
            return None
        ev = self.frozen[ino] = trio.Event()
        return ev

    def unfreeze(self, ino: int | None, ev: trio.Event | None) -> None:
        if ino is not None and ev is not None and self.frozen.get(ino) is ev:
            del self.frozen[ino]
            ev.set()
