"""Attributes of the mount's names: computed for the views, read from real files for the rest.

Timeouts say how long the kernel may cache a name and its attributes: long for the plan's
directories and descriptors (every change of a task invalidates its names, kcache.py), short for
tmp/ files and direct writes (they change under the daemon through other handles).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
from cachetools import LRUCache

from fusefs.fuse import inodes
from fusefs.fuse.errors import fuse_error
from fusefs.fuse.inodes import Kind
from fusefs.model.state import MissionState, View
from fusefs.statedir.store import LocalStore

if TYPE_CHECKING:
    from fusefs.engine.sync import SyncEngine

DIR_TIMEOUT = 60.0
FILE_TIMEOUT = 60.0
WITNESS_TIMEOUT = 300.0
TMP_TIMEOUT = 1.0
# A claim's attributes: the bound of the kernel's invalidations (notifier.LINGER_SECONDS), so
# a claimed/ name of a task just committed answers a stat for at most as long as any other
# stale name does; long enough for a worker's open, fstat and reads of it to share one GETATTR.
CLAIM_ATTR_TIMEOUT = 0.005
DIR_MODE = stat.S_IFDIR | 0o755


class Attrs:
    """Builds EntryAttributes; `started_ns` is the mtime of the plan's directories."""

    def __init__(
        self, state: MissionState, store: LocalStore, sync: SyncEngine | None, started_ns: int
    ) -> None:
        self.state = state
        self.space = state.space
        self.store = store
        self.sync = sync
        self.started_ns = started_ns
        self.uid = os.getuid()
        self.gid = os.getgid()
        # Listings of pending/ are served on every `ls`: reuse the attribute objects.
        self._pending: LRUCache[int, pyfuse3.EntryAttributes] = LRUCache(maxsize=1 << 16)

    def make(
        self,
        ino: int,
        mode: int,
        size: int,
        mtime_ns: int,
        timeout: float,
        attr_timeout: float | None = None,
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime_ns
        a.entry_timeout = timeout
        a.attr_timeout = timeout if attr_timeout is None else attr_timeout
        return a

    def directory(self, ino: int) -> pyfuse3.EntryAttributes:
        return self.make(ino, DIR_MODE, 0, self.started_ns, DIR_TIMEOUT)

    def task(self, view: View, task: int) -> pyfuse3.EntryAttributes:
        ino = inodes.make(Kind.FILE, view, task)
        if view is View.DONE:
            return self.witness(ino, task)
        claim = self.state.claims.get(task)
        if claim is not None:
            # Attributes of a claim are cached CLAIM_ATTR_TIMEOUT at most: when it ends by its
            # task's commit, the kernel may keep its claimed/ name (kcache.py, `lingering`),
            # and a stat of that name must soon ask, to be told ENOENT.
            mtime = int(claim.claimed_at * 1e9)
            size = self.space.descriptor_size(task)
            return self.make(
                ino, stat.S_IFREG | 0o644, size, mtime, FILE_TIMEOUT, CLAIM_ATTR_TIMEOUT
            )
        if task not in self.state.pending:  # done, asked through an open descriptor (fs.py)
            size = self.space.descriptor_size(task)
            return self.make(
                ino, stat.S_IFREG | 0o444, size, self.started_ns, FILE_TIMEOUT, CLAIM_ATTR_TIMEOUT
            )
        cached = self._pending.get(ino)  # a pending descriptor's attributes never change
        if cached is None:
            cached = self.make(
                ino,
                stat.S_IFREG | 0o444,
                self.space.descriptor_size(task),
                self.started_ns,
                FILE_TIMEOUT,
            )
            self._pending[ino] = cached
        return cached

    def witness(self, ino: int, task: int) -> pyfuse3.EntryAttributes:
        try:
            st = os.stat(self.store.witness_path(self.space.rel(task)))
        except FileNotFoundError:
            if self.sync is not None and task in self.sync.remote:
                # Remote only: the size the bucket listed (0 until a HEAD of an old manifest's
                # witness tells it; never asked here), fetched on first read (see open).
                size = self.sync.sizes.get(task) or 0
                mtime = self.sync.remote_mtime_ns
                return self.make(ino, stat.S_IFREG | 0o444, size, mtime, TMP_TIMEOUT)
            raise fuse_error(errno.ENOENT) from None
        return self.make(ino, stat.S_IFREG | 0o444, st.st_size, st.st_mtime_ns, WITNESS_TIMEOUT)

    def real(self, ino: int, path: Path, fd: int = -1) -> pyfuse3.EntryAttributes:
        try:
            st = os.fstat(fd) if fd >= 0 else os.lstat(path)
        except FileNotFoundError:
            raise fuse_error(errno.ENOENT) from None
        a = self.make(
            ino, stat.S_IFREG | (st.st_mode & 0o777), st.st_size, st.st_mtime_ns, TMP_TIMEOUT
        )
        a.st_atime_ns = st.st_atime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def staged(self, ino: int, path: Path | None, fd: int) -> pyfuse3.EntryAttributes:
        """A direct write in progress. Never cached: the name must resolve afresh once the
        write is committed or refused."""
        a = self.real(ino, path or Path(), fd)
        a.entry_timeout = a.attr_timeout = 0
        return a

    @staticmethod
    def negative() -> pyfuse3.EntryAttributes:
        """A cached "no such name" (inode 0); every change of a task invalidates its names."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = DIR_TIMEOUT
        return a

    def check_witness_setattr(
        self, inode: int, task: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
    ) -> pyfuse3.EntryAttributes:
        """A witness never changes, but asking for what it already is succeeds: `install -m 644`
        and `rsync --inplace` chmod the file they just wrote (and committed at close). Write
        bits are ignored in the comparison (a witness is never writable, whatever its bits
        say); any real change of mode, owner, times or size is refused with EPERM."""
        cur = self.witness(inode, task)
        same = {
            "mode": not fields.update_mode
            or stat.S_IMODE(attr.st_mode) & ~0o222 == stat.S_IMODE(cur.st_mode) & ~0o222,
            "owner": (not fields.update_uid or attr.st_uid == cur.st_uid)
            and (not fields.update_gid or attr.st_gid == cur.st_gid),
            "size": not fields.update_size or attr.st_size == cur.st_size,
            "times": (not fields.update_atime or attr.st_atime_ns == cur.st_atime_ns)
            and (not fields.update_mtime or attr.st_mtime_ns == cur.st_mtime_ns),
        }
        changed = [what for what, ok in same.items() if not ok]
        if changed:
            rel = self.space.rel(task)
            raise fuse_error(
                errno.EPERM,
                f"refused change of {'/'.join(changed)} of done/{rel}: a witness is immutable",
            )
        return cur
