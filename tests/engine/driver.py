"""Drive a node's FUSE handlers in process, the way the kernel would, without a kernel.

`EngineNode` opens a real Workspace over a state dir, builds the daemon (its MissionFS, claim log,
start-up steps) without mounting it, and offers user-level operations (`ls`, `stat`, `read`,
`claim`, `release`, `renew`, `commit_tmp`, `direct_write`). Each resolves its paths with
`lookup` from the root, like the kernel's path walk, then calls the handler a system call would
reach. Queries raise OSError like the os module; changes return an errno (0: done), so a test can
compare them with a model. A FUSE handler answering anything but FUSEError is a test failure
(in a real daemon it would be fatal).

Two module attributes are replaced for the whole test (see conftest.py): `pyfuse3.readdir_reply`
(it needs a kernel token: here the token is a `Listing` that collects entries, with a small
buffer so listings resume from offsets as with a real kernel) and `fusefs.fuse.fs.time` (a
`FakeClock`: leases start and end when the test says so).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from fusefs.engine.sync import SyncEngine
from fusefs.engine.workspace import SyncOptions, open_workspace
from fusefs.fuse import inodes
from fusefs.fuse.daemon import Daemon
from fusefs.model.mission import Mission
from fusefs.objects.memory import MemoryStore
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex

T = TypeVar("T")
LEASE = 100.0
NO_MOUNTPOINT = Path("/nonexistent/engine-tier")  # the daemon is built, never mounted


class FakeClock:
    """Stands in for the `time` module inside fusefs.fuse.fs: wall time only moves when told."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeContext:
    """pyfuse3.RequestContext (read-only in pyfuse3): who made the request."""

    pid: int = os.getpid()
    uid: int = os.getuid()
    gid: int = os.getgid()
    umask: int = 0o022


@dataclass
class FakeSetattrFields:
    """pyfuse3.SetattrFields (read-only in pyfuse3): what `touch` changes."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


@dataclass(frozen=True)
class Entry:
    """What `ls -l` (or stat) shows of a name; copied at reply time, as the kernel does."""

    name: str
    ino: int
    mode: int
    size: int
    mtime_ns: int


def _entry(name: str, attr: pyfuse3.EntryAttributes) -> Entry:
    return Entry(name, attr.st_ino, attr.st_mode, attr.st_size, attr.st_mtime_ns)


@dataclass
class Listing:
    """The readdir token: a reply buffer holding `room` entries, like a kernel page."""

    room: int
    entries: list[tuple[Entry, int]] = field(default_factory=list)

    def reply(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((_entry(os.fsdecode(name), attr), next_id))
        return True


def readdir_reply(token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
    """Replaces pyfuse3.readdir_reply: the token is a Listing."""
    return cast(Listing, token).reply(name, attr, next_id)


BUCKET_URL = "s3://engine-tier/runs"  # the mission's `[store] s3`: the MemoryStore stands in


class RecordingStore(MemoryStore):
    """A MemoryStore that also records each request as (kind, key or prefix): tests count
    what a protocol step costs, and what it must never do (list the witnesses)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock.time)
        self.log: list[tuple[str, str]] = []

    def _request(self, kind: str, key: str) -> None:
        self.log.append((kind, key))
        super()._request(kind, key)

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.log[mark:]


def memory_bucket(clock: FakeClock) -> RecordingStore:
    """An in-process bucket whose server clock is the test's clock (lease expiry, LastModified,
    protocol v2's windows)."""
    return RecordingStore(clock)


WINDOW = 30.0  # protocol v2's window: SyncOptions' default refresh, made the fleet's by a node


