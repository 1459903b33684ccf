"""The floor of a whole task: the least any daemon on pyfuse3 + trio must do for a worker's
task, under the project's rules, and nothing else (no missionfs code: a floor must not contain
what it is the floor of).

bench/null_fs.py answers the worker's requests from dicts (mounted here with missionfs's
options, pending/ listing only rows and tiles with a task, as missionfs does); this adds, per task, only what the
stack's rules require of any daemon that stages, commits and uploads witnesses:

- tmp/ files are real files in STATE/tmp on the state dir's filesystem (create -> os.open,
  write -> os.pwrite, read -> os.pread, release -> close), as missionfs stages them;
- the claim (rename pending/REL -> claimed/REL) moves a dict entry (local claims) and appends
  one journal line (os.write to an O_APPEND fd: a claim is journaled);
- the commit (rename tmp/NAME -> done/LAT/LON/NAME) is strict: ONE trio.to_thread.run_sync hop
  that fsyncs the file, renames it to STATE/scraped-tiles/LAT/LON/NAME and fsyncs that
  directory (the directory's fd kept open), then one journal line and the reply;
- with --s3 ENDPOINT every witness is PUT with SigV4 (bench/minimal_put.py: If-None-Match: *,
  x-amz-content-sha256, x-amz-meta-sha256, kept-alive connections) and one "synced" line is
  appended per witness to STATE/synced once it is in S3 (the bench counts those lines to know
  when everything is uploaded: it never asks through FUSE, and this process does no work for
  it). --put picks the upload design:
  * `raw` (default) and `http.client`: missionfs's design until its eighth session. A trio loop
    woken by commits, that lingers 0.25 s (x 0.5-1.0) when fewer than 8 witnesses are queued,
    then hands chunks of at least 8 to worker threads (trio.to_thread.run_sync, up to 16 hops at
    once); each thread reads its witnesses from disk and PUTs them on its own kept-alive
    connection (a socket read by a minimal HTTP/1.1 parser, or http.client); the synced lines of
    a chunk are one os.write on trio's side.
  * `async` (missionfs's design since, but for reading the witness: missionfs reads it again
    after the commit, inline when small): no upload thread. The commit's hop also reads the
    witness back (one pread on the fd it fsyncs), and 16 uploader tasks PUT from trio's thread
    on trio streams (the socket never blocks the loop), one synced line per PUT.
Tried and dropped, as no cheaper here: group commit (the commits waiting together share one
hop: with 4 workers and a hop of microseconds on tmpfs every hop carried 1.000 commits), and
fsyncing the create's descriptor kept open until the commit (no open/close in the hop: the
same CPU and context switches per task within the noise; the hop's cost is the hand-off).
The count file (--count-file) holds the FUSE requests by kind and, under names that start with
"_", the thread hops: "_commit hops" and "_upload hops".
A failed PUT is not retried: a floor fails loudly (the bench then times out waiting).
Usage: python bench/floor_fs.py MISSION.toml MNT --state DIR [--s3 URL --prefix P] [--put K]
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import random
import stat
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import pyfuse3
import trio
from minimal_fs import grid_names, serve
from minimal_put import AsyncPut, MinimalSigV4, RawPut, Signer
from null_fs import TMP_TIMEOUT, NullWorkerFS, add_options_flag, mount_options

FD_BASE = 1 << 32  # file handles of real files: FD_BASE + fd (below it: a dict file's inode)
MAX_WITNESS = 1 << 20  # what the async design reads back in the commit hop
PER_HOP = 8  # witnesses per thread hop at least (missionfs: fusefs/engine/uploads.py)
LINGER = 0.25  # seconds a batch of fewer than PER_HOP waits for more commits
UPLOAD_BATCH = 256


class Uploads(Protocol):
    def committed(self, rel: str, body: bytes) -> None: ...

    async def run(self) -> None: ...


class FloorFS(NullWorkerFS):
    """NullWorkerFS with real tmp/ files, a strict commit hop, journal lines and uploads."""

    def __init__(
        self, lats: list[str], lons: list[str], files: list[str], state: Path, keep_body: bool
    ) -> None:
        super().__init__(lats, lons, files)
        top = self.children[pyfuse3.ROOT_INODE]
        self.tmp_ino = top[b"tmp"]
        self.view: dict[int, bytes] = {}  # tile directory inode -> its view (pending...)
        self.tile: dict[int, str] = {}  # tile directory inode -> "LAT/LON"
        for view in (b"pending", b"claimed", b"done"):
            for lat, row in self.children[top[view]].items():
                for lon, tile in self.children[row].items():
                    self.view[tile] = view
                    self.tile[tile] = f"{lat.decode()}/{lon.decode()}"
        self.tmpdir = str(state / "tmp")
        self.tiles = str(state / "scraped-tiles")
        os.makedirs(self.tmpdir, exist_ok=True)
        os.makedirs(self.tiles, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.journal = os.open(state / "journal", flags, 0o644)
        self.staged: dict[int, str] = {}  # inode -> its file in STATE/tmp
        self.open_fds: dict[int, int] = {}  # fd -> inode
        self.dir_fds: dict[str, int] = {}  # "LAT/LON" -> fd of its witness directory
        self._dirs_lock = threading.Lock()
        self.keep_body = keep_body  # the commit hop reads the witness back (async uploads)
        self.uploads: Uploads | None = None

    def _journal(self, ev: str, rel: str) -> None:
        os.write(self.journal, f"{time.time():.6f}\t{ev}\t{rel}\n".encode())

    def _rel(self, tile: int, name: bytes) -> str:
        return f"{self.tile[tile]}/{os.fsdecode(name)}"

    # -- tmp/: real files ---------------------------------------------------------------------
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode != self.tmp_ino:
            return await super().create(parent_inode, name, mode, flags, ctx)
        self.requests["create"] += 1
        ino = self._new(stat.S_IFREG | 0o644, 0, TMP_TIMEOUT)
        path = f"{self.tmpdir}/{ino}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        self._link(parent_inode, name, ino)
        self.staged[ino] = path
        self.open_fds[fd] = ino
        return pyfuse3.FileInfo(fh=FD_BASE + fd), self.attrs[ino]

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self.staged.get(inode)
        if path is None:
            return await super().open(inode, flags, ctx)
        self.requests["open"] += 1
        try:
            fd = os.open(path, flags & (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        self.open_fds[fd] = inode
        return pyfuse3.FileInfo(fh=FD_BASE + fd)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh < FD_BASE:
            return await super().write(fh, off, buf)
        self.requests["write"] += 1
        fd = fh - FD_BASE
        try:
            n = os.pwrite(fd, buf, off)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        a = self.attrs[self.open_fds[fd]]
        a.st_size = max(a.st_size, off + n)
        return n

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh < FD_BASE:
            return await super().read(fh, off, size)
        self.requests["read"] += 1
        try:
            return os.pread(fh - FD_BASE, size, off)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def release(self, fh: int) -> None:
        if fh < FD_BASE:
            return await super().release(fh)
        self.requests["release"] += 1
        self.open_fds.pop(fh - FD_BASE, None)
        os.close(fh - FD_BASE)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self.staged.get(inode)
        if path is not None and fields.update_size:
            try:
                os.truncate(path, attr.st_size)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return await super().setattr(inode, attr, fields, fh, ctx)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.children.get(parent_inode, {}).get(name)
        await super().unlink(parent_inode, name, ctx)
        path = self.staged.pop(ino, None) if ino is not None else None
        if path is not None:
            try:
                os.unlink(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    # -- the claim and the commit -------------------------------------------------------------
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if parent_inode_old == self.tmp_ino and self.view.get(parent_inode_new) == b"done":
            return await self._commit(name_old, parent_inode_new, name_new)
        await super().rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx)
        if self.view.get(parent_inode_new) == b"claimed":
            self._journal("claim", self._rel(parent_inode_new, name_new))

    async def _commit(self, name: bytes, tile: int, name_new: bytes) -> None:
        """Strict: the file and its new directory fsync'd in one hop, then journaled."""
        self.requests["rename"] += 1
        ino = self._child(self.tmp_ino, name)
        src = self.staged.get(ino)
        if src is None or name_new in self.children[tile]:
            raise pyfuse3.FUSEError(errno.EEXIST if src is not None else errno.EINVAL)
        rel = self._rel(tile, name_new)
        self.requests["_commit hops"] += 1
        try:
            body = await trio.to_thread.run_sync(self._commit_blocking, src, rel)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        del self.staged[ino]
        del self.children[self.tmp_ino][name]
        self.children[tile][name_new] = ino
        self._journal("commit", rel)
        if self.uploads is not None:
            self.uploads.committed(rel, body)

    def _commit_blocking(self, src: str, rel: str) -> bytes:
        """In a worker thread: fsync the file (and read it back if asked), rename it into
        the witness tree, fsync that directory."""
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
            body = os.pread(fd, MAX_WITNESS, 0) if self.keep_body else b""
        finally:
            os.close(fd)
        tile = rel.rpartition("/")[0]
        dir_fd = self.dir_fds.get(tile)
        if dir_fd is None:
            dir_fd = self._tile_dir(tile)
        os.rename(src, f"{self.tiles}/{rel}")
        os.fsync(dir_fd)
        return body

    def _tile_dir(self, tile: str) -> int:
        """A witness directory made durable once (its parents fsync'd), its fd kept for the
        directory fsync of every commit into it."""
        with self._dirs_lock:
            if tile not in self.dir_fds:
                lat = f"{self.tiles}/{tile.partition('/')[0]}"
                for d, parent in ((lat, self.tiles), (f"{self.tiles}/{tile}", lat)):
                    if not os.path.isdir(d):
                        os.mkdir(d)
                        _fsync_dir(parent)
                self.dir_fds[tile] = os.open(f"{self.tiles}/{tile}", os.O_RDONLY)
            return self.dir_fds[tile]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split(tasks: list[str], threads: int, per_hop: int = PER_HOP) -> list[list[str]]:
    """`tasks` in at most `threads` chunks of at least `per_hop` (or all of them), round robin
    (missionfs's split, fusefs/engine/uploads.py, written again: a floor holds no fusefs)."""
    if not tasks:
        return []
    n = max(1, min(threads, len(tasks) // max(1, per_hop)))
    return [tasks[i::n] for i in range(n)]


class ThreadUploads:
    """missionfs's former upload design: chunks of witnesses per thread hop, PUT from the thread."""

    def __init__(
        self,
        putter: RawPut | MinimalSigV4,
        tiles: str,
        prefix: str,
        synced: int,
        hops: int,
        counts: Counter[str],
    ) -> None:
        self.putter = putter
        self.tiles = tiles
        self.prefix = prefix
        self.synced = synced
        self.hops = hops
        self.counts = counts  # the floor's request counts: "_upload hops" is added to them
        self.queue: list[str] = []
        self._wake = trio.Event()

    def committed(self, rel: str, body: bytes) -> None:
        self.queue.append(rel)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if len(self.queue) < PER_HOP:
                await trio.sleep(LINGER * random.uniform(0.5, 1.0))  # let more commits join
            batch, self.queue = self.queue[:UPLOAD_BATCH], self.queue[UPLOAD_BATCH:]
            async with trio.open_nursery() as nursery:
                for part in split(batch, self.hops):
                    nursery.start_soon(self._chunk, part)

    async def _chunk(self, part: list[str]) -> None:
        self.counts["_upload hops"] += 1
        await trio.to_thread.run_sync(self._put_chunk, part)
        os.write(self.synced, "".join(f"{rel}\n" for rel in part).encode())

    def _put_chunk(self, part: list[str]) -> None:
        for rel in part:
            fd = os.open(f"{self.tiles}/{rel}", os.O_RDONLY)
            try:
                body = os.read(fd, MAX_WITNESS)
            finally:
                os.close(fd)
            self.putter.put(f"{self.prefix}/{rel}", body)


class AsyncUploads:
    """No upload thread: uploader tasks PUT on trio streams; the body came from the commit."""

    def __init__(self, signer: Signer, prefix: str, synced: int, conns: int) -> None:
        self.signer = signer
        self.prefix = prefix
        self.synced = synced
        self.conns = conns
        self.send, self.recv = trio.open_memory_channel[tuple[str, bytes]](math.inf)

    def committed(self, rel: str, body: bytes) -> None:
        self.send.send_nowait((rel, body))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.conns):
                nursery.start_soon(self._uploader)

    async def _uploader(self) -> None:
        put = AsyncPut(self.signer)
        async for rel, body in self.recv:
            await put.put(f"{self.prefix}/{rel}", body)
            os.write(self.synced, f"{rel}\n".encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="mission TOML with a [grid] table")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--state", type=Path, required=True, help="state dir (tmp/, witnesses)")
    p.add_argument("--count-file", type=Path, help="write the request counts here at exit")
    p.add_argument("--s3", metavar="ENDPOINT", help="PUT every witness to this S3 endpoint")
    p.add_argument("--bucket", default="fleet-bench")
    p.add_argument("--prefix", default="floor", help="key prefix of the witnesses")
    p.add_argument("--put", choices=("raw", "http.client", "async"), default="raw")
    p.add_argument("--uploaders", type=int, default=16, help="thread hops or connections (16)")
    p.add_argument("--checksum", action="store_true", help="send x-amz-checksum-sha256 too")
    add_options_flag(p)
    p.set_defaults(options="missionfs")
    args = p.parse_args(argv)
    fs = FloorFS(*grid_names(args.spec), args.state, args.s3 is not None and args.put == "async")
    background = []
    if args.s3 is not None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        synced = os.open(args.state / "synced", flags, 0o644)
        uploads: Uploads
        if args.put == "async":
            signer = Signer(args.s3, args.bucket, args.checksum)
            uploads = AsyncUploads(signer, args.prefix, synced, args.uploaders)
        else:
            kind = RawPut if args.put == "raw" else MinimalSigV4
            putter = kind(args.s3, args.bucket, args.checksum)
            uploads = ThreadUploads(
                putter, fs.tiles, args.prefix, synced, args.uploaders, fs.requests
            )
        fs.uploads = uploads
        background.append(uploads.run)
    try:
        serve(fs, args.mountpoint, "floorfs", mount_options(args.options), background)
    finally:
        if args.count_file is not None:
            args.count_file.write_text(json.dumps(dict(fs.requests)))

    return 0


if __name__ == "__main__":
    sys.exit(main())
