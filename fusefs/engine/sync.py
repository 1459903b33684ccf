"""Background sync with the mission's S3 prefix: uploads, remote facts, conflicts.

Sets (roaring bitmaps of task ids, persisted like the local index):
    local   witnesses present in STATE/scraped-tiles (the durable upload queue's source)
    synced  local witnesses confirmed in S3 with this content
    remote  tasks known to have a witness in S3 (ours or other workers'), with the sizes of
            the remote-only ones (`rel<TAB>size` log lines and a sizes file, see index.py)
The upload queue is `local - synced`: it needs no file of its own, so it survives `kill -9` by
construction; a lost `synced` log line only causes a harmless re-upload (a conditional create
answers 412, the SHA-256 in the object's metadata matches, the task is marked synced).

Remote discovery is protocol v2 (factlog.py, docs/protocol.md): per window of W seconds (the
fleet's, on the server's clock) a node PUTs at most one node manifest of what it uploaded
(`log/{w}/{worker}-{seq}.txt`, a `rel<TAB>sha256<TAB>size` line per witness) and GETs one
segment (`segments/{w}.seg`, every node's manifests of that window merged once by one
compactor), whatever the fleet's size. A node starts from its cursor, or from the newest
checkpoint, with no listing of `scraped-tiles/`; listing is verification only: every
`full_refresh` seconds a node lists the latitude shards rendezvous assigns it (so the fleet lists
the bucket once per period), `missionfs sync --verify` lists them all, and what they find that
nobody published goes into the node's next manifest. Sizes of remote-only witnesses (sizes.py)
come with the facts (segment lines, listings, else a HEAD) and are persisted with them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from itertools import islice
from typing import Any

import trio
from pyroaring import BitMap

from fusefs.engine.factlog import FactLog
from fusefs.engine.facts import Content, Facts
from fusefs.engine.fleet import FleetClaims
from fusefs.engine.leases import LeaseBook
from fusefs.engine.remotefacts import UPLOAD_BATCH, RemoteFacts, SyncCounters
from fusefs.engine.threads import blocking as _s3
from fusefs.engine.uploads import LINGER_BELOW, Uploaded, upload_witness
from fusefs.model.codec import TaskSpace
from fusefs.model.errors import MAX_BACKOFF, S3ConfigError, S3Timeout, S3Unavailable
from fusefs.model.sizes import RemoteSizes
from fusefs.model.state import MissionState
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import Journal
from fusefs.statedir.spool import Spool
from fusefs.statedir.store import LocalStore

log = logging.getLogger("missionfs")

# An empty upload queue is looked at again this often even if no commit wakes it (a safety
# net: every new local witness wakes the loop); an idle mount must not wake every second.
UPLOAD_IDLE_SECONDS = 10.0
FRESH_WITNESSES = 4096  # committed witnesses whose bytes are kept for their upload, at most
FRESH_BYTES = 8 << 20  # ... and their bytes at most
RECORD_EVERY = 64  # uploaded witnesses recorded together at most (see _record_uploads)


class SyncEngine(RemoteFacts):
    """Uploads, the connection and the loops; the remote side is RemoteFacts (remotefacts.py)."""

    # Seconds a batch of fewer than LINGER_BELOW witnesses waits for more commits (x 0.5-1.0,
    # cut short by a forced sync): a trickle of commits is uploaded a handful per turn of the
    # loop (one set difference of the queue and one nursery per turn, not per commit); a
    # bigger batch goes at once. Manifests go out near each window's end anyway, so other
    # workers learn of a witness no later than before.
    upload_linger = 0.25

    def __init__(
        self,
        state: MissionState,
        store: LocalStore,
        s3: S3Store,
        facts: Facts,
        worker: str,
        *,
        journal: Journal | None = None,
        on_remote_hashes: Callable[[list[tuple[str, str]]], None] | None = None,
        uploaders: int = 16,
        refresh: float = 30.0,
        full_refresh: float = 3600.0,
        claims: str = "local",
        lease_seconds: float = 900.0,
        claim_timeout: float = 2.0,
    ) -> None:
        self.state = state
        self.space: TaskSpace = state.space
        self.store = store
        self.s3 = s3
        self.facts = facts
        self.worker = worker
        self.uploaders = uploaders
        self.refresh_interval = refresh
        self.full_refresh_interval = full_refresh
        index_dir = store.layout.index
        self.remote_index = FactIndex(index_dir, self.space, "remote")
        self.synced_index = FactIndex(index_dir, self.space, "synced")
        # Sizes of remote-only witnesses (stat before the first read, see sizes.py), kept with
        # the remote facts (index.py), so a restart of any kind shows them at once. Only those
        # still unknown (a state dir from before sizes were kept, an old size-less manifest's
        # not yet asked) come from a full listing at start-up (`_list_for_sizes`) or a HEAD.
        self.sizes = RemoteSizes(self.space.size)
        facts.add_remote(self._load_or_start(self.remote_index, self.sizes))
        local = facts.local
        self.synced = self._load_or_start(self.synced_index)
        known = self.remote - self.sizes.unknown(self.remote)
        for task in known & local:
            self.sizes.drop(task)  # fetched since: the local file tells its size
        self.unsized: BitMap = self.remote - local - known  # remote-only, size unknown
        self._list_for_sizes = bool(self.unsized)
        # The mtime shown for remote-only witnesses, and given to them when fetched, so that a
        # `stat` before the read and an `fstat` after it agree (tar compares them).
        self.remote_mtime_ns = time.time_ns()
        self._uploaded: list[Uploaded] = []  # created, not yet recorded (_record_uploads)
        self._manifest: list[str] = []  # "rel<TAB>sha256<TAB>size" lines not yet published
        # The fact log (cursor, our unconfirmed manifests, the window W once started).
        self.claims_mode = claims
        self.factlog = FactLog(self, store.layout.fact_log, refresh, Spool(store.layout))
        # Verification of our shards: the first after a random part of the period (spread).
        self._verify_at = time.time() + full_refresh * random.uniform(0.5, 1.0)
        self.counters = SyncCounters()
        self.online: bool | None = None  # None: not checked yet
        self.conditional: bool | None = None
        self.state_msg = "starting"
        self.s3_state = "starting"  # online, degraded (requests time out), offline, error
        self._ok_msg = "ok"
        self._inflight: set[int] = set()
        self._wake = trio.Event()
        self._learning = trio.Lock()  # one batch of remote facts in a thread at a time
        self._force = trio.Event()
        self._verify = False  # the forced sync asked for a listing of every shard
        self._forced_done: list[Callable[[], None]] = []
        # Told (rel, sha256) of remote witnesses read from manifests, before they become facts
        # (the digest's hash cache: no HEAD per remote witness). Called in a worker thread.
        self.on_remote_hashes = on_remote_hashes
        self.journal = journal
        s3.worker = worker
        self.fleet = (
            FleetClaims(
                self, LeaseBook(s3, worker, lease_seconds, self.space), refresh, claim_timeout
            )
            if claims != "local"
            else None
        )
        facts.subscribe(self.wake)  # new local witnesses: the upload queue grew
        # The bytes and SHA-256 of witnesses just committed here, for their upload (bounded:
        # beyond FRESH_BYTES or FRESH_WITNESSES, an upload reads its witness back).
        self._fresh: dict[int, tuple[bytes, str]] = {}
        self._fresh_bytes = 0
        facts.subscribe_content(self._committed)

    def _committed(self, task: int, content: Content) -> None:
        """A witness committed on this node: keep its bytes for its upload, if small enough."""
        self._take_fresh(task)  # a witness committed again (its fact had gone): these bytes
        body = content.body
        if body is None:
            return
        if not self._fresh_room(len(body)):
            for gone in [t for t in self._fresh if t not in self.local or t in self.synced]:
                self._take_fresh(gone)  # never uploaded from here: its fact went, or S3 had it
        if self._fresh_room(len(body)):
            self._fresh[task] = (body, content.sha256)
            self._fresh_bytes += len(body)

    def _fresh_room(self, size: int) -> bool:
        return len(self._fresh) < FRESH_WITNESSES and self._fresh_bytes + size <= FRESH_BYTES

    def _take_fresh(self, task: int) -> tuple[bytes, str] | None:
        fresh = self._fresh.pop(task, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh[0])
        return fresh

    def close(self) -> None:
        super().close()
        self.factlog.spool.close()

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
            "facts": self.factlog.info(),
        }

    def wake(self) -> None:
        """New local witnesses (in the shared `local` set): the uploader should look now."""
        self._wake.set()

    def force(self, done: Callable[[], None] | None = None, *, verify: bool = False) -> None:
        """`missionfs sync` on a mounted state dir: a drain, our manifest published and the
        closed windows read now; `verify` (`sync --verify`): a listing of every shard too."""
        self._verify = self._verify or verify
        if done is not None:
            self._forced_done.append(done)
        self._force.set()
        self._wake.set()

    # -- connection ---------------------------------------------------------------------------
    async def connect(self) -> bool:
        """Check bucket, credentials and conditional-write support; False while unreachable.
        Once the self-test has passed, a reconnection only asks for the bucket (one HEAD):
        what the server supports does not change, and the self-test's six requests at every
        503 SlowDown made a fleet under throttling throttle itself harder."""
        try:
            if self.conditional is None:
                conditional = await _s3(self.s3.check)
            else:
                await _s3(self.s3.objects.check)
                conditional = self.conditional
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
        loops = [self._upload_loop, self._refresh_loop, self._manifest_loop]
        if self.fleet is not None:
            loops.append(self.fleet.retire_loop)
        async with trio.open_nursery() as nursery:
            for loop in loops:
                nursery.start_soon(self._supervised, loop)

    async def _supervised(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for ever: an error it did not expect (a bug, an exception
        group) is logged with its traceback and the loop starts again after a pause, instead
        of ending the sync engine's nursery and with it the daemon (the mount must outlive
        its background work; what the loop did not finish it finds again)."""
        backoff = 1.0
        while True:
            try:
                await loop()
            except Exception as e:  # the last line of defence, logged
                self.counters.errors += 1
                self.counters.last_error = f"{type(e).__name__}: {e}"
                log.error("sync: %s failed, restarting it", loop.__name__, exc_info=e)
                await trio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def _upload_loop(self) -> None:
        backoff = 1.0
        while True:
            if not self.online and not await self._reconnect():
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            batch = self._upload_batch()
            if not batch:
                self._wake = trio.Event()
                with trio.move_on_after(UPLOAD_IDLE_SECONDS):  # woken by each new witness
                    await self._wake.wait()
                continue
            if len(batch) < LINGER_BELOW and self.upload_linger:
                await self._sleep(self.upload_linger)  # let a few more commits join the hop
                batch = self._upload_batch()
            failures = await self.upload(batch)
            if failures:
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            else:
                backoff = 1.0

    def _upload_batch(self) -> list[int]:
        return list(islice(iter(self.local - self.synced - BitMap(self._inflight)), UPLOAD_BATCH))

    async def _sleep(self, seconds: float) -> None:
        with trio.move_on_after(seconds * random.uniform(0.5, 1.0)):
            await self._force.wait()

    async def _refresh_loop(self) -> None:
        while True:
            forced = self._force.is_set()
            self._force = trio.Event()
            verify, self._verify = self._verify or self._list_for_sizes, False
            full = time.time() >= self._verify_at
            try:
                if self.online or await self.connect():
                    # Leases are listed before the facts and applied after them: a lease seen
                    # gone was retired after its witness's manifest was written, so that fact
                    # is learned first and the task never shows as pending in between.
                    live = await self.fleet.list_live() if self.fleet else None
                    await self.refresh(full=full, force=forced, verify=verify)
                    if full or verify:
                        self._verify_at = time.time() + self.full_refresh_interval
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
        """The fact log's clock: publish our manifest near each window's end, compact and read
        segments when they are due (factlog.py), between the refreshes."""
        backoff = 1.0
        while True:
            if not (self.online and self.factlog.started):
                await trio.sleep(min(1.0, self.refresh_interval))
                continue
            try:
                await self.factlog.tick()
                backoff = 1.0
            except (S3Unavailable, S3ConfigError) as e:
                if isinstance(e, S3Unavailable):
                    self.went_offline(e)
                log.info("fact log: %s", e)
                await trio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            wait = self.factlog.next_due() - self.factlog.now()
            await trio.sleep(min(max(0.05, wait), self.refresh_interval))

    # -- uploads ------------------------------------------------------------------------------
    async def upload(self, batch: Iterable[int]) -> int:
        """Upload tasks, `uploaders` at a time, from trio's thread (uploads.py); returns how
        many could not be done now (S3 unavailable: the first such answer stops the batch, so
        a dead endpoint costs one timeout per uploader, not one per witness)."""
        tasks = [t for t in dict.fromkeys(batch) if t not in self._inflight]
        self._inflight.update(tasks)
        todo = deque(self._rels(tasks))
        failures = 0

        async def uploader() -> None:
            nonlocal failures
            while todo:
                task, rel = todo.popleft()
                path = self.store.witness_path(rel)
                up = await upload_witness(task, rel, path, self.s3, _s3, self._take_fresh(task))
                if not up.created:
                    self._inflight.discard(task)  # a created one: once recorded
                if await self._upload_one(up):
                    continue
                failures += 1
                if isinstance(up.error, S3Unavailable):
                    failures += len(todo)  # left queued, not attempted
                    todo.clear()

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(min(self.uploaders, len(todo))):
                    nursery.start_soon(uploader)
        finally:
            self._record_uploads()
            self._inflight.difference_update(tasks)
        return failures

    def _rels(self, tasks: list[int]) -> list[tuple[int, str]]:
        return [(t, self.space.rel(t)) for t in tasks]

    async def drain(self) -> int:
        """Upload the whole queue now; returns what is left (0 when everything is in S3)."""
        while True:
            batch = list(islice(iter(self.local - self.synced), UPLOAD_BATCH * 4))
            if not batch:
                break
            if await self.upload(batch):
                break
        await self.flush_manifest(now=True)
        return self.queue_size()

    async def _upload_one(self, up: Uploaded) -> bool:
        """The bookkeeping of one witness's upload (on the trio thread); False if it could
        not be done now (it stays queued)."""
        task, rel, body = up.task, up.rel, up.body
        try:
            if up.error is not None:
                raise up.error  # what failed in the thread, handled as if it failed here
            if up.created:
                self.counters.uploaded += 1
                # The manifest line at once (spooled: no crash may lose it); the rest of the
                # bookkeeping in bulk (_record_uploads): one write per log, not per witness.
                self.factlog.owe(f"{rel}\t{up.sha}\t{len(body)}")
                self._uploaded.append(up)
                if len(self._uploaded) >= RECORD_EVERY:
                    self._record_uploads()
                return True
            else:
                await self._resolve(up)
        except S3Unavailable as e:
            self.went_offline(e)
            return False
        except (S3ConfigError, OSError) as e:
            self.counters.errors += 1
            self.counters.last_error = str(e)
            log.error("upload of %s failed: %s", rel, e)
            return False
        if self.fleet is not None:
            self.fleet.retire(task)  # the witness is in S3: the lease becomes a tombstone
        return True

    def _record_uploads(self) -> None:
        """The journal, synced and remote lines of the witnesses uploaded since the last call,
        one write per log, then their leases retired. These logs are history and caches: a
        line lost to a crash costs a re-upload that finds the witness there (its manifest line
        was spooled at once). Until recorded, a witness stays in `_inflight`, so no other
        upload takes it meanwhile."""
        done, self._uploaded = self._uploaded, []
        if not done:
            return
        tasks = [u.task for u in done]
        self._inflight.difference_update(tasks)
        if self.journal is not None:  # never raises (a full disk is counted there)
            self.journal.append_each("upload", ((u.rel, {"sha256": u.sha}) for u in done))
        try:
            self._mark_synced(tasks, [u.rel for u in done])
        except OSError as e:  # a full disk: caches (a restart re-uploads, finds them there)
            self.counters.errors += 1
            self.counters.last_error = str(e)
            log.error("upload records of %d witness(es) not written: %s", len(done), e)
        if self.fleet is not None:
            for task in tasks:
                self.fleet.retire(task)  # the witness is in S3: the lease becomes a tombstone

    async def _resolve(self, up: Uploaded) -> None:
        """Our witness lost the race to S3 (or was uploaded before a crash): which one is it?
        `up.remote_sha`: the SHA-256 of the witness there (read right after the create)."""
        task, rel, body, remote_sha = up.task, up.rel, up.body, up.remote_sha
        if remote_sha is None:
            raise S3Unavailable(f"{rel}: witness vanished between create and check; will retry")
        if remote_sha == up.sha:
            self.counters.already_there += 1  # a re-upload after a crash: harmless
            self._mark_synced([task], [rel])
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
            loser_sha256=up.sha,
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
        self._mark_synced([task], [rel])
        self.state.notify((task,))  # the content of done/REL changed

    def _mark_synced(self, tasks: list[int], rels: list[str]) -> None:
        """These witnesses are in S3 as ours: in memory first, then their synced and remote
        index lines (caches: an OSError on a full disk is the caller's to count)."""
        new = [rel for task, rel in zip(tasks, rels, strict=True) if task not in self.synced]
        self.synced.update(tasks)
        if self.fleet is not None:
            self.fleet.unconfirmed.difference_update(tasks)
        self.synced_index.append(new)
        self._learn(tasks, ours=True)

    async def flush_manifest(self, *, now: bool = False) -> None:
        """Publish our manifest lines: `now` (a drain, `missionfs sync`), else only when the
        window's end is near (one node manifest per window, factlog.py)."""
        if not self._manifest or not self.online or not self.factlog.started:
            return
        try:
            async with self.factlog.lock:
                await self.factlog._flush(now)
        except (S3Unavailable, S3ConfigError) as e:
            log.info("manifest not written yet (%s)", e)

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
        self._mark_synced([task], [rel])
        self.facts.learn_local(task)  # records it in `local` and the start-up index
