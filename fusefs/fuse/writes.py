"""Results written through the mount: `mv tmp/NAME done/REL` and direct writes into done/.

Both end in Committer.commit (engine/commit.py), which validates, links and records the witness;
this module keeps the FUSE side of it: the staged file of a direct write (committed at its
close, refused ones kept under rejected/), one writer per task, writes refused through handles
of an inode already committed, and the kernel names to refresh once a commit is made.
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3
import trio

from fusefs.engine.commit import CommitRefused, Committer
from fusefs.engine.status import StatusBoard
from fusefs.fuse import inodes
from fusefs.fuse.errors import fuse_error
from fusefs.fuse.handles import Backed, DirectWrite, Handles, writer_was_killed
from fusefs.fuse.inodes import Kind
from fusefs.fuse.kcache import KernelCache
from fusefs.fuse.tmpdir import MAX_FILE_BYTES, TmpDir
from fusefs.model.state import MissionState, View
from fusefs.statedir.store import LocalStore

log = logging.getLogger("missionfs")

RELEASE_WAIT = 1.0  # seconds a new direct writer waits for a closed one's release


class Writes:
    def __init__(
        self,
        state: MissionState,
        store: LocalStore,
        committer: Committer,
        status: StatusBoard,
        tmp: TmpDir,
        kcache: KernelCache,
        handles: Handles,
    ) -> None:
        self.state = state
        self.space = state.space
        self.store = store
        self.committer = committer
        self.status = status
        self.tmp = tmp
        self.kcache = kcache
        self.handles = handles
        self._released: dict[int, trio.Event] = {}  # staged inode -> set at its release

    # -- commits of tmp/ files ----------------------------------------------------------------
    async def commit_tmp(self, name_old: bytes, tile: int, name_new: bytes) -> None:
        """`mv tmp/NAME done/REL`."""
        fname = os.fsdecode(name_old)
        task = self.writable_task(tile, name_new)
        path = self.tmp.dir / fname
        ino = self.tmp.ino_of.get(fname)
        synced = ino is not None and ino in self.tmp.synced
        self.kcache.committing.add(task)
        frozen = self.tmp.freeze(ino)
        try:
            await self.committer.commit(path, task, synced=synced, source="rename")
        except CommitRefused as e:
            if task in self.state.fact:  # found done meanwhile: the kernel keeps its cached miss
                self.kcache.invalidate(inodes.make(Kind.TILE, View.DONE, tile), name_new)
            raise fuse_error(e.errno) from None
        except FileNotFoundError:  # no such file in tmp/ (or a directory)
            raise fuse_error(errno.ENOENT) from None
        finally:
            self.kcache.committing.discard(task)
            self.tmp.unfreeze(ino, frozen)  # waiters resume at our next await: after the alias
        # Handles opened before the commit now write to the witness's inode: write() and
        # setattr refuse them through the alias; the kernel's done/REL is that inode now.
        self.tmp.committed(fname, task)
        self.kcache.aliased.add(task)

    def writable_task(self, tile: int, name: bytes) -> int:
        """The task done/TILE/NAME names, if a result may be written to it now."""
        task = inodes.task_in_tile(self.space, tile, name)
        row, col = divmod(tile, self.space.lon.n)
        where = f"done/{self.space.lat.name(row)}/{self.space.lon.name(col)}/{os.fsdecode(name)}"
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:  # no phrase of a mission is named so: say why, not EACCES
            self.status.refused(where, "the name is not valid UTF-8")
            raise fuse_error(
                errno.EILSEQ, f"refused write of done/…/{name!r}: the name is not valid UTF-8"
            ) from None
        if task is None or task not in self.state.intent:
            self.status.refused(where, "not a task of the mission plan")
            raise fuse_error(
                errno.EACCES, f"refused write of {where}: not a task of the mission plan"
            )
        if task in self.state.fact:
            self.status.refused(where, "a witness exists and is immutable")
            raise fuse_error(
                errno.EEXIST, f"refused write of {where}: a witness exists and is immutable"
            )
        return task

    # -- direct writes ------------------------------------------------------------------------
    async def create_direct(
        self, parent: int, tile: int, name: bytes, pid: int
    ) -> tuple[int, pyfuse3.EntryAttributes]:
        """`cmd > done/REL`: a staged file, committed at its close."""
        task = self.writable_task(tile, name)
        if await self._other_writer(task):
            raise fuse_error(
                errno.EBUSY,
                f"refused second writer of done/{self.space.rel(task)}:"
                " another process is writing this task",
            )
        task = self.writable_task(tile, name)  # it may have been committed meanwhile
        path = self.store.staging / f"{os.getpid()}.{self.handles.next_fh}.{task}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        ino = self.tmp.new_inode()
        h = DirectWrite(ino, fd, path, target=task, writer_pid=pid, parent=parent, name=name)
        self.tmp.staged[ino] = h
        return self.handles.add(h), self.tmp.attrs.staged(ino, path, fd)

    async def _other_writer(self, task: int) -> bool:
        """Is a direct write of `task` in progress? One that was just closed is given up to
        RELEASE_WAIT seconds to end: the kernel sends the release of a file after close()
        returned, so `printf bad > done/REL; printf good > done/REL` would find the first
        one still open (refused, kept for more writes until its release)."""
        h = next((w for w in self.tmp.staged.values() if w.target == task), None)
        if h is None:
            return False
        if h.closing:
            ev = self._released.setdefault(h.ino, trio.Event())
            with trio.move_on_after(RELEASE_WAIT):
                await ev.wait()
        return any(w.target == task for w in self.tmp.staged.values())

    async def write(self, h: Backed, off: int, buf: bytes) -> int:
        await self.tmp.thaw(h.ino)
        done = isinstance(h, DirectWrite) and (h.committed or h.rejected)
        if done or h.ino in self.tmp.alias:
            # Also every handle opened on a tmp file before its commit, and the kernel's
            # writeback of a shared mmap of it (FUSE_WRITE with one of those handles): the
            # witness is that very inode (a hard link), so nothing may write through them.
            self.kcache.drop_cached_pages(h.ino)
            raise fuse_error(
                errno.EPERM, "refused write: this result was already committed or refused"
            )
        if h.fd < 0:
            raise fuse_error(errno.EBADF)
        if off + len(buf) > MAX_FILE_BYTES:
            raise fuse_error(errno.EFBIG)
        h.dirty = True
        if isinstance(h, DirectWrite):
            h.closing = False
        self.tmp.synced.discard(h.ino)
        return os.pwrite(h.fd, buf, off)

    async def fsync(self, h: Backed, datasync: bool) -> None:
        if h.fd >= 0:
            await self.committer.fsyncer.fsync(h.fd, datasync=datasync)
            h.dirty = False
            self.tmp.synced.add(h.ino)  # a commit of this file need not fsync it again

    async def flush(self, h: DirectWrite) -> None:
        """close(2) of a direct write: commit it now, so close reports a refusal."""
        if h.committed or h.rejected:
            return
        h.closing = True
        if writer_was_killed(h.writer_pid):
            await self._reject(h, "the writer was killed before it closed the file", recorded=False)
            raise fuse_error(errno.EIO)
        try:
            await self._commit_staged(h, final=False)
        except CommitRefused as e:
            if e.final:
                await self._reject(h, e.reason)
            raise fuse_error(e.errno) from None

    async def release(self, h: DirectWrite) -> None:
        """The last close of a direct write: commit it if no flush did, then let it go."""
        try:
            if not h.committed and not h.rejected:
                try:
                    await self._commit_staged(h, final=True)
                except CommitRefused as e:
                    await self._reject(h, e.reason)
                except OSError as e:  # e.g. a full disk: the bytes are kept, never dropped
                    await self._reject(h, f"the commit failed: {e.strerror}", recorded=False)
                    raise
        finally:  # whatever failed above, the descriptor and the staged name are let go
            if h.fd >= 0:
                os.close(h.fd)
            self.tmp.staged.pop(h.ino, None)
            released = self._released.pop(h.ino, None)
            if released is not None:
                released.set()  # a second writer waits for this (see _other_writer)

    async def _commit_staged(self, h: DirectWrite, *, final: bool) -> None:
        assert h.path is not None
        self.kcache.committing.add(h.target)
        frozen = self.tmp.freeze(h.ino)
        try:
            await self.committer.commit(
                h.path, h.target, synced=not h.dirty, source="write", final=final
            )
        finally:
            self.kcache.committing.discard(h.target)
            self.tmp.unfreeze(h.ino, frozen)
        h.committed = True
        self.tmp.alias[h.ino] = h.target
        self.tmp.staged.pop(h.ino, None)
        # Another lookup of done/REL during the write (a refused second writer, a `stat`) may
        # have left a cached miss: the name must resolve to the witness now.
        self.kcache.invalidate(h.parent, h.name)

    async def _reject(self, h: DirectWrite, reason: str, *, recorded: bool = True) -> None:
        """Keep a refused direct write under rejected/ (recorded: the committer already
        counted and journalled the refusal)."""
        assert h.path is not None
        h.rejected = True
        self.status.refused_writes += 1
        rel = self.space.rel(h.target)
        kept = await trio.to_thread.run_sync(self.store.reject, h.path, rel, reason)
        if not recorded:
            self.status.refused(f"done/{rel}", f"{reason}; bytes kept in {kept}")
        log.warning(
            "refused direct write of done/%s: %s; the task stays pending; bytes kept in %s",
            rel,
            reason,
            kept,
        )
        self.tmp.staged.pop(h.ino, None)
        self.kcache.invalidate(h.parent, h.name)
