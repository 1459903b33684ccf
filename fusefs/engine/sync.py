"""Background sync with the mission's S3 prefix: uploads, remote facts, conflicts.

Sets (roaring bitmaps of task ids, persisted like the local index):
    local   witnesses present in STATE/scraped-tiles (the durable upload queue's source)
    synced  local witnesses confirmed in S3 with this content
    remote  tasks known to have a witness in S3 (ours or other workers'), with the sizes of
            the remote-only ones (`rel<TAB>size` log lines and a sizes file, see index.py)
The upload queue is `local - synced`: it needs no file of its own, so it survives `kill -9` by
construction; a lost `synced` log line only causes a harmless re-upload (a conditional create
answers 412, the SHA-256 in the object's metadata matches, the task is marked synced).

Remote discovery costs what changed, not what the bucket holds: every worker writes small
manifest objects (`manifests/{ms}-{worker}-{seq}.txt`, a `rel<TAB>sha256` line per witness it
just uploaded); a refresh is one LIST after the last seen manifest key (minus a clock-skew
window) plus one GET per new manifest. A full listing of `scraped-tiles/`, per latitude shard
in parallel, is the truth: at start-up without a cursor, every `full_refresh` seconds and on
`missionfs sync`. Sizes of remote-only witnesses (sizes.py) come with the facts (listing,
manifest, else a HEAD) and are persisted with them, so a restart needs S3 for none of them.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import trio
from cachetools import TTLCache
from pyroaring import BitMap

from fusefs.engine.fleet import FleetClaims
from fusefs.engine.leases import LeaseBook
from fusefs.engine.threads import blocking as _s3
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.errors import MAX_BACKOFF, S3ConfigError, S3Timeout, S3Unavailable
from fusefs.model.sizes import RemoteSizes
from fusefs.model.state import MissionState
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import Journal
from fusefs.statedir.store import LocalStore, replace_text

log = logging.getLogger("missionfs")

SKEW_MS = 120_000  # manifests written by a clock up to 2 minutes behind ours are still seen
UPLOAD_BATCH = 256


# What prepare_save() takes: (index, generation, set, sizes) per set, and the cursor.
Saved = tuple[list[tuple[FactIndex, int, BitMap, RemoteSizes | None]], str]


@dataclass
class SyncCounters:
    uploaded: int = 0
    already_there: int = 0
    conflicts: int = 0
    learned: int = 0
    fetched: int = 0
    errors: int = 0
    refreshes: int = 0
    full_refreshes: int = 0
    last_error: str = ""
    last_refresh: float = 0.0
    last_full_refresh: float = 0.0
    conflict_keys: list[str] = field(default_factory=list)
    lost_claims: int = 0


class SyncEngine:
    def __init__(
        self,
        state: MissionState,
        store: LocalStore,
        s3: S3Store,
        local: BitMap,
        index_dir: Path,
        worker: str,
        *,
        uploaders: int = 16,
        refresh: float = 15.0,
        full_refresh: float = 600.0,
        claims: str = "local",
        lease_seconds: float = 900.0,
        claim_timeout: float = 2.0,
    ) -> None:
        self.state = state
        self.space: TaskSpace = state.space
        self.store = store
        self.s3 = s3
        self.local = local
        self.worker = worker
        self.uploaders = uploaders
        self.refresh_interval = refresh
        self.full_refresh_interval = full_refresh
        self.remote_index = FactIndex(index_dir, self.space, "remote")
        self.synced_index = FactIndex(index_dir, self.space, "synced")
        # Sizes of remote-only witnesses (stat before the first read, see sizes.py), kept with
        # the remote facts (index.py), so a restart of any kind shows them at once. Only those
        # still unknown (a state dir from before sizes were kept, an old size-less manifest's
        # not yet asked) come from a full listing at start-up (`_list_for_sizes`) or a HEAD.
        self.sizes = RemoteSizes(self.space.size)
        self.remote = self._load_or_start(self.remote_index, self.sizes)
        self.synced = self._load_or_start(self.synced_index)
        known = self.remote - self.sizes.unknown(self.remote)
        for task in known & local:
            self.sizes.drop(task)  # fetched since: the local file tells its size
        self.unsized: BitMap = self.remote - local - known  # remote-only, size unknown
        self._list_for_sizes = bool(self.unsized)
        # The mtime shown for remote-only witnesses, and given to them when fetched, so that a
        # `stat` before the read and an `fstat` after it agree (tar compares them).
        self.remote_mtime_ns = time.time_ns()
        self.cursor_path = index_dir / "manifest-cursor.json"
        self.cursor_ms, self.seen = self._load_cursor()
        self.shard_fresh: TTLCache[str, bool] = TTLCache(maxsize=1 << 16, ttl=full_refresh)
        self.counters = SyncCounters()
        self.online: bool | None = None  # None: not checked yet
        self.conditional: bool | None = None
        self.state_msg = "starting"
        self.s3_state = "starting"  # online, degraded (requests time out), offline, error
        self._ok_msg = "ok"
        self._inflight: set[int] = set()
        self._manifest: list[str] = []  # "rel<TAB>sha256" lines of our uploads
        self._manifest_seq = 0
        # Manifests older than this are garbage: refreshes read the last SKEW_MS of them, and a
        # worker whose cursor is older does a full listing first (every full_refresh seconds).
        self.manifest_keep = 2 * full_refresh + refresh + SKEW_MS / 1000
        self._prune_at = time.monotonic() + full_refresh
        self._wake = trio.Event()
        self._force = trio.Event()
        self._forced_done: list[Callable[[], None]] = []
        self.on_local_fact: Callable[[int], None] | None = None
        # Told (rel, sha256) of remote witnesses read from manifests, before they become facts
        # (the digest's hash cache: no HEAD per remote witness). Called in a worker thread.
        self.on_remote_hashes: Callable[[list[tuple[str, str]]], None] | None = None
        self.journal: Journal | None = None
        s3.worker = worker
        self.claims_mode = claims
        self.fleet = (
            FleetClaims(self, LeaseBook(s3, worker, lease_seconds), refresh, claim_timeout)
            if claims != "local"
            else None
        )

    # -- persistence --------------------------------------------------------------------------
    def _load_cursor(self) -> tuple[int, dict[str, int]]:
        try:
            data = json.loads(self.cursor_path.read_text())
            return int(data["cursor_ms"]), {k: int(v) for k, v in data.get("seen", {}).items()}
        except (OSError, ValueError, KeyError):
            return 0, {}

    @staticmethod
    def _load_or_start(index: FactIndex, sizes: RemoteSizes | None = None) -> BitMap:
        """Load a set; without a snapshot start one now, so that other processes reading the
        state dir (status, pending, digest) see the log lines this daemon appends."""
        found = index.load(sizes)
        if found is None:
            found = BitMap()
            index.snapshot(found, index.rotate())
        return found

    def _cursor_json(self) -> str:
        return json.dumps({"cursor_ms": self.cursor_ms, "seen": self.seen})

    def prepare_save(self) -> Saved:
        """Copies of the sets, the remote sizes and the cursor, taken on the trio thread
        (atomic there)."""
        parts = [
            (self.remote_index, self.remote_index.rotate(), self.remote.copy(), self.sizes.copy()),
            (self.synced_index, self.synced_index.rotate(), self.synced.copy(), None),
        ]
        return parts, self._cursor_json()

    def write_save(self, prepared: Saved) -> None:
        """Write what prepare_save() took (blocking: run it in a worker thread)."""
        parts, cursor = prepared
        for idx, gen, bm, sizes in parts:
            idx.snapshot(bm, gen, sizes)
        replace_text(self.cursor_path, cursor)

    def save(self) -> None:
        """Snapshot everything now (blocking; when no other thread touches the engine)."""
        self.write_save(self.prepare_save())

    def close(self) -> None:
        self.remote_index.close()
        self.synced_index.close()

    # -- what the rest of the daemon sees -----------------------------------------------------
    def queue_size(self) -> int:
        return self.local.difference_cardinality(self.synced)

    def info(self) -> dict[str, Any]:
        c = self.counters
        return {
            "enabled": True,
            "url": self.s3.url,
            "endpoint": self.s3.endpoint_url or "(AWS default)",
            "worker": self.worker,
            "state": self.state_msg,
            "s3": self.s3_state,
            "online": bool(self.online),
            "conditional_writes": self.conditional,
            "checksums_verified_by_server": self.s3.checksums,
            "queue": self.queue_size(),
            "uploaded": c.uploaded,
            "already_in_s3": c.already_there,
            "conflicts": c.conflicts,
            "remote_facts": len(self.remote),
            "learned_remote": c.learned,
            "fetched": c.fetched,
            "errors": c.errors,
            "last_error": c.last_error,
            "last_refresh": round(c.last_refresh, 3),
            "last_full_refresh": round(c.last_full_refresh, 3),
            "requests": dict(self.s3.requests),
            "claims": self.claims_mode,
            "leases_held": len(self.fleet.held) if self.fleet else 0,
            "claims_unconfirmed": len(self.fleet.unconfirmed) if self.fleet else 0,
            "claims_lost": c.lost_claims,
        }

    def wake(self) -> None:
        """New local witnesses (in the shared `local` set): the uploader should look now."""
        self._wake.set()

    def force(self, done: Callable[[], None] | None = None) -> None:
        """`missionfs sync` on a mounted state dir: a full refresh and a drain, now."""
        if done is not None:
            self._forced_done.append(done)
        self._force.set()
        self._wake.set()

    # -- connection ---------------------------------------------------------------------------
    async def connect(self) -> bool:
        """Check bucket, credentials and conditional-write support; False while unreachable."""
        try:
            conditional = await _s3(self.s3.check)
        except S3Unavailable as e:
            self.went_offline(e)
            return False
        self.checked(conditional)
        return True

    async def _reconnect(self) -> bool:
        """connect() for the background loops: a settings error (no credentials, no bucket)
        is shown in status and retried later, never raised into the loop."""
        try:
            return await self.connect()
        except S3ConfigError as e:
            self.counters.last_error = str(e)
            self.state_msg = f"error: {e}"
            self.s3_state = "error"
            self.online = False
            return False

    def checked(self, conditional: bool) -> None:
        """The self-test (S3Store.check) passed: online, with or without conditional writes."""
        self.conditional = conditional
        self._ok_msg = (
            "ok"
            if conditional
            else "ok (server ignores If-None-Match: check-then-put, races possible)"
        )
        self.answered()
        if not conditional:
            log.warning("%s does not honour conditional writes: using check-then-put", self.s3.url)

    def answered(self) -> None:
        """A request was answered: S3 is online again (once the self-test has passed)."""
        if self.conditional is None or self.online:
            return
        if self.online is False:
            log.info("S3 answers again: online")
        self.online = True
        self.s3_state = "online"
        self.state_msg = self._ok_msg

    def went_offline(self, why: str | Exception) -> None:
        """A request failed: "degraded" if it timed out (the server takes connections but does
        not answer), "offline" if the endpoint cannot be reached at all."""
        msg = str(why)
        degraded = isinstance(why, S3Timeout)
        if self.online is not False:
            log.warning(
                "S3 %s, working locally and queueing uploads: %s",
                "not answering in time" if degraded else "unreachable",
                msg,
            )
        self.online = False
        self.s3_state = "degraded" if degraded else "offline"
        self.state_msg = f"degraded: {msg}" if degraded else f"unreachable: {msg}"
        self.counters.last_error = msg
        if self.claims_mode == "optimistic":
            assert self.fleet is not None
            self.fleet.update_shares(time.monotonic(), offline=True)  # cut off: our share only

    # -- the loops ----------------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._upload_loop)
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._manifest_loop)
            if self.fleet is not None:
                nursery.start_soon(self.fleet.retire_loop)

    async def _upload_loop(self) -> None:
        backoff = 1.0
        while True:
            if not self.online and not await self._reconnect():
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            batch = list(
                islice(iter(self.local - self.synced - BitMap(self._inflight)), UPLOAD_BATCH)
            )
            if not batch:
                self._wake = trio.Event()
                with trio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            failures = await self.upload(batch)
            if failures:
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            else:
                backoff = 1.0

    async def _sleep(self, seconds: float) -> None:
        with trio.move_on_after(seconds * random.uniform(0.5, 1.0)):
            await self._force.wait()

    async def _refresh_loop(self) -> None:
        while True:
            forced = self._force.is_set()
            self._force = trio.Event()
            full = (
                forced
                or self._list_for_sizes
                or not self.cursor_ms
                or (time.time() - self.counters.last_full_refresh > self.full_refresh_interval)
            )
            try:
                if self.online or await self.connect():
                    # Leases are listed before the facts and applied after them: a lease seen
                    # gone was retired after its witness's manifest was written, so that fact
                    # is learned first and the task never shows as pending in between.
                    live = await self.fleet.list_live() if self.fleet else None
                    await self.refresh(full=full, force=forced)
                    self._list_for_sizes = False
                    if self.fleet is not None and live is not None:
                        self.fleet.apply(live)
                    await self.fill_sizes()
                    if forced:
                        await self.drain()
            except S3Unavailable as e:
                self.went_offline(e)
            except S3ConfigError as e:
                self.counters.errors += 1
                self.counters.last_error = str(e)
                if self.state_msg != f"error: {e}":  # once, not at every refresh
                    log.error("sync: %s", e)
                self.state_msg = f"error: {e}"
                self.s3_state = "error"
                self.online = False  # re-checked (bucket, credentials) before the next refresh
            if forced:
                done, self._forced_done = self._forced_done, []
                for cb in done:
                    cb()
            with trio.move_on_after(self.refresh_interval):
                await self._force.wait()

    async def _manifest_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            await self.flush_manifest()
            if self.online and time.monotonic() >= self._prune_at:
                await self._prune_manifests()

    async def _prune_manifests(self) -> None:
        """Delete manifests nobody will read again (any worker's: whoever comes first)."""
        self._prune_at = time.monotonic() + self.full_refresh_interval
        before_ms = int((time.time() - self.manifest_keep) * 1000)
        try:
            n = await _s3(self.s3.prune_manifests, before_ms)
        except (S3Unavailable, S3ConfigError) as e:
            log.info("old manifests not pruned yet (%s)", e)
            return
        if n:
            log.info("deleted %d manifests older than %.0f s", n, self.manifest_keep)

    # -- uploads ------------------------------------------------------------------------------
    async def upload(self, batch: Iterable[int]) -> int:
        """Upload tasks in parallel; returns how many could not be done now (S3 unavailable)."""
        limiter = trio.CapacityLimiter(self.uploaders)
        failures = 0

        async def one(task: int) -> None:
            nonlocal failures
            async with limiter:
                try:
                    await self._upload_one(task)
                except S3Unavailable as e:
                    failures += 1
                    self.went_offline(e)
                except (S3ConfigError, OSError) as e:
                    failures += 1
                    self.counters.errors += 1
                    self.counters.last_error = str(e)
                    log.error("upload of %s failed: %s", self.space.rel(task), e)
                finally:
                    self._inflight.discard(task)

        async with trio.open_nursery() as nursery:
            for task in batch:
                if task in self._inflight:
                    continue
                self._inflight.add(task)
                nursery.start_soon(one, task)
        return failures

    async def drain(self) -> int:
        """Upload the whole queue now; returns what is left (0 when everything is in S3)."""
        while True:
            batch = list(islice(iter(self.local - self.synced), UPLOAD_BATCH * 4))
            if not batch:
                break
            if await self.upload(batch):
                break
        await self.flush_manifest()
        return self.queue_size()

    async def _upload_one(self, task: int) -> None:
        rel = self.space.rel(task)
        path = self.store.witness_path(rel)

        def read_and_create() -> tuple[bytes, bool]:  # one thread hop for both
            body = path.read_bytes()
            return body, self.s3.create(rel, body)

        body, created = await _s3(read_and_create)
        if created:
            self.counters.uploaded += 1
            sha = sha256_hex(body)
            self.note("upload", rel, sha256=sha)
            self._manifest.append(f"{rel}\t{sha}\t{len(body)}")
            self._mark_synced(task, rel)
        else:
            await self._resolve(task, rel, body)
        if self.fleet is not None:
            self.fleet.retire(task)  # the witness is in S3: the lease becomes a tombstone

    async def _resolve(self, task: int, rel: str, body: bytes) -> None:
        """Our witness lost the race to S3 (or was uploaded before a crash): which one is it?"""
        remote_sha = await _s3(self.s3.witness_sha, rel)
        if remote_sha is None:
            raise S3Unavailable(f"{rel}: witness vanished between create and check; will retry")
        if remote_sha == sha256_hex(body):
            self.counters.already_there += 1  # a re-upload after a crash: harmless
            self._mark_synced(task, rel)
            return
        key = await _s3(self.s3.put_conflict, rel, self.worker, body)
        winner, _ = await _s3(self.s3.get, self.s3.key(WITNESSES, rel))
        kept = await trio.to_thread.run_sync(
            self.store.replace_with_winner, rel, winner, self.worker
        )
        self.counters.conflicts += 1
        self.counters.conflict_keys.append(key)
        self.note(
            "conflict",
            rel,
            loser_sha256=sha256_hex(body),
            winner_sha256=remote_sha,
            loser=self.worker,
            kept=key,
        )
        log.warning(
            "conflict on %s: another worker's witness came first; ours is kept as "
            "s3 %s and %s, the winner's is now the local witness",
            rel,
            key,
            kept,
        )
        self._mark_synced(task, rel)
        self.state.notify((task,))  # the content of done/REL changed

    def _mark_synced(self, task: int, rel: str) -> None:
        if task not in self.synced:
            self.synced.add(task)
            self.synced_index.append((rel,))
        self._learn((task,), ours=True)
        if self.fleet is not None:
            self.fleet.unconfirmed.discard(task)

    async def flush_manifest(self) -> None:
        if not self._manifest:
            return
        rels, self._manifest = self._manifest, []
        self._manifest_seq += 1
        name = f"{int(time.time() * 1000):013d}-{self.worker}-{self._manifest_seq:08d}.txt"
        try:
            await _s3(self.s3.put_manifest, name, ("\n".join(rels) + "\n").encode())
        except (S3Unavailable, S3ConfigError) as e:
            self._manifest = rels + self._manifest  # retry with the next flush
            log.info("manifest not written yet (%s)", e)

    # -- remote facts -------------------------------------------------------------------------
    def _learn(self, tasks: Iterable[int], *, ours: bool = False) -> BitMap:
        new = BitMap(tasks) - self.remote
        if new:
            self.remote |= new
            rels = [self.space.rel(t) for t in new]
            self.remote_index.append(map(self._sized_line, new, rels))
            if not ours:
                for rel in rels:
                    self.note("remote", rel)
            self.state.add_facts(new)
        return new

    def _sized_line(self, task: int, rel: str) -> str:
        """A remote log line: `rel<TAB>size` while the size is known (index.py)."""
        size = self.sizes.get(task)
        return rel if size is None else f"{rel}\t{size}"

    def note(self, ev: str, rel: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.append(ev, rel, **fields)

    def _learn_rels(self, rels: Iterable[tuple[str, int | None]]) -> int:
        """Learn (rel, size) pairs; a size of None (an old manifest) is fetched by a HEAD."""
        ids = []
        sized = []  # known remote facts whose size was unknown: persisted now (a restart)
        for rel, size in rels:
            try:
                task = self.space.parse_rel(rel)
            except OutOfPlan:
                continue
            ids.append(task)
            if task in self.local:
                continue
            if size is not None:
                if task in self.unsized:
                    sized.append(task)
                self.sizes.set(task, size)  # before the fact: no stat may see it sizeless
                self.unsized.discard(task)
            elif self.sizes.get(task) is None:
                self.unsized.add(task)
        self._log_sizes(t for t in sized if t in self.remote)
        new = self._learn(ids)
        self.counters.learned += len(new)
        return len(new)

    async def refresh(self, *, full: bool, force: bool = False) -> int:
        """Learn other workers' witnesses; returns how many new facts were learned.

        A full refresh skips shards listed less than `full_refresh` seconds ago (a TTL cache)
        unless forced (`missionfs sync`)."""
        started_ms = int(time.time() * 1000)
        learned = await self._refresh_manifests() if self.cursor_ms else 0
        if full:
            learned += await self._refresh_full(force)
            self.cursor_ms = max(self.cursor_ms, started_ms)
            self.counters.full_refreshes += 1
            self.counters.last_full_refresh = time.time()
        self.counters.refreshes += 1
        self.counters.last_refresh = time.time()
        await trio.to_thread.run_sync(replace_text, self.cursor_path, self._cursor_json())
        return learned

    async def _refresh_manifests(self) -> int:
        start = f"{max(0, self.cursor_ms - SKEW_MS):013d}"
        listed = await _s3(lambda: list(self.s3.manifests(start)))
        new_keys: list[tuple[str, int]] = []
        now = time.monotonic()
        for name, key in listed:
            ms_text, _, rest = name.partition("-")
            if key in self.seen or not ms_text.isdigit():
                continue
            if self.fleet is not None:  # a new manifest: its writer is at work
                self.fleet.crew.observe(rest.rsplit("-", 1)[0], now)
            if rest.startswith(f"{self.worker}-"):
                self.seen[key] = int(ms_text)
            else:
                new_keys.append((key, int(ms_text)))
        learned = 0
        limiter = trio.CapacityLimiter(self.uploaders)
        errors: list[Exception] = []

        async def read(key: str, ms: int) -> None:
            nonlocal learned
            try:
                async with limiter:
                    rels = await _s3(self._read_manifest, key)
            except (S3Unavailable, S3ConfigError) as e:
                errors.append(e)  # not marked seen: read again at the next refresh
                return
            learned += self._learn_rels(rels)
            self.seen[key] = ms

        async with trio.open_nursery() as nursery:
            for key, ms in new_keys:
                nursery.start_soon(read, key, ms)
        if self.seen:
            self.cursor_ms = max(self.cursor_ms, max(self.seen.values()))
        horizon = self.cursor_ms - 2 * SKEW_MS
        self.seen = {k: ms for k, ms in self.seen.items() if ms >= horizon}
        if errors:
            raise errors[0]  # one plain exception, not a group, for the refresh loop
        return learned

    def _read_manifest(self, key: str) -> list[tuple[str, int | None]]:
        """GET a manifest: one `rel<TAB>sha256<TAB>size` line per witness (older ones:
        `rel<TAB>sha256` or `rel` only, whose sizes are then asked with a HEAD)."""
        body, _ = self.s3.get(key)
        rels: list[tuple[str, int | None]] = []
        hashes: list[tuple[str, str]] = []
        for line in body.decode("utf-8", "surrogateescape").splitlines():
            rel, _, rest = line.partition("\t")
            sha, _, size = rest.partition("\t")
            rels.append((rel, int(size) if size.isascii() and size.isdigit() else None))
            if len(sha) == 64:
                hashes.append((rel, sha))
        if hashes and self.on_remote_hashes is not None:
            self.on_remote_hashes(hashes)
        return rels

    async def _refresh_full(self, force: bool) -> int:
        shards = await _s3(self.s3.witness_shards)
        if not force:
            shards = [s for s in shards if s not in self.shard_fresh]
        learned = 0
        limiter = trio.CapacityLimiter(self.uploaders)

        errors: list[Exception] = []

        async def one(shard: str) -> None:
            nonlocal learned
            try:
                async with limiter:
                    rels = await _s3(self.s3.sized_rels_under, shard)
            except (S3Unavailable, S3ConfigError) as e:
                errors.append(e)
                return
            learned += self._learn_rels(rels)
            self.shard_fresh[shard] = True

        async with trio.open_nursery() as nursery:
            for shard in shards:
                nursery.start_soon(one, shard)
        if errors:
            raise errors[0]  # one plain exception, not a group, for the refresh loop
        return learned

    # -- remote-only witnesses ----------------------------------------------------------------
    async def fill_sizes(self, batch: int = UPLOAD_BATCH) -> int:
        """HEAD remote-only witnesses whose size no listing or manifest gave (old manifests),
        a batch per refresh; never on a `stat` (getattr shows 0 until then)."""
        todo = list(islice(iter(self.unsized - self.local), batch))
        self.unsized -= self.local
        if not todo:
            return 0
        limiter = trio.CapacityLimiter(self.uploaders)
        found = 0
        errors: list[Exception] = []

        async def one(task: int) -> None:
            nonlocal found
            rel = self.space.rel(task)
            try:
                async with limiter:
                    size = await _s3(self.s3.size_of, self.s3.key(WITNESSES, rel))
            except (S3Unavailable, S3ConfigError) as e:
                errors.append(e)  # asked again at the next refresh
                return
            self.unsized.discard(task)  # gone from the bucket: a full listing will tell
            if size is not None and task not in self.local:
                self.sizes.set(task, size)
                self._log_sizes((task,))
                found += 1
                self.state.notify((task,))  # drop the kernel's cached size 0

        async with trio.open_nursery() as nursery:
            for task in todo:
                nursery.start_soon(one, task)
        if errors:
            log.info("sizes of %d remote witnesses not known yet (%s)", len(errors), errors[0])
        return found

    def _log_sizes(self, tasks: Iterable[int]) -> None:
        """Persist sizes learned for tasks already known as remote (a `rel<TAB>size` line)."""
        lines = [self._sized_line(t, self.space.rel(t)) for t in tasks]
        if lines:
            self.remote_index.append(lines)

    async def fetch(self, task: int) -> None:
        """Bring a remote-only witness into the local store (once); raises S3Unavailable."""
        rel = self.space.rel(task)
        body, meta = await _s3(self.s3.get, self.s3.key(WITNESSES, rel))
        expected = meta.get("sha256")
        if expected and expected != sha256_hex(body):
            raise S3Unavailable(f"{rel}: downloaded bytes do not match their SHA-256; will retry")
        await trio.to_thread.run_sync(self.store.adopt, rel, body, self.remote_mtime_ns)
        self.sizes.drop(task)
        self.unsized.discard(task)
        self.counters.fetched += 1
        self.note("fetch", rel, sha256=sha256_hex(body))
        self._mark_synced(task, rel)
        if self.on_local_fact is not None:
            self.on_local_fact(task)  # records it in `local` and the start-up index
