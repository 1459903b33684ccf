"""Protocol v2's fact log: node manifests per window, merged into one segment per window.

Why: in protocol v1 every node read every other node's manifests (reads per task grew with the
fleet) and listed the whole witness tree at start. Here, per node and per window of W seconds
(W fleet-wide, `.missionfs/protocol.json`, windows on the S3 server's clock):

- at most one PUT of a node manifest `log/{w:010d}/{worker}-{seq}.txt` (what it uploaded, and
  what a verification listing found that nobody had published), near the end of the window;
- one GET of the window's segment `segments/{w:010d}.seg` (model/segment.py), written once with
  If-None-Match by the compactor that rendezvous picks among the crew (the workers of recent
  segments), at end(w) + settle; ranks 2 and 3 step in at +W/4 and +W/2, anyone after 2 W, so
  a compactor killed mid-way leaves a gap that closes by itself;
- a node whose manifest is not in the segment's header (written late) publishes its lines
  again in its current window: a late manifest loses nothing.

Start-up needs no listing of witnesses: with a cursor at most C windows old the node reads the
segments after it; otherwise it loads the newest checkpoint (checkpoints.py) and the segments
after it; in a bucket with no checkpoint at all (new, or protocol v1) it lists the witnesses
once (server time T), takes window(T) - 2 as its cursor and writes that checkpoint. The
compactor of a window w with w % C == 0 writes checkpoint w and deletes old node manifests and
segments. Everything here is derived from the witnesses and rebuilt from them (fsck).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.engine.factduties import KEEP_SECONDS, C, FactDuties, FactHost
from fusefs.engine.threads import blocking as _s3
from fusefs.engine.threads import blocking_each
from fusefs.model import segment as sg
from fusefs.model.checkpoint import Checkpoint, CheckpointBuilder
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.errors import S3ConfigError, S3Unavailable
from fusefs.objects.base import NotFound
from fusefs.statedir.spool import Spool
from fusefs.statedir.store import replace_text

log = logging.getLogger("missionfs")

MIN_WINDOW = 0.5  # seconds: below, a window's requests may take longer than the window
CREW_WINDOWS = 2 * C  # a worker is in the crew while a segment this recent names it
FALLBACK = (0.0, 0.25, 0.5)  # compaction delay of ranks 1, 2, 3 in windows; others: 2 W


def settle(width: float) -> float:
    """Wait after a window closes before compacting it (late PUTs land; request latency)."""
    return min(5.0, width / 4)


def _builder_from(space: TaskSpace, cp: Checkpoint) -> CheckpointBuilder:
    """The builder of our next checkpoint, from the one loaded (blocking: a worker thread),
    its digests ready for the segments' additions (seconds at 10M facts, off the trio thread)."""
    builder = CheckpointBuilder(space, cp)
    builder.digests.thaw()
    return builder


