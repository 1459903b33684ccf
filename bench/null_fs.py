"""The floor of a worker's task on FUSE: pyfuse3 + trio serving a worker's claim/write/commit
with no missionfs logic.

It serves the layout a worker sees (pending/, claimed/, done/ with the mission's
{lat}/{lon}/{phrase}.csv tree, and tmp/) from dicts, and answers every request a Python worker
of bench/fleet.py makes (readdir of pending, rename to claimed/, open+read the claimed file,
create+write+close tmp/NAME, rename to done/) with the least bookkeeping that keeps the next
request right: an entry moves between two dicts on rename, a created file keeps its size. No
validation, no journal, no index, no fsync, no S3. Entry and attribute timeouts are
missionfs's (fusefs/fuse/attrs.py: 60 s for directories and task files, 1 s for tmp/ files), so
the kernel sends the same kinds of requests. Like missionfs (SEMANTICS.md), `ls pending/` and
`ls pending/LAT` list only rows and tiles that still hold a pending task (a count per row and
tile, kept on rename), so a worker's walk over pending/ makes the requests it makes on
missionfs; `--list-empty` lists every row and tile, as this floor did before. Whatever a task
costs missionfs beyond this process's CPU per task is missionfs's own work.
Mount options: `--options missionfs` mounts as missionfs does without allow_other (fsname and
subtype only; fusefs/fuse/daemon.py), so the kernel makes no permission checks of its own;
`--options pyfuse3` (the default, kept for the older numbers) adds pyfuse3.default_options
(default_permissions), which costs about 5.5 more GETATTRs a task than missionfs gets.
Usage: python bench/null_fs.py MISSION.toml MNT [--options missionfs] (stops on SIGINT/SIGTERM,
then unmounts).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
from minimal_fs import FILE_SIZE, grid_names, serve

TIMEOUT = 60.0  # attrs.py's DIR_TIMEOUT and FILE_TIMEOUT
TMP_TIMEOUT = 1.0


class NullWorkerFS(pyfuse3.Operations):
    """pending/, claimed/, done/ (each {lat}/{lon}/), tmp/; every answer a dict lookup."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self, lats: list[str], lons: list[str], files: list[str], list_empty: bool = False
    ) -> None:
        super().__init__()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self.data: dict[int, bytes] = {}
        self.requests: Counter[str] = Counter()  # FUSE requests answered, by kind
        self._next = pyfuse3.ROOT_INODE
        self._now = time.time_ns()
        dmode, fmode = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
        # pending/ and its rows list only children holding a pending task: pending tasks under
        # each pending row and tile, and the row of each pending tile.
        self.left: dict[int, int] = {}
        self.row_of: dict[int, int] = {}
        self.sparse: set[int] = set()  # the directories whose empty children are not listed
        root = self._new(dmode, 0)
        for view in (b"pending", b"claimed", b"done", b"tmp"):
            top = self._link(root, view, self._new(dmode, 0))
            if view == b"tmp":
                continue
            if view == b"pending" and not list_empty:
                self.sparse.add(top)
            for lat in lats:
                row = self._link(top, lat.encode(), self._new(dmode, 0))
                for lon in lons:
                    tile = self._link(row, lon.encode(), self._new(dmode, 0))
                    if view != b"pending":
                        continue
                    if not list_empty:
                        self.sparse.add(row)
                        self.row_of[tile] = row
                        self.left[tile] = len(files)
                        self.left[row] = self.left.get(row, 0) + len(files)
                    for name in files:
                        f = self._link(tile, name.encode(), self._new(fmode, FILE_SIZE))
                        self.data[f] = b"x" * FILE_SIZE

    def _new(self, mode: int, size: int, timeout: float = TIMEOUT) -> int:
        ino = self._next
        self._next += 1
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_size = size
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._now
        a.entry_timeout = a.attr_timeout = timeout
        self.attrs[ino] = a
        if stat.S_ISDIR(mode):
            self.children[ino] = {}
        return ino

    def _link(self, parent: int, name: bytes, ino: int) -> int:
        self.children[parent][name] = ino
        return ino

    def _child(self, parent: int, name: bytes) -> int:
        ino = self.children.get(parent, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return ino

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.requests["lookup"] += 1
        return self.attrs[self._child(parent_inode, name)]

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self.requests["getattr"] += 1
        return self.attrs[inode]

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self.requests["setattr"] += 1
        if fields.update_size:
            self.attrs[inode].st_size = attr.st_size
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.requests["opendir"] += 1
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.requests["readdir"] += 1
        entries = list(self.children[fh].items())
        if fh in self.sparse:
            entries = [(name, ino) for name, ino in entries if self.left[ino]]
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self.requests["releasedir"] += 1

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.requests["rename"] += 1
        ino = self._child(parent_inode_old, name_old)
        if name_new in self.children[parent_inode_new]:
            raise pyfuse3.FUSEError(errno.EEXIST)
        del self.children[parent_inode_old][name_old]
        self.children[parent_inode_new][name_new] = ino
        self._count(parent_inode_old, -1)
        self._count(parent_inode_new, 1)

    def _count(self, tile: int, n: int) -> None:
        """A task left (-1) or came back to (+1) the pending tile `tile` (else nothing)."""
        row = self.row_of.get(tile)
        if row is not None:
            self.left[tile] += n
            self.left[row] += n

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.requests["open"] += 1
        return pyfuse3.FileInfo(fh=inode)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.requests["create"] += 1
        ino = self._link(parent_inode, name, self._new(stat.S_IFREG | 0o644, 0, TMP_TIMEOUT))
        return pyfuse3.FileInfo(fh=ino), self.attrs[ino]

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.requests["read"] += 1
        return self.data.get(fh, b"")[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.requests["write"] += 1
        a = self.attrs[fh]
        a.st_size = max(a.st_size, off + len(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        self.requests["flush"] += 1

    async def release(self, fh: int) -> None:
        self.requests["release"] += 1

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.requests["unlink"] += 1
        self._child(parent_inode, name)
        del self.children[parent_inode][name]
        self._count(parent_inode, -1)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.requests["forget"] += 1

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="mission TOML with a [grid] table")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--count-file", type=Path, help="write the request counts here at exit")
    add_options_flag(p)
    p.add_argument("--list-empty", action="store_true", help="list empty pending rows/tiles")
    args = p.parse_args(argv)
    fs = NullWorkerFS(*grid_names(args.spec), list_empty=args.list_empty)
    try:
        serve(fs, args.mountpoint, "nullfs", mount_options(args.options))
    finally:
        if args.count_file is not None:
            args.count_file.write_text(json.dumps(dict(fs.requests)))
    return 0


def add_options_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--options",
        choices=("pyfuse3", "missionfs"),
        default="pyfuse3",
        help="mount options: pyfuse3's defaults (default_permissions) or missionfs's (none"
        " beyond fsname/subtype)",
    )


def mount_options(kind: str) -> set[str] | None:
    """The options serve() adds fsname/subtype to; None: pyfuse3.default_options."""
    return set() if kind == "missionfs" else None


if __name__ == "__main__":
    sys.exit(main())
