"""The write-path floor: a minimal pyfuse3 + trio passthrough of a directory.

Every request maps straight onto the same call on a backing directory (lookup -> lstat,
create -> open, rename -> rename, fsync -> fsync in a worker thread, as any pyfuse3 filesystem
must do it to serve several writers at once). No validation, no state, no journal, no
invalidation. The commit and fleet benchmarks run their exact worker protocols through it: what
this mount cannot reach, no pyfuse3 filesystem can, and whatever missionfs costs beyond it is
missionfs's own. Usage: python bench/passthrough_fs.py BACKING_DIR MNT
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import trio
from minimal_fs import serve

TIMEOUT = 1.0  # entries and attributes change (writes, renames): cache them briefly


@contextlib.contextmanager
def _errno() -> Iterator[None]:
    """An OSError of the backing call becomes the same errno for the kernel."""
    try:
        yield
    except OSError as e:
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None


class Passthrough(pyfuse3.Operations):
    """Inodes are the backing files' inode numbers; `paths` remembers where each one lives."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, root: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: root}
        self.root_ino = os.lstat(root).st_ino
        self.fds: dict[int, int] = {}
        self.dirs: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self.dir_paths: dict[int, str] = {}
        self._next_fh = 1

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, path: str, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        with _errno():
            st = st or os.lstat(path)
        ino = pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino
        self.paths[ino] = path
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode, a.st_nlink, a.st_size = st.st_mode, st.st_nlink, st.st_size
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_blksize, a.st_blocks = st.st_blksize, st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    def _fh(self, fd: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.fds[fh] = fd
        return fh

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attr(os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attr(self._path(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = self._fh(-1)
        self.dir_paths[fh] = self._path(inode)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Listed at the first readdir, not at opendir: every listed entry becomes a kernel
        # dentry (readdirplus), and a stale one could alias a file renamed meanwhile.
        if start_id == 0 or fh not in self.dirs:
            with os.scandir(self.dir_paths[fh]) as it:
                self.dirs[fh] = sorted(
                    (os.fsencode(e.name), self._attr(e.path, e.stat(follow_symlinks=False)))
                    for e in it
                )
        entries = self.dirs[fh]
        for i in range(start_id, len(entries)):
            name, attr = entries[i]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)
        self.fds.pop(fh, None)
        self.dir_paths.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        with _errno():
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        return pyfuse3.FileInfo(fh=self._fh(fd))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        with _errno():
            fd = os.open(path, flags | os.O_CREAT, mode & 0o777)
        return pyfuse3.FileInfo(fh=self._fh(fd)), self._attr(path, os.fstat(fd))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fds[fh], size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self.fds[fh], buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, self.fds[fh])

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        os.close(self.fds.pop(fh))

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # no RENAME_EXCHANGE in a floor
        src = os.path.join(self._path(parent_inode_old), os.fsdecode(name_old))
        dst = os.path.join(self._path(parent_inode_new), os.fsdecode(name_new))
        if flags and os.path.lexists(dst):
            raise pyfuse3.FUSEError(errno.EEXIST)
        with _errno():
            os.rename(src, dst)
        self._attr(dst)  # the moved inode now lives at dst

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with _errno():
            os.unlink(os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        s.f_bsize, s.f_frsize, s.f_blocks = st.f_bsize, st.f_frsize, st.f_blocks
        s.f_bfree, s.f_bavail, s.f_files = st.f_bfree, st.f_bavail, st.f_files
        s.f_ffree, s.f_favail, s.f_namemax = st.f_ffree, st.f_favail, st.f_namemax
        return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backing", type=Path, help="the directory to serve")
    p.add_argument("mountpoint", type=Path)
    args = p.parse_args(argv)
    # The mount options of missionfs (no default_permissions): the same kernel work per request.
    serve(Passthrough(str(args.backing.resolve())), args.mountpoint, "passthroughfs", set())
    return 0


if __name__ == "__main__":
    sys.exit(main())