class FactLog(FactDuties):
    """A node's view of the fleet's fact log (see the module docstring); owned by SyncEngine,
    whose learning methods (remotefacts.py) it feeds."""

    def __init__(self, engine: FactHost, path: Path, refresh: float, spool: Spool) -> None:
        self.engine = engine
        self.spool = spool  # the lines we owe, on disk as they are made (kill -9)
        self.s3 = engine.s3
        self.worker = engine.worker
        self.path = path
        self.asked_width = refresh
        self.width: float | None = None  # from protocol.json at start
        self.cursor: int | None = None  # last window applied (contiguously)
        self.seq = 0
        self.unconfirmed: dict[str, tuple[int, list[str]]] = {}  # our manifests not seen merged
        self.put_window = -1  # the last window we PUT a manifest in (at most one each)
        self.crew: dict[str, int] = {}  # worker -> newest window whose segment names it
        # A manifest (empty if need be) in our first window: the segment then names us, and
        # every node of a fleet (shares, fleet.py) learns the crew from one GET, not from
        # lease bodies one by one.
        self.hello = engine.claims_mode != "local"  # only fleets share work by crew
        # The window in which our owed lines were first seen waiting for its flush slot (its
        # last `_lead()` seconds): a node whose ticks keep missing that slot (busy, a window
        # shorter than its segment reads) flushes in the next window instead of never.
        self._waiting: int | None = None
        self.started = False
        self.lock = trio.Lock()
        self._peeked: set[str] = set()  # node manifests read before their segment (sync)
        # Spread the readers of a segment over a few seconds (same each run for a worker).
        self._jitter = int.from_bytes(hashlib.blake2b(self.worker.encode()).digest()[:2]) / 65536
        self.book = CheckpointBook(engine.s3, engine.space)
        # The facts through our cursor as the checkpoints and segments say them (sizes and
        # digests included): what our next checkpoint holds. None until a checkpoint was loaded
        # or written in this process (a restart rebuilds it when it is needed, `_chain`).
        self.builder: CheckpointBuilder | None = None
        self._wrote = -1  # the last window whose segment we wrote
        self._retry_at = 0.0  # server time before which a missing segment is not asked again
        self.segments_read = 0
        self.compacted = 0
        self.republished = 0
        self.checkpoints_written = 0
        self.checkpoint_loaded: int | None = None
        self._load()

    # -- persistence (STATE/index/fact-log.json, named by StateLayout) ------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            cursor = data.get("cursor")
            self.cursor = int(cursor) if cursor is not None else None
            self.seq = int(data.get("seq", 0))
            self.unconfirmed = {
                str(n): (int(w), [str(x) for x in lines])
                for n, (w, lines) in data.get("unconfirmed", {}).items()
            }
            self.engine._manifest.extend(str(x) for x in data.get("pending", []))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cursor: start from a checkpoint
        owed = set(self.engine._manifest)
        for _window, lines in self.unconfirmed.values():
            owed.update(lines)
        spooled = [line for line in dict.fromkeys(self.spool.read()) if line not in owed]
        self.engine._manifest.extend(spooled)  # made after the last save (a kill -9)

    def owe(self, line: str) -> None:
        """A node manifest line for a witness we uploaded: published at the window's end,
        on disk at once (spool.py) so that no crash loses it."""
        self.engine._manifest.append(line)
        self.spool.append((line,))

    def state_json(self) -> str:
        """The cursor, the manifest sequence, our unconfirmed manifests and the lines not yet
        published (so an unmount or a crash between two windows loses none)."""
        return json.dumps(
            {
                "v": 2,
                "cursor": self.cursor,
                "seq": self.seq,
                "unconfirmed": {n: [w, lines] for n, (w, lines) in self.unconfirmed.items()},
                "pending": self.engine._manifest,
            }
        )

    async def save(self) -> None:
        generation = self.spool.rotate()  # with the snapshot: older spools are in it
        text = self.state_json()

        def write() -> None:
            replace_text(self.path, text)
            self.spool.drop_before(generation)

        await trio.to_thread.run_sync(write)

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> float:
        """The S3 server's clock (a node's own clock may be minutes off)."""
        return self.s3.server_time()

    @property
    def w(self) -> float:
        assert self.width is not None, "the fact log has not started"
        return self.width

    def window(self, t: float) -> int:
        return sg.window_of(t, self.w)

    def _lead(self) -> float:
        """How long before its window's end a node publishes its manifest: 2 s (W/8 for short
        windows) to twice that, by worker, so that a big fleet's manifests do not all land on
        `log/` in the same second (1,000 PUTs in one second at N = 1,000 otherwise)."""
        return min(2.0, self.w / 8) * (1 + self._jitter)

    def _read_delay(self) -> float:
        return self.w / 8 * (1 + self._jitter) if self.w < 24 else 3.0 * (1 + self._jitter)

    def members(self, current: int) -> list[str]:
        """The crew as the recent segments show it (their uploaders and compactors)."""
        return [w for w, seen in self.crew.items() if seen >= current - CREW_WINDOWS]

    def rank(self, w: int, current: int) -> int:
        """This node's rank among the compactors of window w (0: the designated one). After
        a quiet spell the last crew known still ranks (nobody recent: all of them)."""
        crew = self.members(current) or list(self.crew)
        if not crew:  # nobody known, not even from a listing: If-None-Match decides
            return 0
        if self.worker in crew:
            return sg.rendezvous(f"{w}", crew).index(self.worker)
        return len(FALLBACK)

    def compaction_due(self, w: int, current: int) -> float:
        """When this node compacts window w if its segment is still missing."""
        rank = self.rank(w, current)
        delay = FALLBACK[rank] * self.w if rank < len(FALLBACK) else 2 * self.w
        return sg.window_end(w, self.w) + settle(self.w) + delay

    def next_due(self) -> float:
        """Server time of the next thing to do (flush, compaction or read)."""
        if self.width is None or self.cursor is None:
            return self.now()
        now = self.now()
        current = self.window(now)
        times = []
        if self.engine._manifest or self.hello:
            if self.put_window >= current:
                times.append(sg.window_end(current, self.w))
            elif self._waiting is not None and self._waiting < current:
                times.append(now)  # its slot was missed: now
            else:
                times.append(sg.window_end(current, self.w) - self._lead())
        nxt = self.cursor + 1
        due = min(self._read_at(nxt), self.compaction_due(nxt, current))
        times.append(max(due, self._retry_at))
        return max(now, min(times))

    def _read_at(self, w: int) -> float:
        """When this node first GETs the segment of window w (spread over a few seconds)."""
        return sg.window_end(w, self.w) + settle(self.w) + self._read_delay()

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> int:
        """Read (or create) the fleet's protocol.json, then catch up: segments after a recent
        cursor, else the newest checkpoint, else one listing. Returns facts learned."""
        if self.width is None:
            await self._protocol()
        learned = 0
        current = self.window(self.now())
        if self.cursor is None or self.cursor < current - C:
            learned += await self._from_checkpoint_or_listing()
        self.started = True
        self.engine.counters.last_full_refresh = time.time()  # facts caught up
        await self.save()
        return learned

    async def _protocol(self) -> None:
        mine = {"version": 2, "window": max(self.asked_width, MIN_WINDOW)}
        found = await _s3(self.s3.read_protocol)
        if found is None:
            if await _s3(self.s3.create_protocol, mine):
                log.info("fleet protocol v2 created: windows of %g s", mine["window"])
                found = mine
            else:
                found = await _s3(self.s3.read_protocol) or {}
        width = sg.protocol_width(found)
        if width is None:
            raise S3ConfigError(f"{self.s3.url}: unreadable .missionfs/protocol.json: {found}")
        if width != self.asked_width:
            log.info(
                "the fleet's window is %g s (.missionfs/protocol.json), not --refresh %g s: "
                "facts are published and read every %g s",
                width,
                self.asked_width,
                width,
            )
        self.width = float(width)

    async def _from_checkpoint_or_listing(self) -> int:
        """No cursor, or one too old: start from the newest checkpoint; with none in the
        bucket, list every witness once (bootstrap) and write the first checkpoint."""
        cp = await _s3(self.book.latest, -1, self.window(self.now()))  # none from the future
        for bad in self.book.skipped:
            log.warning("checkpoint %d skipped (%s: %s)", bad.window, bad.problem, bad.detail)
        if cp is not None and (self.cursor is None or cp.window > self.cursor):
            return await self._load_checkpoint(cp)
        if cp is not None:
            return 0  # our cursor is newer than any checkpoint: read the segments after it
        t = self.now()
        listed, new = await self.engine._list_shards(None)
        self.cursor = self.window(t) - 2
        # Witnesses of our unconfirmed manifests were all in S3 before T: the listing saw them.
        self.unconfirmed = {n: v for n, v in self.unconfirmed.items() if v[0] > self.cursor}
        builder = CheckpointBuilder(self.engine.space)
        for rel, size in listed:
            task = self._task(rel)
            if task is not None:
                builder.add(task, rel, None, size)
        cp = await trio.to_thread.run_sync(builder.build, self.cursor)
        self.builder = builder
        written = await _s3(self.book.write, cp)
        self.checkpoints_written += written
        log.info(
            "facts: no checkpoint in the bucket: listed it once (%d witnesses), wrote checkpoint "
            "%d%s",
            len(listed),
            self.cursor,
            "" if written else " (another node's was there)",
        )
        return len(new)

    async def _load_checkpoint(self, cp: Checkpoint) -> int:
        """Learn a checkpoint's facts; our manifests it covers but lacks are published again."""
        learned = await self.engine.learn_checkpoint(cp)  # the heavy part in a thread
        for name, (w, lines) in list(self.unconfirmed.items()):
            if w <= cp.window:
                del self.unconfirmed[name]
                tasks = [self._task(ln.partition("\t")[0]) for ln in lines]
                missing = [
                    ln
                    for ln, t in zip(lines, tasks, strict=True)
                    if t is not None and t not in cp.facts
                ]
                if missing:
                    self._republish(missing)
        self.builder = await trio.to_thread.run_sync(_builder_from, self.engine.space, cp)
        self.cursor = self.checkpoint_loaded = cp.window
        log.info("facts: loaded checkpoint %d (%d facts)", cp.window, len(cp.facts))
        return learned

    def _task(self, rel: str) -> int | None:
        try:
            return self.engine.space.parse_rel(rel)
        except OutOfPlan:
            return None

    # -- one turn ---------------------------------------------------------------------------
    async def tick(self, *, force: bool = False) -> int:
        """Do what is due: publish our manifest, compact or read closed windows. `force`
        (`missionfs sync`, unmount): publish now. Returns facts learned."""
        async with self.lock:
            learned = 0
            if not self.started:
                learned += await self.start()
            await self._flush(force)
            learned += await self._read_closed()
            if force:
                learned += await self._peek_open()
            return learned

    async def _flush(self, force: bool) -> None:
        lines = self.engine._manifest
        if not lines and not self.hello:
            return
        now = self.now()
        current = self.window(now)
        if self.cursor is not None and current <= self.cursor:
            # Our reading of the server's clock went back (a new Date header lowered the
            # offset): a window we have read already would never tell us the manifest was
            # left out of its segment. The next one will.
            current = self.cursor + 1
        missed = self._waiting is not None and self._waiting < current
        if not force:
            if self.put_window >= current:
                return  # one manifest per window
            if now < sg.window_end(current, self.w) - self._lead() and not missed:
                if self._waiting is None:
                    self._waiting = current
                return  # written near the window's end
        self.engine._manifest = []
        self.seq += 1
        name = sg.manifest_name(self.worker, self.seq)
        if lines:
            self.unconfirmed[name] = (current, lines)
        await self.save()  # the sequence number is used once, even across a crash
        body = "".join(f"{ln}\n" for ln in lines).encode("utf-8", "surrogateescape")
        try:
            await _s3(self.s3.put_node_manifest, current, name, body)
        except (S3Unavailable, S3ConfigError):
            self.unconfirmed.pop(name, None)
            self.engine._manifest = lines + self.engine._manifest  # the next flush retries
            raise
        self.put_window = current
        self.hello = False
        self._waiting = None

    async def _read_closed(self) -> int:
        """Apply the segments of closed windows in order (compacting one when it is due)."""
        assert self.cursor is not None
        learned = 0
        skipped = False
        for _ in range(4 * C):  # a bounded turn: a refresh never waits for a long catch-up
            now = self.now()
            current = self.window(now)
            w = self.cursor + 1
            end = sg.window_end(w, self.w)
            if now < end + settle(self.w):
                break
            if now < self._retry_at:
                break  # asked for it a moment ago
            if not skipped and now >= end + 2 * self.w:
                skipped = True  # far behind: jump over windows nobody wrote anything in
                busy = await _s3(self._next_busy, w, current)
                if busy > w:
                    self.cursor = busy - 1
                    continue
            due = self.compaction_due(w, current)
            seg: sg.Segment | None = None
            if not self.crew and due <= now < end + self.w:  # ours to write, knowing nobody
                await self._crew_from_listing(w)
                due = self.compaction_due(w, current)
            if now >= due and now < end + self.w and self.rank(w, current) == 0:
                # The designated compactor, on time: nobody else has written it yet.
                seg = await self._compact(w)
            elif now >= due or now >= max(self._read_at(w), self._retry_at):
                seg = await self._get(w)
                if seg is None and now >= due:
                    seg = await self._compact(w)
            if seg is None:
                # Not there yet: ask again a little later (or when it is ours to write), not
                # at every turn of the loop.
                retry = now + min(2.0, self.w / 4)
                self._retry_at = retry if now >= due else min(retry, due)
                break
            learned += await self._apply(seg)
            self.cursor = w
            self._retry_at = 0.0
            if self._wrote == w:
                await self._compactor_duties(w)
            self._peeked = {k for k in self._peeked if k.rsplit("/", 2)[-2] > f"{w:010d}"}
            await self.save()
        return learned

    async def _crew_from_listing(self, w: int) -> None:
        """A node that has never read a segment knows no crew, and every such node would
        compact the same window: a fleet started together made N x N manifest GETs (and
        SlowDowns). So it lists the window's node manifests once (one LIST) and ranks among
        the workers that wrote them, like everybody else."""
        for name, _key in await _s3(self.s3.node_manifests, w):
            worker = sg.manifest_worker(name)
            if worker is not None:
                self.crew[worker] = max(self.crew.get(worker, w), w)

    async def _peek_open(self) -> int:
        """`missionfs sync`: also read the node manifests of the windows not merged yet (a
        LIST and a GET per manifest: the cost of one explicit command, never of a loop), so
        that what every node published before the sync is known when it returns."""
        assert self.cursor is not None
        learned = 0
        for w in range(self.cursor + 1, self.window(self.now()) + 1):
            for name, key in await _s3(self.s3.node_manifests, w):
                if key in self._peeked or sg.manifest_worker(name) in (None, self.worker):
                    continue
                body, _ = await _s3(self.s3.get, key)
                learned += await self.engine.learn_facts(sg.parse_lines(body))
                self._peeked.add(key)
        return learned

    async def _get(self, w: int) -> sg.Segment | None:
        """Segment w, None if missing; a corrupt one is rebuilt in place from the manifests."""
        found = await _s3(self.s3.get_segment, w)
        if found is None:
            return None
        body, etag = found
        try:
            seg = await trio.to_thread.run_sync(sg.decode, body, w)  # 24,000 facts: 30 ms
        except sg.CorruptSegment as e:
            log.warning("segment %d is corrupt (%s): rebuilding it from the node manifests", w, e)
            return await self._compact(w, replace_etag=etag)
        self.segments_read += 1
        return seg

    async def _compact(self, w: int, replace_etag: str | None = None) -> sg.Segment | None:
        """Merge window w's node manifests into its segment (If-None-Match; if another node's
        is there, read it). For an old window, a newer checkpoint is taken instead when there
        is one (retention keeps the node manifests of a window until its segment exists, but
        a segment deleted later leaves nothing to rebuild it from)."""
        if self.now() - sg.window_end(w, self.w) > KEEP_SECONDS / 2:
            cp = await _s3(self.book.latest, w - 1, self.window(self.now()))
            if cp is not None:
                log.warning("segment %d missing: starting again from checkpoint %d", w, cp.window)
                await self._load_checkpoint(cp)
                return None
        listed = await _s3(self.s3.node_manifests, w)

        def read(item: tuple[str, str]) -> list[sg.Fact] | None:
            try:
                return sg.parse_lines(self.s3.get(item[1])[0])
            except NotFound:
                return None  # deleted since the listing (retention): its facts are in a segment

        manifests: dict[str, list[sg.Fact]] = {}

        def one(item: tuple[str, str], facts: list[sg.Fact] | None) -> None:
            if facts is not None:
                manifests[item[0]] = facts

        ours = [(name, key) for name, key in listed if sg.manifest_worker(name) is not None]
        errors = await blocking_each(read, ours, self.engine.uploaders, one)
        if errors:  # one plain exception, never a group: the loops catch S3 errors by class
            raise errors[0]
        seg, body = await trio.to_thread.run_sync(self._merged, w, manifests)
        if await _s3(self.s3.put_segment, w, body, replace_etag):
            self.compacted += 1
            self._wrote = w
            return seg
        return await self._get(w) if replace_etag is None else None

    def _merged(self, w: int, manifests: dict[str, list[sg.Fact]]) -> tuple[sg.Segment, bytes]:
        """Window w's segment and its body (blocking: 30 ms for 24,000 facts, a worker
        thread); the compactor is crew too."""
        seg = sg.merge(w, manifests)
        seg.workers.setdefault(self.worker, 0)
        return seg, sg.encode(seg)

    def _next_busy(self, w: int, current: int) -> int:
        """The first window from w with a node manifest or a segment (else `current`): the
        windows before it were empty, a fleet asleep (two LISTs; blocking)."""
        first_log = self.s3.first_log_window(w)
        first_seg = next(iter(self.s3.segment_windows(w - 1)), None)
        return min(x for x in (first_log, first_seg, current) if x is not None)

    async def _apply(self, seg: sg.Segment) -> int:
        """Learn a segment's facts, see its workers as crew, and publish again those of our
        manifests of that window it does not name (written after it was compacted)."""
        current = self.window(self.now())
        for worker in seg.workers:
            self.crew[worker] = max(self.crew.get(worker, seg.window), seg.window)
        fleet = self.engine.fleet
        if fleet is not None and seg.window >= current - 2:
            for worker in seg.workers:
                if worker != self.worker:
                    fleet.crew.observe(worker, time.monotonic())
        for name, (w, lines) in list(self.unconfirmed.items()):
            if w == seg.window:
                del self.unconfirmed[name]
                if name not in seg.manifests:
                    self._republish(lines)
        if self.builder is not None:  # a Python step per fact: in a thread (under our lock)
            await trio.to_thread.run_sync(self._build, self.builder, seg.facts)
        return await self.engine.learn_facts(seg.facts)

    def _republish(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        self.republished += len(lines)
        log.info("%d facts of a late manifest of ours published again", len(lines))
        self.engine._manifest.extend(lines)

    def publish_found(self, facts: Iterable[tuple[str, int | None]]) -> None:
        """Facts a verification listing found unknown: in our next manifest (no hash known)."""
        self.engine._manifest.extend(sg.line(rel, "", size) for rel, size in facts)

    def info(self) -> dict[str, Any]:
        return {
            "window_seconds": self.width,
            "cursor": self.cursor,
            "segments_read": self.segments_read,
            "segments_written": self.compacted,
            "republished": self.republished,
            "checkpoints_written": self.checkpoints_written,
            "checkpoint_loaded": self.checkpoint_loaded,
            "crew": sorted(self.members(self.window(self.now()))) if self.width else [],
        }
