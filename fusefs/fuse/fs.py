"""The pyfuse3 Operations: translate kernel requests into calls on the mount's services.

Handlers stay thin: name/inode decoding, a call into a service, and the errno. The services:
engine/claims.py (the claim lifecycle), writes.py over engine/commit.py (results), tmpdir.py
(tmp/ files), attrs.py (attributes), kcache.py (the kernel's caches), handles.py (open files).
See SEMANTICS.md for what each operation means to a user. All handlers run on the trio thread;
code between two awaits is atomic, so the claim path (check pending, claim) and the commit path
(check fact, commit, add fact) need no locks. Only fsync, link and reading a whole witness for
validation go to worker threads; small pread/pwrite/stat on the state directory run inline
because they hit the page cache and a thread hop would cost more than they do.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pyfuse3

from fusefs.engine.claims import ClaimNotRecorded, Claims, FleetUnavailable, LeaseLost
from fusefs.engine.commit import Committer
from fusefs.engine.status import StatusBoard
from fusefs.fuse import inodes
from fusefs.fuse.attrs import FILE_TIMEOUT, Attrs
from fusefs.fuse.boundary import RequestErrors, error_boundary
from fusefs.fuse.errors import fuse_error
from fusefs.fuse.handles import Backed, DirectWrite, Fixed, Handles, Listing
from fusefs.fuse.inodes import Kind, task_in_tile
from fusefs.fuse.kcache import KernelCache
from fusefs.fuse.tmpdir import TmpDir
from fusefs.fuse.writes import Writes
from fusefs.model.codec import TaskSpace
from fusefs.model.errors import S3ConfigError, S3Unavailable
from fusefs.model.state import MissionState, NotClaimed, NotPending, View
from fusefs.statedir.store import LocalStore

if TYPE_CHECKING:
    from fusefs.engine.sync import SyncEngine

__all__ = ["MissionFS", "fuse_error"]

log = logging.getLogger("missionfs")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


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
        """`invalidate` is off without a kernel (handler tests): no cache to invalidate."""
        super().__init__()
        self.sync = sync
        self.state = state
        self.space: TaskSpace = state.space
        self.store = store
        self.committer = committer
        self.status = status
        self.claims = claims  # the claim lifecycle (engine/claims.py)
        self.request_errors = RequestErrors(status.request_errors, status.recent_errors)
        self.attrs = Attrs(state, store, sync, time.time_ns())
        self.kcache = KernelCache(state, enabled=invalidate)
        self.handles = Handles()
        self.tmp = TmpDir(store, self.attrs)
        self.writes = Writes(state, store, committer, status, self.tmp, self.kcache, self.handles)
        self._phrase_bytes = self.kcache.phrase_bytes

    # -- attributes and lookup ----------------------------------------------------------------
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        kind, view, payload = inodes.split(inode)
        if kind is Kind.FIXED:
            return self._fixed_attr(inode)
        if kind in (Kind.ROW, Kind.TILE):
            return self.attrs.directory(inode)
        if kind is Kind.FILE:
            assert view is not None
            if payload >= self.space.size or not self._task_shown(view, payload, inode):
                raise fuse_error(errno.ENOENT)
            return self.attrs.task(view, payload)
        return self.tmp.attr(inode)

    def _task_shown(self, view: View, task: int, inode: int, *, use: bool = False) -> bool:
        """May the pending/ or claimed/ inode of `task` be used? Not once the task is done: a
        claimed/ name of it the kernel kept (kcache.py, `lingering`) answers ENOENT, except to
        an fstat through a descriptor opened while it was claimed (its attributes then last
        CLAIM_ATTR_TIMEOUT only, attrs.py); a `use` of it (open, touch) is refused."""
        if view is View.DONE:
            return True
        state = self.state
        if task in state.pending or task in state.claims:
            return True
        return not use and self.handles.holds(inode)

    def _fixed_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        """The root, the view roots, tmp/ and status (whose size is that of its JSON now)."""
        if ino == inodes.STATUS:
            size = len(self.status.render())
            return self.attrs.make(ino, stat.S_IFREG | 0o444, size, time.time_ns(), 0)
        return self.attrs.directory(ino)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        attr = await self._lookup(parent_inode, name)
        self.kcache.ref(attr.st_ino)
        return attr

    async def _lookup(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.ROOT:
            ino = inodes.ROOT_NAMES.get(name)
            if ino is None:
                raise fuse_error(errno.ENOENT)
            return self._fixed_attr(ino)
        if parent_inode == inodes.TMP_DIR:
            try:
                return self.tmp.lookup(name)
            except pyfuse3.FUSEError:
                return self.attrs.negative()  # tmp/ changes only through the mount: cache it
        if parent_inode in inodes.VIEW_OF_ROOT:
            v = inodes.VIEW_OF_ROOT[parent_inode]
            row = self.space.row_of(name.decode("utf-8", "surrogateescape"))
            if row is None or not self.state.row_reachable(v, row):
                raise fuse_error(errno.ENOENT)
            return self.attrs.directory(inodes.make(Kind.ROW, v, row))
        if kind is Kind.ROW:
            assert view is not None
            col = self.space.col_of(name.decode("utf-8", "surrogateescape"))
            if col is None or not self.state.tile_reachable(view, payload, col):
                raise fuse_error(errno.ENOENT)
            tile = payload * self.space.lon.n + col
            return self.attrs.directory(inodes.make(Kind.TILE, view, tile))
        if kind is Kind.TILE:
            assert view is not None
            task = task_in_tile(self.space, payload, name)
            known = self.state.pending if view is View.PENDING else self.state.bitmap(view)
            if task is None or task not in known:
                if view is View.DONE:
                    return self.attrs.negative()  # commits look this name up first: cache it
                raise fuse_error(errno.ENOENT)
            return self.attrs.task(view, task)
        raise fuse_error(errno.ENOTDIR if kind is not Kind.FIXED else errno.ENOENT)

    async def forget(self, inode_list: Iterable[tuple[int, int]]) -> None:
        # Kernel references to computed inodes tell the kernel cache which names may be cached;
        # aliases of committed tmp files are dropped once the kernel forgets them (tmp/ names
        # are kept while the file exists).
        alias = self.tmp.alias
        for ino, nlookup in inode_list:
            self.kcache.forget(ino, nlookup)
            if ino in alias and not self.handles.holds(ino):
                self.kcache.aliased.discard(alias.pop(ino))  # no done/ name on it any more

    # -- directories --------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        kind, _, _ = inodes.split(inode)
        if kind in (Kind.FILE, Kind.TMP) or inode == inodes.STATUS:
            raise fuse_error(errno.ENOTDIR)
        if inode == inodes.TMP_DIR:
            return self.handles.add(Listing(inode, self.tmp.names()))
        return inode

    async def releasedir(self, fh: int) -> None:
        if isinstance(self.handles.get(fh), Listing):
            self.handles.discard(fh)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        kind, view, payload = inodes.split(fh)
        if kind is Kind.TILE and view is View.PENDING and fh not in self.handles.open:
            return self._readdir_pending_tile(payload, start_id, token)
        listing = self.handles.get(fh)  # tmp/ (opendir gave a handle); else fh is the inode
        if isinstance(listing, Listing):
            entries = self._tmp_entries(listing, start_id)
        else:
            entries = self._entries(fh, start_id)
        for name, attr, next_id in entries:
            if not pyfuse3.readdir_reply(token, name, attr, next_id):
                return
            self.kcache.ref(attr.st_ino)

    def _readdir_pending_tile(self, tile: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        """The hot listing (every worker lists pending tiles): one attribute object, reused,
        since readdir_reply copies it; only inode and size differ between pending tasks."""
        sp, reply = self.space, pyfuse3.readdir_reply
        row, col = divmod(tile, sp.lon.n)
        a = self.attrs.make(0, stat.S_IFREG | 0o444, 0, self.attrs.started_ns, FILE_TIMEOUT)
        tile_size, phrase_size = sp.descriptor_size_parts(tile)
        names, base = self._phrase_bytes, tile * sp.nphr
        file_kind = inodes.make(Kind.FILE, View.PENDING, 0)
        held = self.kcache.refs_of(file_kind >> inodes.SHIFT)
        for task in self.state.tasks(View.PENDING, row, col, start):
            phrase = task - base
            ino = file_kind | task
            a.st_ino = ino
            a.st_size = size = tile_size + phrase_size[phrase]
            a.st_blocks = (size + 511) // 512
            if not reply(token, names[phrase], a, phrase + 1):
                return
            held.add(task)

    def _tmp_entries(
        self, listing: Listing, start: int
    ) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        names = listing.names
        for i in range(start, len(names)):
            try:
                attr = self.tmp.lookup(os.fsencode(names[i]))
            except pyfuse3.FUSEError:
                continue
            yield os.fsencode(names[i]), attr, i + 1

    def _entries(self, fh: int, start: int) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        kind, view, payload = inodes.split(fh)
        sp, directory = self.space, self.attrs.directory
        if fh == inodes.ROOT:
            items = list(inodes.ROOT_NAMES.items())
            for i in range(start, len(items)):
                name, ino = items[i]
                yield name, self._fixed_attr(ino), i + 1
        elif fh in inodes.VIEW_OF_ROOT:
            v = inodes.VIEW_OF_ROOT[fh]
            for row in self.state.rows(v, start):
                yield sp.lat.name(row).encode(), directory(inodes.make(Kind.ROW, v, row)), row + 1
        elif kind is Kind.ROW:
            assert view is not None
            base = payload * sp.lon.n
            for col in self.state.tiles(view, payload, start):
                ino = inodes.make(Kind.TILE, view, base + col)
                yield sp.lon.name(col).encode(), directory(ino), col + 1
        elif kind is Kind.TILE:
            assert view is not None
            row, col = divmod(payload, sp.lon.n)
            for task in self.state.tasks(view, row, col, start):
                phrase = task - payload * sp.nphr
                try:
                    attr = self.attrs.task(view, task)
                except pyfuse3.FUSEError:
                    continue
                yield self._phrase_bytes[phrase], attr, phrase + 1

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind, view, _ = inodes.split(parent_inode)
        view = inodes.VIEW_OF_ROOT.get(parent_inode, view)
        if view in (View.DONE, View.CLAIMED) and kind in (Kind.FIXED, Kind.ROW):
            try:
                await self._lookup(parent_inode, name)  # no kernel reference: EEXIST has none
            except pyfuse3.FUSEError:
                raise fuse_error(
                    errno.EACCES, f"refused mkdir {name!r}: not a tile of the mission plan"
                ) from None
            raise fuse_error(errno.EEXIST)
        raise fuse_error(errno.EPERM, f"refused mkdir {name!r}: only plan directories exist here")

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise fuse_error(errno.EPERM, f"refused rmdir {name!r}: plan directories cannot be removed")

    # -- files --------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        kind, view, payload = inodes.split(inode)
        writing = bool(flags & _WRITE_FLAGS)
        if inode == inodes.STATUS:
            if writing:
                raise fuse_error(errno.EACCES)
            fh = self.handles.add(Fixed(inode, self.status.render()))
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if kind is Kind.FILE:
            assert view is not None
            if view is View.DONE:
                return await self._open_witness(inode, payload, writing)
            if not self._task_shown(view, payload, inode, use=True):
                raise fuse_error(errno.ENOENT)
            if writing:
                # After a claim by mv, claimed/REL is the pending inode the kernel moved.
                where = "claimed" if payload in self.state.claims else view.value
                raise fuse_error(
                    errno.EPERM,
                    f"refused write to {where}/{self.space.rel(payload)}:"
                    " task descriptors are read-only; write results into done/",
                )
            return pyfuse3.FileInfo(
                fh=self.handles.add(Fixed(inode, self.space.descriptor(payload)))
            )
        if kind is Kind.TMP:
            if inode in self.tmp.alias:
                return await self._open_witness(inode, self.tmp.alias[inode], writing)
            return pyfuse3.FileInfo(fh=self.handles.add(self.tmp.open(inode, flags)))
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
        return pyfuse3.FileInfo(fh=self.handles.add(Backed(inode, fd)), direct_io=fetched)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.TMP_DIR:
            h, attr = self.tmp.create(name, mode, flags)
            return pyfuse3.FileInfo(fh=self.handles.add(h)), attr
        if kind is Kind.TILE and view is View.DONE:
            fh, attr = await self.writes.create_direct(parent_inode, payload, name, ctx.pid)
            return pyfuse3.FileInfo(fh=fh), attr
        if (
            kind is Kind.TILE and view is not None
        ):  # pending/ or claimed/: name not (or no longer) there
            raise fuse_error(
                errno.ENOENT,
                f"refused create of {name!r} in {view.value}/: tasks appear"
                " here by claiming (mv pending/REL claimed/REL), never by writing",
            )
        raise fuse_error(errno.EPERM, f"refused create of {name!r}: write results into done/")

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if isinstance(h, Fixed):
            return h.data[off : off + size]
        if not isinstance(h, Backed):
            raise fuse_error(errno.EBADF)
        return os.pread(h.fd, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if not isinstance(h, Backed):
            raise fuse_error(errno.EBADF)
        return await self.writes.write(h, off, buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        if isinstance(h, Backed):
            await self.writes.fsync(h, datasync)

    async def flush(self, fh: int) -> None:
        h = self.handles[fh]
        if isinstance(h, DirectWrite):
            await self.writes.flush(h)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh)
        if isinstance(h, DirectWrite):
            await self.writes.release(h)
        elif isinstance(h, Backed) and h.fd >= 0:
            os.close(h.fd)

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
            assert view is not None
            if not self._task_shown(view, payload, inode, use=True):
                raise fuse_error(errno.ENOENT)  # e.g. the kept name of a claim that ended
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
            await self.tmp.thaw(inode)  # a truncate waits for a running commit, like a write
        if kind is Kind.FILE or inode in self.tmp.alias:
            task = payload if kind is Kind.FILE else self.tmp.alias[inode]
            return self.attrs.check_witness_setattr(inode, task, attr, fields)
        if kind is Kind.TMP:
            h = self.handles.get(fh) if fh is not None else None
            return self.tmp.setattr(inode, attr, fields, h)
        return await self.getattr(inode)

    # -- namespace changes --------------------------------------------------------------------
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        kind, view, payload = inodes.split(parent_inode)
        if parent_inode == inodes.TMP_DIR:
            return self.tmp.unlink(name)
        if kind is Kind.TILE:
            task = task_in_tile(self.space, payload, name)
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
                return self.tmp.rename(name_old, name_new, flags)
            if k_new is Kind.TILE and v_new is View.DONE:
                return await self.writes.commit_tmp(name_old, p_new, name_new)
        if k_old is Kind.TILE and k_new is Kind.TILE and p_old == p_new and name_old == name_new:
            task = task_in_tile(self.space, p_old, name_old)
            if task is None:
                raise fuse_error(errno.ENOENT)
            # The kernel moves the name itself when the rename succeeds (kcache.kernel_rename).
            if v_old is View.PENDING and v_new is View.CLAIMED:
                with self.kcache.kernel_rename(task, View.CLAIMED):
                    return await self._claim(task, ctx)
            if v_old is View.CLAIMED and v_new is View.PENDING:
                with self.kcache.kernel_rename(task, View.PENDING):
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