def close_window(clock: FakeClock, width: float = WINDOW) -> None:
    """Move the bucket's clock past the end of the current window, to when every node's part
    for it is due (publish, compaction by ranks 1-3, reading) but not the 'anybody' fallback."""
    clock.now = (clock.now // width + 1) * width + 0.75 * width


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class EngineNode:
    """One node (one daemon's worth of state) over `state_dir`, driven by handler calls."""

    def __init__(
        self,
        mission: Mission,
        state_dir: Path,
        clock: FakeClock,
        *,
        bucket: MemoryStore | None = None,
        claims: str = "local",
        worker: str | None = None,
        lease: float = LEASE,
        readdir_room: int = 3,
    ) -> None:
        if bucket is not None:  # the bucket behind `[store] s3`, with its claims mode
            mission = dataclasses.replace(mission, s3=BUCKET_URL, claims=claims)
        self.mission = mission
        self.worker = worker
        self.state_dir = state_dir
        self.clock = clock
        self.bucket = bucket
        self.lease = lease
        self.readdir_room = readdir_room
        self.ctx = cast(pyfuse3.RequestContext, FakeContext())
        self.closed = True
        self._open()

    # -- life cycle: what `missionfs mount` and its end do, minus the kernel ------------------
    def _open(self) -> None:
        # The real sync engine over the in-process bucket, wired by open_workspace itself; its
        # loops are not run: a test calls `upload`, `refresh` and the claims when it wants them.
        # A generous claim timeout: a lease request is never given up on because the machine
        # is busy (the bucket answers at once; tests/mount cover a silent server).
        opts = SyncOptions(worker=self.worker, objects=self.bucket, claim_timeout=60.0)
        self.ws = open_workspace(self.mission, self.state_dir, lease=self.lease, sync=opts)
        self.closed = False
        # No kernel cache to invalidate; leases follow the fake clock.
        self.daemon = Daemon(self.ws, NO_MOUNTPOINT, clock=self.clock.time, invalidate=False)
        self.ops = self.daemon.ops
        self.daemon._recover_staging()
        self.daemon.claims.restore(now=self.clock.now)
        if self.ws.from_index:
            trio.run(self.daemon._reconcile)  # in the background after mounting, here at once
        else:
            self.ws.committer.reconciled = True

    def close(self, *, clean: bool = True) -> None:
        """Unmount (clean) or die (not clean: no final snapshot; what was flushed survives)."""
        if self.closed:
            return
        self.closed = True
        if clean:
            self.daemon._final_snapshot()
        else:
            self.daemon.claim_log.close()
            self.ws.index.close()
            if self.ws.sync is not None:
                self.ws.sync.close()
        self.ws.close()

    def restart(self, *, clean: bool = True) -> None:
        self.close(clean=clean)
        self._open()

    @property
    def state(self) -> Any:
        return self.ws.state

    # -- plumbing ------------------------------------------------------------------------------
    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.run(fn, *args)

    async def _errno(self, fn: Callable[[], Awaitable[Any]]) -> int:
        try:
            await fn()
        except pyfuse3.FUSEError as e:
            return e.errno
        return 0

    async def _lookup(self, parent: int, name: str) -> int:
        """One step of the kernel's path walk; a cached negative answer (inode 0) is ENOENT."""
        attr = await self.ops.lookup(parent, os.fsencode(name), self.ctx)
        if attr.st_ino == 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return attr.st_ino

    async def resolve(self, path: str) -> int:
        ino = inodes.ROOT
        for part in filter(None, path.split("/")):
            ino = await self._lookup(ino, part)
        return ino

    async def _parent(self, path: str) -> tuple[int, str]:
        head, _, name = path.rpartition("/")
        return await self.resolve(head), name

    # -- queries: async forms (raise FUSEError) to batch many in one trio.run, and sync forms
    # (raise OSError like the os module) --------------------------------------------------------
    async def a_ls_entries(self, path: str) -> list[Entry]:
        fh = await self.ops.opendir(await self.resolve(path), self.ctx)
        out: list[Entry] = []
        start = 0
        try:
            for _ in range(10_000):
                token = Listing(self.readdir_room)
                await self.ops.readdir(fh, start, cast(pyfuse3.ReaddirToken, token))
                if not token.entries:
                    return out
                out += [e for e, _ in token.entries]
                start = token.entries[-1][1]  # the kernel resumes after the last entry it kept
            raise AssertionError(f"readdir of {path} never ends")
        finally:
            await self.ops.releasedir(fh)

    async def a_ls(self, path: str) -> list[str]:
        return [e.name for e in await self.a_ls_entries(path)]

    async def a_stat(self, path: str) -> Entry:
        ino = await self.resolve(path)
        return _entry(path.rpartition("/")[2], await self.ops.getattr(ino, self.ctx))

    async def a_exists(self, path: str) -> bool:
        try:
            await self.resolve(path)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            return False
        return True

    async def a_read(self, path: str) -> bytes:
        fi = await self.ops.open(await self.resolve(path), os.O_RDONLY, self.ctx)
        chunks: list[bytes] = []
        try:
            while chunk := await self.ops.read(fi.fh, sum(map(len, chunks)), 4096):
                chunks.append(chunk)
            await self.ops.flush(fi.fh)
        finally:
            await self.ops.release(fi.fh)
        return b"".join(chunks)

    async def a_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(await self.a_read("status")))

    def _query(self, fn: Callable[[str], Awaitable[T]], path: str) -> T:
        try:
            return self.run(fn, path)
        except pyfuse3.FUSEError as e:
            raise _oserror(e.errno, path) from None

    def ls_entries(self, path: str) -> list[Entry]:
        return self._query(self.a_ls_entries, path)

    def ls(self, path: str) -> list[str]:
        return self._query(self.a_ls, path)

    def stat(self, path: str) -> Entry:
        return self._query(self.a_stat, path)

    def exists(self, path: str) -> bool:
        return self._query(self.a_exists, path)

    def read(self, path: str) -> bytes:
        return self._query(self.a_read, path)

    def status(self) -> dict[str, Any]:
        return self.run(self.a_status)

    # -- changes (return an errno, 0 when done) ------------------------------------------------
    def rename(self, src: str, dst: str, flags: int = 0) -> int:
        async def go() -> None:
            sp, sname = await self._parent(src)
            await self._lookup(sp, sname)  # the kernel resolves the source before renaming
            dp, dname = await self._parent(dst)
            await self.ops.rename(sp, os.fsencode(sname), dp, os.fsencode(dname), flags, self.ctx)

        return self.run(self._errno, go)

    def unlink(self, path: str) -> int:
        async def go() -> None:
            parent, name = await self._parent(path)
            await self._lookup(parent, name)
            await self.ops.unlink(parent, os.fsencode(name), self.ctx)

        return self.run(self._errno, go)

    def claim(self, rel: str) -> int:
        """`mv pending/REL claimed/REL`."""
        return self.rename(f"pending/{rel}", f"claimed/{rel}")

    def release(self, rel: str, *, by_mv: bool = False) -> int:
        """`rm claimed/REL` or `mv claimed/REL pending/REL`."""
        if by_mv:
            return self.rename(f"claimed/{rel}", f"pending/{rel}")
        return self.unlink(f"claimed/{rel}")

    def renew(self, rel: str) -> int:
        """`touch claimed/REL`."""

        async def go() -> None:
            ino = await self.resolve(f"claimed/{rel}")
            fields = FakeSetattrFields(update_atime=True, update_mtime=True)
            attr = pyfuse3.EntryAttributes()
            attr.st_atime_ns = attr.st_mtime_ns = self.clock.time_ns()
            await self.ops.setattr(ino, attr, cast(pyfuse3.SetattrFields, fields), None, self.ctx)

        return self.run(self._errno, go)

    async def _create(self, path: str, body: bytes) -> int:
        """open(path, O_WRONLY|O_CREAT|O_EXCL), write, close: the errno close(2) returns."""
        parent, name = await self._parent(path)
        try:
            await self._lookup(parent, name)
            return errno.EEXIST  # O_EXCL: the kernel answers without asking the daemon
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fi, _ = await self.ops.create(parent, os.fsencode(name), 0o644, flags, self.ctx)
        try:
            if body:
                assert await self.ops.write(fi.fh, 0, body) == len(body)
            await self.ops.flush(fi.fh)  # close(2): its error is the flush's
        finally:
            await self.ops.release(fi.fh)  # the release's error reaches nobody
        return 0

    def commit_tmp(self, name: str, body: bytes, rel: str) -> int:
        """Write tmp/NAME then `mv tmp/NAME done/REL`; a refused tmp/NAME stays there."""

        async def go() -> int:
            code = await self._create(f"tmp/{name}", body)
            assert code == 0, f"tmp/{name}: {errno.errorcode[code]}"
            return 0

        code = self.run(self._errno, go)
        return code or self.rename(f"tmp/{name}", f"done/{rel}")

    def direct_write(self, rel: str, body: bytes) -> int:
        """`cat > done/REL` with O_EXCL (the scraper's way): the errno of open or close."""

        async def go() -> int:
            return await self._create(f"done/{rel}", body)

        try:
            return self.run(go)
        except pyfuse3.FUSEError as e:
            return e.errno

    # -- what the daemon's loops and the sync engine do ---------------------------------------
    def expire(self) -> list[str]:
        """One turn of the daemon's expiry loop at the fake clock's time."""
        return [self.mission.space.rel(t) for t in self.daemon.claims.expire(self.clock.now)]

    @property
    def sync(self) -> SyncEngine:
        assert self.ws.sync is not None, "node without a bucket"
        return self.ws.sync

    def learn_remote(self, rel: str, body: bytes) -> int:
        """Another worker's witness of `rel` is in the bucket and a refresh lists it."""
        assert self.bucket is not None, "node without a bucket"
        other = S3Store(BUCKET_URL, self.mission.name, objects=self.bucket)
        meta = {"sha256": sha256_hex(body), "worker": "another-worker"}
        self.bucket.put(other.key(WITNESSES, rel), body, metadata=meta)
        return self.sync._learn_rels([(rel, len(body))])

    def upload(self) -> int:
        """One turn of the uploader: connect if not yet (and start the fact log, as the
        daemon's first refresh does), upload the queue, write our node manifest now; returns
        what is left queued."""

        async def go() -> int:
            if not self.sync.online and not await self.sync.connect():
                return self.sync.queue_size()
            if not self.sync.factlog.started:
                await self.sync.factlog.tick()
            return await self.sync.drain()

        return self.run(go)

    def refresh(self, *, full: bool = False, verify: bool = False, force: bool = False) -> int:
        """One turn of the refresh loop, as `SyncEngine._refresh_loop` makes it: the live
        leases (fleet claims) listed before the facts and applied after them; facts from the
        fact log (factlog.py: what is due at the bucket's clock; `force`, as `missionfs
        sync`: our manifest published now and the open windows' manifests read), `full`: a verification of this node's shards, `verify`: of all of
        them. Facts learned."""

        async def go() -> int:
            engine = self.sync
            if not engine.online:
                assert await engine.connect(), engine.state_msg
            fleet = engine.fleet
            live = await fleet.list_live() if fleet is not None else None
            learned = await engine.refresh(full=full, force=force, verify=verify)
            if fleet is not None and live is not None:
                fleet.apply(live)
            await engine.fill_sizes()
            return learned

        return self.run(go)

    def leases(self) -> list[tuple[str, str]]:
        """(rel, worker) of every live lease in the bucket, on the bucket's clock."""
        fleet = self.sync.fleet
        assert fleet is not None, "node without fleet claims"
        return sorted((lease.rel, lease.worker) for lease in fleet.leases.live())
