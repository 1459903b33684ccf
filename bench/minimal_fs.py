"""The "Python FUSE floor": a minimal pyfuse3 + trio filesystem serving a static in-memory tree.

It serves the same shape as a missionfs mount's pending view (pending/{lat}/{lon}/{phrase}.csv,
same names, same files per directory, ~200-byte files) from a dict built before mounting, with
prebuilt EntryAttributes and 60 s entry/attr timeouts. Whatever missionfs costs beyond this is
missionfs's own overhead, not pyfuse3's. Usage: python bench/minimal_fs.py MISSION.toml MNT
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pyfuse3
import trio

TIMEOUT = 60.0
FILE_SIZE = 200
_ESCAPED = {"/", "%", "\0", "\x7f"} | {chr(c) for c in range(1, 32)}


def format_scaled(value: int, scale: int) -> str:
    sign, mag = ("-", -value) if value < 0 else ("", value)
    if scale == 0:
        return f"{sign}{mag}"
    unit = 10**scale
    return f"{sign}{mag // unit}.{mag % unit:0{scale}d}"


def phrase_filename(phrase: str) -> str:
    out = [f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in phrase]
    if out and out[0] == ".":
        out[0] = "%2E"
    return "".join(out) + ".csv"


def grid_names(spec: Path) -> tuple[list[str], list[str], list[str]]:
    """Row names, column names and file names of a [grid] mission, formatted like missionfs."""
    grid = tomllib.loads(spec.read_text(encoding="utf-8"), parse_float=Decimal)["grid"]
    step = Decimal(grid["step"])
    exp = step.as_tuple().exponent
    scale = max(0, -exp) if isinstance(exp, int) else 0

    def axis(lo: object, hi: object) -> list[str]:
        lo_d, hi_d = Decimal(lo), Decimal(hi)  # type: ignore[arg-type]
        n = int(((hi_d - lo_d) / step).to_integral_value(rounding=ROUND_CEILING))
        start, st = int(lo_d.scaleb(scale)), int(step.scaleb(scale))
        return [format_scaled(start + i * st, scale) for i in range(n)]

    lats = axis(grid["south"], grid["north"])
    lons = axis(grid["west"], grid["east"])
    return lats, lons, [phrase_filename(p) for p in grid["phrases"]]


class StaticTree(pyfuse3.Operations):
    """root/pending/{lat}/{lon}/{file}; every answer is a dict lookup."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, lats: list[str], lons: list[str], files: list[str]) -> None:
        super().__init__()
        now = time.time_ns()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.dirs: dict[int, list[tuple[bytes, int]]] = {}
        self.children: dict[tuple[int, bytes], int] = {}
        self.data: dict[int, bytes] = {}
        self._next = pyfuse3.ROOT_INODE

        def new(mode: int, size: int) -> int:
            ino = self._next
            self._next += 1
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_mode = mode
            a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
            a.st_uid, a.st_gid = os.getuid(), os.getgid()
            a.st_size = size
            a.st_blksize = 4096
            a.st_blocks = (size + 511) // 512
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
            a.entry_timeout = a.attr_timeout = TIMEOUT
            self.attrs[ino] = a
            if stat.S_ISDIR(mode):
                self.dirs[ino] = []
            return ino

        def link(parent: int, name: str, ino: int) -> None:
            b = name.encode("utf-8", "surrogatepass")
            self.dirs[parent].append((b, ino))
            self.children[(parent, b)] = ino

        dmode, fmode = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o444
        root = new(dmode, 0)
        pending = new(dmode, 0)
        link(root, "pending", pending)
        for lat in lats:
            row = new(dmode, 0)
            link(pending, lat, row)
            for lon in lons:
                tile = new(dmode, 0)
                link(row, lon, tile)
                for name in files:
                    f = new(fmode, FILE_SIZE)
                    link(tile, name, f)
                    line = f'{{"lat": {lat}, "lon": {lon}, "file": "{name}", "pad": "'.encode()
                    self.data[f] = line.ljust(FILE_SIZE - 3, b".") + b'"}\n'
        for entries in self.dirs.values():
            entries.sort()

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        try:
            return self.attrs[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ino = self.children.get((parent_inode, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode not in self.dirs:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries, attrs = self.dirs[fh], self.attrs
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, attrs[ino], i + 1):
                return

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in self.data:
            raise pyfuse3.FUSEError(errno.EISDIR if inode in self.dirs else errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EACCES)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[fh][off : off + size]

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(self.attrs)
        s.f_namemax = 255
        return s


async def _main(background: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
    async with trio.open_nursery() as nursery:
        for task in background:
            nursery.start_soon(task)

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as rx:
                async for _ in rx:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(
    ops: pyfuse3.Operations,
    mountpoint: Path,
    name: str,
    options: set[str] | None = None,
    background: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Mount `ops` on `mountpoint` and serve until SIGINT or SIGTERM, then unmount.
    `options` defaults to pyfuse3's (default_permissions); `background`: tasks run beside
    pyfuse3.main() in trio's loop (cancelled when it returns)."""
    base = set(pyfuse3.default_options) if options is None else options
    options = base | {f"fsname={name}", f"subtype={name}"}
    pyfuse3.init(ops, str(mountpoint), options)
    try:
        trio.run(_main, background)
    finally:
        pyfuse3.close(unmount=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="mission TOML with a [grid] table")
    p.add_argument("mountpoint", type=Path)
    args = p.parse_args(argv)
    serve(StaticTree(*grid_names(args.spec)), args.mountpoint, "minimalfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
