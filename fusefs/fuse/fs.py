"""The pyfuse3 Operations: translate kernel requests into calls on MissionState and LocalStore.

Handlers stay thin: name/inode decoding, a call into the state model or the store, and the
errno. See SEMANTICS.md for what each operation means to a user. All handlers run on the trio
thread; code between two awaits is atomic, so the claim path (check pending, claim) and the
commit path (check fact, commit, add fact) need no locks. Only fsync, link and reading a whole
witness for validation go to worker threads; small pread/pwrite/stat on the state directory run
inline because they hit the page cache and a thread hop would cost more than they do.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio
from cachetools import LRUCache
from pyroaring import BitMap

from fusefs.engine.claims import ClaimNotRecorded, Claims, FleetUnavailable, LeaseLost
from fusefs.engine.commit import CommitRefused, Committer
from fusefs.engine.status import StatusBoard
from fusefs.fuse import inodes
from fusefs.fuse.boundary import RequestErrors, error_boundary
from fusefs.fuse.inodes import VIEWS, Kind
from fusefs.model.codec import TaskSpace
from fusefs.model.errors import S3ConfigError, S3Unavailable
from fusefs.model.state import MissionState, NotClaimed, NotPending, View, groups
from fusefs.statedir.ratelog import log_coalesced
from fusefs.statedir.store import LocalStore

if TYPE_CHECKING:
    from fusefs.engine.sync import SyncEngine

log = logging.getLogger("missionfs")

DIR_TIMEOUT = 60.0
FILE_TIMEOUT = 60.0
WITNESS_TIMEOUT = 300.0
TMP_TIMEOUT = 1.0
RELEASE_WAIT = 1.0  # seconds a new direct writer waits for a closed one's release
BULK_INVALIDATION = 256  # above this many changed tasks, invalidate rows, not names
DIR_MODE = stat.S_IFDIR | 0o755
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
# Flags of the caller's open() that must not reach the backing file: O_DIRECT would make every
# unaligned pread/pwrite of the daemon's own buffers fail with EINVAL (the kernel already gives
# the caller direct I/O semantics on the FUSE side).
_BACKING_DROP = os.O_CREAT | os.O_EXCL | os.O_DIRECT
# Largest file offset accepted in tmp/ and direct writes: ext4's own limit with 4 KiB blocks,
# so a huge truncate or write gets EFBIG whatever filesystem holds the state directory.
MAX_FILE_BYTES = 2**44


def fuse_error(code: int, message: str | None = None) -> pyfuse3.FUSEError:
    if message:  # a retry loop repeats it: said once, then counted (ratelog.py)
        log_coalesced(log, logging.WARNING, f"{message} ({errno.errorcode.get(code, code)})")
    return pyfuse3.FUSEError(code)


@dataclass
class Handle:
    """An open file: either fixed bytes (descriptors, status) or a real file descriptor."""

    ino: int
    data: bytes | None = None
    fd: int = -1
    path: Path | None = None
    target: int | None = None  # task of a direct write into done/
    writer_pid: int = 0
    dirty: bool = False
    committed: bool = False
    rejected: bool = False
    closing: bool = False  # a direct write whose last request was a close (flush)
    parent: int = 0
    name: bytes = b""


@error_boundary  # every handler: an unexpected exception becomes an errno (boundary.py)
class MissionFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        state: MissionState,
        store: LocalStore,
        committer: Committer,
        status: StatusBoard,
        claims: Claims,
        sync: SyncEngine | None = None,
        *,
        invalidate: bool = True,
    ) -> None:
        super().__init__()
        self.sync = sync
        self.state = state
        self.space: TaskSpace = state.space
        self.store = store
        self.committer = committer
        self.status = status
        self.claims = claims  # the claim lifecycle (engine/claims.py)
        self.request_errors = RequestErrors(status.request_errors, status.recent_errors)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started_ns = time.time_ns()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._tmp_ino: dict[str, int] = {}  # tmp/ name -> inode
        self._tmp_name: dict[int, str] = {}
        self._staged: dict[int, Handle] = {}  # inode of a direct write in progress
        self._alias: dict[int, int] = {}  # tmp/staged inode committed -> task
        self._synced: set[int] = set()  # tmp inodes fsync'd since their last write
        # Listings of pending/ are served on every `ls`: reuse the attribute objects.
        self._pending_attrs: LRUCache[int, pyfuse3.EntryAttributes] = LRUCache(maxsize=1 << 16)
        self._next_tmp = 1
        self._dir_lists: dict[int, list[str]] = {}
        self.invalidate = invalidate  # off in handler tests without a mount
        # Computed inodes the kernel holds (lookup count): only their names can be cached.
        # One bitmap of payloads per inode kind code: a `find` over a national mission leaves
        # millions of inodes in the kernel, a dict of counts would cost ~100 bytes each. The
        # kernel forgets an inode with its whole lookup count at once (partial forgets happen
        # only on its allocation-failure paths), so membership is enough.
        self._kernel_refs: dict[int, BitMap] = {}
        # Tasks being committed through this mount: the kernel itself turns done/REL positive.
        self._committing: set[int] = set()
        # tmp/staged inodes whose commit is running: writes and truncates through any handle
        # wait for it (the bytes hashed must be the bytes linked), then fail if it committed.
        self._frozen: dict[int, trio.Event] = {}
        self._dropping: set[int] = set()  # inodes whose cached pages are being dropped
        self._released: dict[int, trio.Event] = {}  # staged inode -> set at its release
        self._phrase_bytes = [n.encode("utf-8", "surrogatepass") for n in state.space.phrase_names]
        state.subscribe(self._on_change)

    # -- attributes ---------------------------------------------------------------------------
    def _attr(
        self, ino: int, mode: int, size: int, mtime_ns: int, timeout: float
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
        a.attr_timeout = timeout
        return a

    def _dir_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        return self._attr(ino, DIR_MODE, 0, self.started_ns, DIR_TIMEOUT)

    def _task_attr(self, view: View, task: int) -> pyfuse3.EntryAttributes:
        ino = inodes.make(Kind.FILE, view, task)
        if view is View.DONE:
            return self._witness_attr(ino, task)
        claim = self.state.claims.get(task)
        if claim is not None:
            mtime = int(claim.claimed_at * 1e9)
            return self._attr(
                ino, stat.S_IFREG | 0o644, self.space.descriptor_size(task), mtime, FILE_TIMEOUT
            )
        cached = self._pending_attrs.get(ino)  # a pending descriptor's attributes never change
        if cached is None:
            cached = self._attr(
                ino,
                stat.S_IFREG | 0o444,
                self.space.descriptor_size(task),
                self.started_ns,
                FILE_TIMEOUT,
            )
            self._pending_attrs[ino] = cached
        return cached

    def _witness_attr(self, ino: int, task: int) -> pyfuse3.EntryAttributes:
        try:
            st = os.stat(self.store.witness_path(self.space.rel(task)))
        except FileNotFoundError:
            if self.sync is not None and task in self.sync.remote:
                # Remote only: the size the bucket listed (0 until a HEAD of an old manifest's
                # witness tells it; never asked here), fetched on first read (see open).
                size = self.sync.sizes.get(task) or 0
                mtime = self.sync.remote_mtime_ns
                return self._attr(ino, stat.S_IFREG | 0o444, size, mtime, TMP_TIMEOUT)
            raise fuse_error(errno.ENOENT) from None
        return self._attr(ino, stat.S_IFREG | 0o444, st.st_size, st.st_mtime_ns, WITNESS_TIMEOUT)

    def _real_attr(self, ino: int, path: Path, fd: int = -1) -> pyfuse3.EntryAttributes:
        try:
            st = os.fstat(fd) if fd >= 0 else os.lstat(path)
        except FileNotFoundError:
            raise fuse_error(errno.ENOENT) from None
        a = self._attr(
            ino, stat.S_IFREG | (st.st_mode & 0o777), st.st_size, st.st_mtime_ns, TMP_TIMEOUT
        )
        a.st_atime_ns = st.st_atime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def _staged_attr(self, ino: int, h: Handle) -> pyfuse3.EntryAttributes:
        # Never cached: the name must resolve afresh once the write is committed or refused.
        a = self._real_attr(ino, h.path or Path(), h.fd)
        a.entry_timeout = a.attr_timeout = 0
        return a

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        kind, view, payload = inodes.split(inode)
        if kind is Kind.FIXED:
            return self._fixed_attr(inode)
        if kind in (Kind.ROW, Kind.TILE):
            return self._dir_attr(inode)
        if kind is Kind.FILE:
            assert view is not None
            if payload >= self.space.size:
                raise fuse_error(errno.ENOENT)
            return self._task_attr(view, payload)
        return self._tmp_attr(inode)

    def _tmp_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        task = self._alias.get(inode)
        if task is not None:
            return self._witness_attr(inode, task)
        staged = self._staged.get(inode)
        if staged is not None:
            return self._staged_attr(inode, staged)
        name = self._tmp_name.get(inode)
        if name is None:
            raise fuse_error(errno.ENOENT)
        return self._real_attr(inode, self.store.tmp / name)

    # -- lookup -------------------------------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        attr = await self._lookup(parent_inode, name)
        self._ref(attr.st_ino)
        return attr

    def _ref(self, ino: int) -> None:
        """The kernel took a reference to computed inode `ino` (a lookup or a listed entry)."""
        k = ino >> inodes.SHIFT
        if 0 < k < Kind.TMP:
            self._refs_of(k).add(ino & inodes.MASK)

    def _refs_of(self, k: int) -> BitMap:
        bm = self._kernel_refs.get(k)
        if bm is None:
            bm = self._kernel_refs[k] = BitMap()
        return bm

    def _held(self, ino: int) -> bool:
        """May the kernel hold a name of computed inode `ino`?"""
        bm = self._kernel_refs.get(ino >> inodes.SHIFT)
        return bm is not None and (ino & inodes.MASK) in bm

    async def _lookup(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.ROOT:
            ino = inodes.ROOT_NAMES.get(name)
            if ino is None:
                raise fuse_error(errno.ENOENT)
            return self._fixed_attr(ino)
        if parent_inode == inodes.TMP_DIR:
            try:
                return self._tmp_lookup(name)
            except pyfuse3.FUSEError:
                return self._negative()  # tmp/ changes only through the mount: cache the miss
        if parent_inode in inodes.VIEW_OF_ROOT:
            v = inodes.VIEW_OF_ROOT[parent_inode]
            row = self.space.row_of(name.decode("utf-8", "surrogateescape"))
            if row is None or not self.state.row_reachable(v, row):
                raise fuse_error(errno.ENOENT)
            return self._dir_attr(inodes.make(Kind.ROW, v, row))
        if kind is Kind.ROW:
            assert view is not None
            col = self.space.col_of(name.decode("utf-8", "surrogateescape"))
            if col is None or not self.state.tile_reachable(view, payload, col):
                raise fuse_error(errno.ENOENT)
            return self._dir_attr(inodes.make(Kind.TILE, view, payload * self.space.lon.n + col))
        if kind is Kind.TILE:
            assert view is not None
            task = self._task_in_tile(payload, name)
            known = self.state.pending if view is View.PENDING else self.state.bitmap(view)
            if task is None or task not in known:
                if view is View.DONE:
                    return self._negative()  # commits look this name up first: cache the miss
                raise fuse_error(errno.ENOENT)
            return self._task_attr(view, task)
        raise fuse_error(errno.ENOTDIR if kind is not Kind.FIXED else errno.ENOENT)

    def _task_in_tile(self, tile: int, name: bytes) -> int | None:
        phrase = self.space.phrase_of(name.decode("utf-8", "surrogateescape"))
        if phrase is None:
            return None
        return tile * self.space.nphr + phrase

    def _negative(self) -> pyfuse3.EntryAttributes:
        """A cached "no such name" (inode 0); every change of a task invalidates its names."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = DIR_TIMEOUT
        return a

    def _tmp_lookup(self, name: bytes) -> pyfuse3.EntryAttributes:
        fname = os.fsdecode(name)
        path = self.store.tmp / fname
        if not os.path.isfile(path) or os.path.islink(path):
            raise fuse_error(errno.ENOENT)
        return self._real_attr(self._tmp_inode(fname), path)

    def _tmp_inode(self, fname: str) -> int:
        ino = self._tmp_ino.get(fname)
        if ino is None:
            ino = inodes.make(Kind.TMP, None, self._next_tmp)
            self._next_tmp += 1
            self._tmp_ino[fname] = ino
            self._tmp_name[ino] = fname
        return ino

    async def forget(self, inode_list: Iterable[tuple[int, int]]) -> None:
        # Kernel references to computed inodes tell _on_change which names may be cached;
        # aliases of committed tmp files are dropped once the kernel forgets them (tmp/ names
        # are kept while the file exists).
        refs = self._kernel_refs
        for ino, _ in inode_list:
            bm = refs.get(ino >> inodes.SHIFT)
            if bm is not None:
                bm.discard(ino & inodes.MASK)
            if ino in self._alias and not any(h.ino == ino for h in self._handles.values()):
                del self._alias[ino]

    # -- directories --------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        kind, _, _ = inodes.split(inode)
        if kind in (Kind.FILE, Kind.TMP) or inode == inodes.STATUS:
            raise fuse_error(errno.ENOTDIR)
        if inode == inodes.TMP_DIR:
            fh = self._new_fh(Handle(inode))
            self._dir_lists[fh] = sorted(os.listdir(self.store.tmp))
            return fh
        return inode

    async def releasedir(self, fh: int) -> None:
        if self._dir_lists.pop(fh, None) is not None:
            self._handles.pop(fh, None)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        kind, view, payload = inodes.split(fh)
        if kind is Kind.TILE and view is View.PENDING and fh not in self._dir_lists:
            return self._readdir_pending_tile(payload, start_id, token)
        for name, attr, next_id in self._entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, attr, next_id):
                return
            self._ref(attr.st_ino)

    def _readdir_pending_tile(self, tile: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        """The hot listing (every worker lists pending tiles): one attribute object, reused,
        since readdir_reply copies it; only inode and size differ between pending tasks."""
        sp, reply = self.space, pyfuse3.readdir_reply
        row, col = divmod(tile, sp.lon.n)
        a = self._attr(0, stat.S_IFREG | 0o444, 0, self.started_ns, FILE_TIMEOUT)
        tile_size, phrase_size = sp.descriptor_size_parts(tile)
        names, base = self._phrase_bytes, tile * sp.nphr
        file_kind = inodes.make(Kind.FILE, View.PENDING, 0)
        held = self._refs_of(file_kind >> inodes.SHIFT)
        for task in self.state.tasks(View.PENDING, row, col, start):
            phrase = task - base
            ino = file_kind | task
            a.st_ino = ino
            a.st_size = size = tile_size + phrase_size[phrase]
            a.st_blocks = (size + 511) // 512
            if not reply(token, names[phrase], a, phrase + 1):
                return
            held.add(task)

    def _entries(self, fh: int, start: int) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        if fh in self._dir_lists:
            names = self._dir_lists[fh]
            for i in range(start, len(names)):
                try:
                    attr = self._tmp_lookup(os.fsencode(names[i]))
                except pyfuse3.FUSEError:
                    continue
                yield os.fsencode(names[i]), attr, i + 1
            return
        kind, view, payload = inodes.split(fh)
        sp = self.space
        if fh == inodes.ROOT:
            items = list(inodes.ROOT_NAMES.items())
            for i in range(start, len(items)):
                name, ino = items[i]
                yield name, self._fixed_attr(ino), i + 1
        elif fh in inodes.VIEW_OF_ROOT:
            v = inodes.VIEW_OF_ROOT[fh]
            for row in self.state.rows(v, start):
                yield (
                    sp.lat.name(row).encode(),
                    self._dir_attr(inodes.make(Kind.ROW, v, row)),
                    row + 1,
                )
        elif kind is Kind.ROW:
            assert view is not None
            base = payload * sp.lon.n
            for col in self.state.tiles(view, payload, start):
                yield (
                    sp.lon.name(col).encode(),
                    self._dir_attr(inodes.make(Kind.TILE, view, base + col)),
                    col + 1,
                )
        elif kind is Kind.TILE:
            assert view is not None
            row, col = divmod(payload, sp.lon.n)
            for task in self.state.tasks(view, row, col, start):
                phrase = task - payload * sp.nphr
                try:
                    attr = self._task_attr(view, task)
                except pyfuse3.FUSEError:
                    continue
                yield self._phrase_bytes[phrase], attr, phrase + 1

    def _fixed_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        """The root, the view roots, tmp/ and status (whose size is that of its JSON now)."""
        if ino == inodes.STATUS:
            return self._attr(
                ino, stat.S_IFREG | 0o444, len(self.status.render()), time.time_ns(), 0
            )
        return self._dir_attr(ino)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind, view, _ = inodes.split(parent_inode)
        view = inodes.VIEW_OF_ROOT.get(parent_inode, view)
        if view in (View.DONE, View.CLAIMED) and kind in (Kind.FIXED, Kind.ROW):
            try:
                await self.lookup(parent_inode, name, ctx)
            except pyfuse3.FUSEError:
                raise fuse_error(
                    errno.EACCES, f"refused mkdir {name!r}: not a tile of the mission plan"
                ) from None
            raise fuse_error(errno.EEXIST)
        raise fuse_error(errno.EPERM, f"refused mkdir {name!r}: only plan directories exist here")

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise fuse_error(errno.EPERM, f"refused rmdir {name!r}: plan directories cannot be removed")

    # -- files --------------------------------------------------------------------------------
    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        kind, view, payload = inodes.split(inode)
        writing = bool(flags & _WRITE_FLAGS)
        if inode == inodes.STATUS:
            if writing:
                raise fuse_error(errno.EACCES)
            return pyfuse3.FileInfo(
                fh=self._new_fh(Handle(inode, data=self.status.render())), direct_io=True
            )
        if kind is Kind.FILE:
            assert view is not None
            if view is View.DONE:
                return await self._open_witness(inode, payload, writing)
            if writing:
                raise fuse_error(
                    errno.EPERM,
                    f"refused write to {view.value}/{self.space.rel(payload)}:"
                    " task descriptors are read-only; write results into done/",
                )
            return pyfuse3.FileInfo(
                fh=self._new_fh(Handle(inode, data=self.space.descriptor(payload)))
            )
        if kind is Kind.TMP:
            if inode in self._alias:
                return await self._open_witness(inode, self._alias[inode], writing)
            if inode in self._staged:
                raise fuse_error(errno.EBUSY, "refused open: another writer is writing this task")
            name = self._tmp_name.get(inode)
            if name is None:
                raise fuse_error(errno.ENOENT)
            fd = os.open(self.store.tmp / name, flags & ~_BACKING_DROP)
            return pyfuse3.FileInfo(
                fh=self._new_fh(Handle(inode, fd=fd, path=self.store.tmp / name))
            )
        raise fuse_error(errno.EISDIR)

    async def _open_witness(self, inode: int, task: int, writing: bool) -> pyfuse3.FileInfo:
        rel = self.space.rel(task)
        if writing:
            raise fuse_error(
                errno.EPERM, f"refused overwrite of done/{rel}: a witness is immutable"
            )
        fetched = False
        if self.sync is not None and task in self.sync.remote and task not in self.committer.local:
            try:
                await self.sync.fetch(task)  # remote only: fetch once, keep it locally
            except (S3Unavailable, S3ConfigError) as e:
                raise fuse_error(errno.EIO, f"cannot read done/{rel} from S3: {e}") from None
            fetched = True
        try:
            fd = os.open(self.store.witness_path(rel), os.O_RDONLY)
        except FileNotFoundError:
            raise fuse_error(errno.ENOENT) from None
        # No keep_cache: a lost race may replace the content (see sync.SyncEngine._resolve).
        return pyfuse3.FileInfo(fh=self._new_fh(Handle(inode, fd=fd)), direct_io=fetched)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.TMP_DIR:
            fname = os.fsdecode(name)
            path = self.store.tmp / fname
            fd = os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode & 0o777)
            ino = self._tmp_inode(fname)
            fh = self._new_fh(Handle(ino, fd=fd, path=path))
            return pyfuse3.FileInfo(fh=fh), self._real_attr(ino, path, fd)
        if kind is Kind.TILE and view is View.DONE:
            task = self._writable_task(payload, name)
            if await self._other_writer(task):
                raise fuse_error(
                    errno.EBUSY,
                    f"refused second writer of done/{self.space.rel(task)}:"
                    " another process is writing this task",
                )
            task = self._writable_task(payload, name)  # it may have been committed meanwhile
            path = self.store.staging / f"{os.getpid()}.{self._next_fh}.{task}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            ino = inodes.make(Kind.TMP, None, self._next_tmp)
            self._next_tmp += 1
            h = Handle(
                ino,
                fd=fd,
                path=path,
                target=task,
                writer_pid=ctx.pid,
                parent=parent_inode,
                name=name,
            )
            self._staged[ino] = h
            return pyfuse3.FileInfo(fh=self._new_fh(h)), self._staged_attr(ino, h)
        if (
            kind is Kind.TILE and view is not None
        ):  # pending/ or claimed/: name not (or no longer) there
            raise fuse_error(
                errno.ENOENT,
                f"refused create of {name!r} in {view.value}/: tasks appear"
                " here by claiming (mv pending/REL claimed/REL), never by writing",
            )
        raise fuse_error(errno.EPERM, f"refused create of {name!r}: write results into done/")

    async def _other_writer(self, task: int) -> bool:
        """Is a direct write of `task` in progress? One that was just closed is given up to
        RELEASE_WAIT seconds to end: the kernel sends the release of a file after close()
        returned, so `printf bad > done/REL; printf good > done/REL` would find the first
        one still open (refused, kept for more writes until its release)."""
        h = next((w for w in self._staged.values() if w.target == task), None)
        if h is None:
            return False
        if h.closing:
            ev = self._released.setdefault(h.ino, trio.Event())
            with trio.move_on_after(RELEASE_WAIT):
                await ev.wait()
        return any(w.target == task for w in self._staged.values())

    def _writable_task(self, tile: int, name: bytes) -> int:
        task = self._task_in_tile(tile, name)
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

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles[fh]
        if h.data is not None:
            return h.data[off : off + size]
        return os.pread(h.fd, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        await self._thaw(h.ino)
        if h.committed or h.rejected or h.ino in self._alias:
            # Also every handle opened on a tmp file before its commit, and the kernel's
            # writeback of a shared mmap of it (FUSE_WRITE with one of those handles): the
            # witness is that very inode (a hard link), so nothing may write through them.
            self._drop_cached_pages(h.ino)
            raise fuse_error(
                errno.EPERM, "refused write: this result was already committed or refused"
            )
        if h.fd < 0:
            raise fuse_error(errno.EBADF)
        if off + len(buf) > MAX_FILE_BYTES:
            raise fuse_error(errno.EFBIG)
        h.dirty = True
        h.closing = False
        self._synced.discard(h.ino)
        return os.pwrite(h.fd, buf, off)

    async def _thaw(self, ino: int) -> None:
        """Wait while a commit of inode `ino` runs (see _frozen)."""
        ev = self._frozen.get(ino)
        while ev is not None:
            await ev.wait()
            ev = self._frozen.get(ino)

    def _freeze(self, ino: int | None) -> trio.Event | None:
        if ino is None:
            return None
        ev = self._frozen[ino] = trio.Event()
        return ev

    def _unfreeze(self, ino: int | None, ev: trio.Event | None) -> None:
        if ino is not None and ev is not None and self._frozen.get(ino) is ev:
            del self._frozen[ino]
            ev.set()

    def _drop_cached_pages(self, ino: int) -> None:
        """After refusing a write to a committed inode, drop the kernel's pages of it: a refused
        mmap writeback leaves the modified page cached (clean), and a reader of that inode
        would see bytes the witness does not hold. Done in a thread once this reply is sent
        (the kernel waits for the reply before it lets the invalidation through)."""
        if not self.invalidate or ino in self._dropping:
            return  # one at a time per inode, however fast a hostile mapping writes
        self._dropping.add(ino)

        async def later() -> None:  # a system task: nothing may escape it
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
            except Exception as e:  # only a stale cache is at stake
                log.debug("cached pages of inode %d not dropped: %s", ino, e)
            finally:
                self._dropping.discard(ino)

        trio.lowlevel.spawn_system_task(later)

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles[fh]
        if h.fd >= 0:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, h.fd)
            h.dirty = False
            self._synced.add(h.ino)  # a commit of this file need not fsync it again

    async def flush(self, fh: int) -> None:
        h = self._handles[fh]
        if h.target is None or h.committed or h.rejected:
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

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh)
        try:
            if h.target is not None and not h.committed and not h.rejected:
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
            if h.target is not None:
                self._staged.pop(h.ino, None)
                released = self._released.pop(h.ino, None)
                if released is not None:
                    released.set()  # a second writer waits for this (see _other_writer)

    async def _commit_staged(self, h: Handle, *, final: bool) -> None:
        assert h.target is not None and h.path is not None
        self._committing.add(h.target)
        frozen = self._freeze(h.ino)
        try:
            await self.committer.commit(
                h.path, h.target, synced=not h.dirty, source="write", final=final
            )
        finally:
            self._committing.discard(h.target)
            self._unfreeze(h.ino, frozen)
        h.committed = True
        self._alias[h.ino] = h.target
        self._staged.pop(h.ino, None)
        # Another lookup of done/REL during the write (a refused second writer, a `stat`) may
        # have left a cached miss: the name must resolve to the witness now.
        self._invalidate(h.parent, h.name)

    async def _reject(self, h: Handle, reason: str, *, recorded: bool = True) -> None:
        """Keep a refused direct write under rejected/ (recorded: the committer already
        counted and journalled the refusal)."""
        assert h.target is not None and h.path is not None
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
        self._staged.pop(h.ino, None)
        self._invalidate(h.parent, h.name)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        kind, view, payload = inodes.split(inode)
        if kind is Kind.FILE and view is not View.DONE:
            if payload in self.state.claims and not fields.update_size:
                try:
                    await self.claims.renew(payload)  # `touch claimed/REL`
                except LeaseLost as e:
                    raise fuse_error(errno.ENOENT, str(e)) from None
            elif fields.update_size or payload not in self.state.claims:
                raise fuse_error(
                    errno.EPERM,
                    f"refused change of {self.space.rel(payload)}:"
                    " only `touch claimed/REL` (renew a lease) is allowed",
                )
            return await self.getattr(inode)
        if kind is Kind.TMP:
            await self._thaw(inode)  # a truncate waits for a running commit, like a write
        if kind is Kind.FILE or inode in self._alias:
            task = payload if kind is Kind.FILE else self._alias[inode]
            return self._setattr_witness(inode, task, attr, fields)
        if kind is Kind.TMP:
            return self._setattr_real(inode, attr, fields, fh)
        return await self.getattr(inode)

    def _setattr_witness(
        self, inode: int, task: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
    ) -> pyfuse3.EntryAttributes:
        """A witness never changes, but asking for what it already is succeeds: `install -m 644`
        and `rsync --inplace` chmod the file they just wrote (and committed at close). Write
        bits are ignored in the comparison (a witness is never writable, whatever its bits
        say); any real change of mode, owner, times or size is refused with EPERM."""
        cur = self._witness_attr(inode, task)
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

    def _setattr_real(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
    ) -> pyfuse3.EntryAttributes:
        h = self._handles.get(fh) if fh is not None else None
        staged = self._staged.get(inode)
        fd = h.fd if h is not None else (staged.fd if staged is not None else -1)
        path = staged.path if staged is not None else self.store.tmp / self._tmp_name.get(inode, "")
        if path is None or (fd < 0 and inode not in self._tmp_name):
            raise fuse_error(errno.ENOENT)
        target: int | str | Path = fd if fd >= 0 else path
        if fields.update_size:
            if attr.st_size > MAX_FILE_BYTES:
                raise fuse_error(errno.EFBIG)
            os.truncate(target, attr.st_size)
            self._synced.discard(inode)
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.stat(target)
            at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(target, ns=(at, mt))
        return self._real_attr(inode, path, fd)

    # -- namespace changes --------------------------------------------------------------------
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.TMP_DIR:
            fname = os.fsdecode(name)
            try:
                os.unlink(self.store.tmp / fname)
            except FileNotFoundError:
                raise fuse_error(errno.ENOENT) from None
            ino = self._tmp_ino.pop(fname, None)
            if ino is not None:
                self._tmp_name.pop(ino, None)
                self._synced.discard(ino)
            return
        if kind is Kind.TILE:
            task = self._task_in_tile(payload, name)
            if task is None:
                raise fuse_error(errno.ENOENT)
            rel = self.space.rel(task)
            if view is View.CLAIMED:
                return await self._release(task)
            if view is View.DONE and task in self.state.fact:
                self.status.refused(f"done/{rel}", "delete of a witness")
                raise fuse_error(
                    errno.EPERM, f"refused delete of done/{rel}: a witness is immutable"
                )
            if view is View.PENDING and task in self.state.pending:
                raise fuse_error(errno.EPERM, f"refused delete of pending/{rel}: claim it with mv")
            raise fuse_error(errno.ENOENT)
        raise fuse_error(errno.EPERM, f"refused delete of {name!r}")

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise fuse_error(errno.EINVAL, "refused rename: RENAME_EXCHANGE is not supported")
        k_old, v_old, p_old = inodes.split(parent_inode_old)
        k_new, v_new, p_new = inodes.split(parent_inode_new)
        if parent_inode_old == inodes.TMP_DIR:
            if parent_inode_new == inodes.TMP_DIR:
                return self._rename_tmp(name_old, name_new, flags)
            if k_new is Kind.TILE and v_new is View.DONE:
                return await self._commit_tmp(name_old, p_new, name_new)
        if k_old is Kind.TILE and k_new is Kind.TILE and p_old == p_new and name_old == name_new:
            task = self._task_in_tile(p_old, name_old)
            if task is None:
                raise fuse_error(errno.ENOENT)
            if v_old is View.PENDING and v_new is View.CLAIMED:
                return await self._claim(task, ctx)
            if v_old is View.CLAIMED and v_new is View.PENDING:
                return await self._release(task)
        if v_old is View.DONE:
            raise fuse_error(
                errno.EPERM, f"refused rename of done/…/{name_old!r}: a witness is immutable"
            )
        raise fuse_error(
            errno.EPERM,
            f"refused rename {name_old!r} -> {name_new!r}: claim with"
            " `mv pending/REL claimed/REL`, commit with `mv tmp/NAME done/REL`",
        )

    async def _claim(self, task: int, ctx: pyfuse3.RequestContext) -> None:
        """`mv pending/REL claimed/REL` (claims.py; a refused claim leaves the task pending)."""
        try:
            await self.claims.claim(task, ctx.pid)
        except NotPending:
            raise fuse_error(errno.ENOENT) from None
        except FleetUnavailable as e:
            raise fuse_error(errno.EAGAIN, str(e)) from None
        except ClaimNotRecorded as e:
            raise fuse_error(e.error.errno or errno.EIO, str(e)) from None

    async def _release(self, task: int) -> None:
        """`rm claimed/REL` or `mv claimed/REL pending/REL`: give the task back."""
        try:
            await self.claims.release(task)
        except NotClaimed:
            raise fuse_error(errno.ENOENT) from None

    def _rename_tmp(self, old: bytes, new: bytes, flags: int) -> None:
        src, dst = os.fsdecode(old), os.fsdecode(new)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self.store.tmp / dst):
            raise fuse_error(errno.EEXIST)
        os.rename(self.store.tmp / src, self.store.tmp / dst)
        ino = self._tmp_ino.pop(src, None)
        old_ino = self._tmp_ino.pop(dst, None)
        if old_ino is not None:
            self._tmp_name.pop(old_ino, None)
        if ino is not None:
            self._tmp_ino[dst] = ino
            self._tmp_name[ino] = dst

    async def _commit_tmp(self, name_old: bytes, tile: int, name_new: bytes) -> None:
        fname = os.fsdecode(name_old)
        task = self._writable_task(tile, name_new)
        path = self.store.tmp / fname
        if not os.path.isfile(path):
            raise fuse_error(errno.ENOENT)
        ino = self._tmp_ino.get(fname)
        synced = ino is not None and ino in self._synced
        self._committing.add(task)
        frozen = self._freeze(ino)
        try:
            await self.committer.commit(path, task, synced=synced, source="rename")
        except CommitRefused as e:
            raise fuse_error(e.errno) from None
        finally:
            self._committing.discard(task)
            self._unfreeze(ino, frozen)  # waiters resume at our next await: after the alias
        # Handles opened before the commit now write to the witness's inode: write() and
        # setattr refuse them through the alias.
        ino = self._tmp_ino.pop(fname, None)
        if ino is not None:
            self._tmp_name.pop(ino, None)
            self._synced.discard(ino)
            self._alias[ino] = task

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.store.root)
        s = pyfuse3.StatvfsData()
        for f in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(s, f, getattr(st, f))
        return s

    # -- kernel cache -------------------------------------------------------------------------
    def _on_change(self, tasks: Iterable[int]) -> None:
        """A task changed view: drop every cached name of it so no listing or lookup is stale."""
        if not self.invalidate:
            return
        sp = self.space
        if isinstance(tasks, BitMap) and len(tasks) > BULK_INVALIDATION:
            # Bulk change (reconcile, remote facts): drop whole rows, which drops their subtrees.
            for row in groups(tasks, 0, sp.size, sp.row_size, 0):
                name = sp.lat.name(row).encode()
                for v in (View.PENDING, View.CLAIMED, View.DONE):
                    self._invalidate(inodes.VIEW_ROOTS[v], name)
            return
        # Only names the kernel may hold are invalidated: a positive name is backed by a
        # kernel reference to one of the task's inodes (a claim by mv moves the pending one
        # under claimed/); done/ names may also be cached misses, except for a commit made
        # through this mount, where the kernel turned the name positive itself.
        held = self._held
        tiles_seen: set[int] = set()
        for task in tasks:
            tile, phrase = divmod(task, sp.nphr)
            name = self._phrase_bytes[phrase]
            if task not in self._committing:
                self._invalidate(inodes.make(Kind.TILE, View.DONE, tile), name)
            if any(held(inodes.make(Kind.FILE, v, task)) for v in VIEWS):
                for v in VIEWS:
                    self._invalidate(inodes.make(Kind.TILE, v, tile), name)
            if tile not in tiles_seen:
                tiles_seen.add(tile)
                row, col = divmod(tile, sp.lon.n)
                if self.state.tile_has(View.PENDING, row, col):
                    continue
                if held(inodes.make(Kind.TILE, View.PENDING, tile)):
                    self._invalidate(
                        inodes.make(Kind.ROW, View.PENDING, row), sp.lon.name(col).encode()
                    )
                row_ino = inodes.make(Kind.ROW, View.PENDING, row)
                if held(row_ino) and not self.state.row_has(View.PENDING, row):
                    self._invalidate(inodes.VIEW_ROOTS[View.PENDING], sp.lat.name(row).encode())

    def _invalidate(self, parent: int, name: bytes) -> None:
        if self.invalidate and parent:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


def writer_was_killed(pid: int) -> bool:
    """True if process `pid` is exiting because of a signal (its close is not a real end)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    fields = raw[raw.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); exit_code is field 52 (Linux >= 3.5).
    if len(fields) < 50:
        return False
    return (int(fields[49]) & 0x7F) != 0
