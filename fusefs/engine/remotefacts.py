"""The remote half of the sync engine: the remote and synced sets, their persistence, and
learning other workers' witnesses (protocol v2: segment lines, checkpoints, verification
listings, sizes of remote-only witnesses).

A mixin of SyncEngine (sync.py), split off so that each module stays readable (the upload side,
the connection and the loops are in sync.py; the fact log's timing, compaction and start-up in
factlog.py, which calls `learn_facts`, `learn_checkpoint` and `_list_shards` here). A refresh
is a turn of the fact log (one node manifest PUT and one segment GET per window) plus, when
due, a verification listing of this node's shards (`verify`): never a full listing per node.
See sync.py's docstring and docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from pyroaring import BitMap

from fusefs.engine.facts import Facts
from fusefs.engine.threads import blocking as _s3
from fusefs.engine.threads import blocking_each
from fusefs.engine.verify import my_shards
from fusefs.model.checkpoint import UNKNOWN_SIZE, Checkpoint, Sizes
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.segment import Fact
from fusefs.model.sizes import RemoteSizes, usable_size
from fusefs.model.state import MissionState
from fusefs.objects.s3store import WITNESSES, S3Store
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import Journal
from fusefs.statedir.store import LocalStore, replace_text

if TYPE_CHECKING:
    from fusefs.engine.factlog import FactLog
    from fusefs.engine.fleet import FleetClaims

log = logging.getLogger("missionfs")

UPLOAD_BATCH = 256

# Batches of remote facts up to this size are learned on the trio thread (~11 us a fact): the
# thread path's part there (copies of the sets: up to 0.6 ms at 10M facts, the apply, the hop)
# costs about as much as 64 of them (docs/benchmarks.md, "applying a segment no longer stalls").
INLINE_BATCH = 64

Listed = list[tuple[str, int | None]]  # (rel, size) of witnesses from a listing

# What prepare_save() takes: (index, generation, set, sizes) per set, and the cursor.
Saved = tuple[list[tuple[FactIndex, int, BitMap, RemoteSizes | None]], str]


@dataclass(frozen=True)
class _Taken:
    """Copies of the live sets, taken on the trio thread, for a worker thread (the sizes'
    copy is changed there, then adopted)."""

    remote: BitMap
    local: BitMap
    sizes: RemoteSizes


@dataclass(frozen=True)
class _Plan:
    """What a checkpoint teaches, worked out in a worker thread (learn_checkpoint)."""

    new: BitMap  # facts not known when the copies were taken
    remote_only: BitMap  # of them, not local then
    unsized: BitMap  # of those, whose size the checkpoint does not know


@dataclass(frozen=True)
class _Batch:
    """What a batch of (rel, size) teaches, worked out in a worker thread (learn_rels) from
    copies of the sets; its `remote` notes and index lines are written by then."""

    ids: BitMap  # every task of the batch in the plan (learned as remote, local ones too)
    given: BitMap  # not local then, a size given (usable or not): no longer unsized
    tasks: np.ndarray  # of those, the ones with a usable size, ascending (int64)
    sizes: np.ndarray  # their sizes (the batch's last one for a task)
    sizeless: BitMap  # not local then, no size given: unsized unless a size is known


def _checkpoint_sizes(cp: Checkpoint, tasks: BitMap) -> tuple[np.ndarray, np.ndarray]:
    """(task ids, sizes) of those of `tasks` (a subset of the checkpoint's facts) whose size
    the checkpoint knows, as numpy columns: no Python object per fact."""
    column = Sizes.of(cp.facts, cp.sizes)  # in place when decoded from the bucket
    facts = np.frombuffer(cp.facts.to_array(), dtype=np.uint32)
    ids = np.frombuffer(tasks.to_array(), dtype=np.uint32)
    sizes = column.column[np.searchsorted(facts, ids)] if len(ids) else column.column[:0]
    known = (sizes != UNKNOWN_SIZE) & (sizes > 0)
    return ids[known].astype(np.int64), sizes[known].astype(np.uint32)


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


class RemoteFacts:
    """Remote facts and their persistence; mixed into SyncEngine, which sets these up."""

    state: MissionState
    space: TaskSpace
    store: LocalStore
    s3: S3Store
    facts: Facts
    worker: str
    uploaders: int
    remote_index: FactIndex
    synced_index: FactIndex
    sizes: RemoteSizes
    synced: BitMap
    unsized: BitMap
    factlog: FactLog
    counters: SyncCounters
    fleet: FleetClaims | None
    journal: Journal | None
    on_remote_hashes: Callable[[list[tuple[str, str]]], None] | None

    _loading = 0  # checkpoint loads and batches running in a worker thread (learn_*)
    _learning: trio.Lock  # held by either meanwhile (learn_rels, learn_checkpoint)

    @property
    def local(self) -> BitMap:
        """Local witnesses (facts.local): the source of the upload queue `local - synced`."""
        return self.facts.local

    @property
    def remote(self) -> BitMap:
        """Tasks known to have a witness in the bucket (facts.remote, persisted here)."""
        return self.facts.remote

    # -- persistence --------------------------------------------------------------------------
    @staticmethod
    def _load_or_start(index: FactIndex, sizes: RemoteSizes | None = None) -> BitMap:
        """Load a set; without a snapshot start one now, so that other processes reading the
        state dir (status, pending, digest) see the log lines this daemon appends."""
        found = index.load(sizes)
        if found is None:
            found = BitMap()
            index.snapshot(found, index.rotate())
        return found

    def prepare_save(self) -> Saved:
        """Copies of the sets, the remote sizes and the cursor, taken on the trio thread
        (atomic there). While a checkpoint load runs, the remote set is left out: the load
        writes its snapshot itself, and one from here (without the checkpoint's facts, not
        applied yet) would replace it."""
        parts: list[tuple[FactIndex, int, BitMap, RemoteSizes | None]] = []
        if not self._loading:
            gen = self.remote_index.rotate()
            parts.append((self.remote_index, gen, self.remote.copy(), self.sizes.copy()))
        parts.append((self.synced_index, self.synced_index.rotate(), self.synced.copy(), None))
        return parts, self.factlog.state_json()

    def write_save(self, prepared: Saved) -> None:
        """Write what prepare_save() took (blocking: run it in a worker thread)."""
        parts, cursor = prepared
        for idx, gen, bm, sizes in parts:
            idx.snapshot(bm, gen, sizes)
        replace_text(self.factlog.path, cursor)

    def save(self) -> None:
        """Snapshot everything now (blocking; when no other thread touches the engine)."""
        self.write_save(self.prepare_save())

    def close(self) -> None:
        self.remote_index.close()
        self.synced_index.close()

    # -- remote facts -------------------------------------------------------------------------
    def _learn(self, tasks: Iterable[int], *, ours: bool = False) -> BitMap:
        new = BitMap(tasks) - self.remote
        if new:
            rels = [self.space.rel(t) for t in new]
            self.remote_index.append(map(self._sized_line, new, rels))
            if not ours:
                for rel in rels:
                    self.note("remote", rel)
            self.facts.add_remote(new)
        return new

    def _sized_line(self, task: int, rel: str) -> str:
        """A remote log line: `rel<TAB>size` while the size is known (index.py)."""
        size = self.sizes.get(task)
        return rel if size is None else f"{rel}\t{size}"

    def note(self, ev: str, rel: str | None, **fields: Any) -> None:
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

    async def learn_facts(self, facts: list[Fact]) -> int:
        """Learn the facts of a segment (factlog.py): hashes first (the digest's cache: no HEAD
        per remote witness), then the facts with their sizes. Returns how many were new."""
        if not facts:
            return 0
        return await self.learn_rels(await trio.to_thread.run_sync(self._tell_hashes, facts))

    def _tell_hashes(self, facts: list[Fact]) -> Listed:
        """In a worker thread (a Python step per fact: 50 ms for a segment of 24,000): tell
        the digest the facts' hashes; returns their (rel, size)."""
        hashes = [(f.rel, f.sha256) for f in facts if f.sha256]
        if hashes and self.on_remote_hashes is not None:
            self.on_remote_hashes(hashes)
        return [(f.rel, f.size) for f in facts]

    async def learn_rels(self, rels: Listed, found: Listed | None = None) -> int:
        """`_learn_rels` for a batch of any size (a segment: the fleet's ~24,000 facts of a
        window; a verification listing's shards), without holding the trio thread, which
        serves every FUSE request of the mount, for more than a few bitmap operations.

        A worker thread parses the rels, works out the new facts and sizes from copies of the
        sets taken here, and writes their `remote` journal notes (one write) then their index
        lines (one write); the trio thread then applies the result less what changed meanwhile
        (as `learn_checkpoint`). A kill -9 before the index lines leaves the facts unknown and
        the fact log's cursor before the segment (saved after this returns): it is read again
        (its notes then written twice); after them, the facts are known from the index.
        `found`, if given, is extended with the (rel, size) of those that were new facts."""
        if len(rels) <= INLINE_BATCH:
            if found is not None:
                for rel, size in rels:
                    task = self._task(rel)
                    if task is not None and task not in self.remote:
                        found.append((rel, size))
            return self._learn_rels(rels)
        async with self._learning:  # one batch or checkpoint at a time: one rotate-free log
            taken = (self.remote.copy(), self.local.copy(), self.unsized.copy())
            self._loading += 1  # no snapshot of the remote index may drop our log lines
            try:
                batch = await trio.to_thread.run_sync(self._plan_rels, rels, *taken, found)
            finally:
                self._loading -= 1
            return self._apply_rels(batch)

    def _plan_rels(
        self,
        rels: Listed,
        remote: BitMap,
        local: BitMap,
        unsized: BitMap,
        found: Listed | None,
    ) -> _Batch:
        """In a worker thread: `_learn_rels`'s decisions against the copies, and the notes
        and index lines of the new facts (nothing here touches the live sets)."""
        parse, ids, sized, sizeless = self.space.parse_rel, array("I"), {}, array("I")
        for rel, size in rels:
            try:
                task = parse(rel)
            except OutOfPlan:
                continue
            ids.append(task)
            if found is not None and task not in remote:
                found.append((rel, size))
            if size is None:
                sizeless.append(task)
            else:
                sized[task] = size  # a later one wins, as set() in order
        every = BitMap(ids)
        given = BitMap(sized.keys()) - local
        usable = {t: n for t, n in sized.items() if t in given and usable_size(n)}
        tasks = np.fromiter(usable.keys(), dtype=np.int64, count=len(usable))
        order = np.argsort(tasks)
        sizes = np.fromiter(usable.values(), dtype=np.int64, count=len(usable))[order]
        new = every - remote
        rel_of = self.space.rel
        new_rels = [rel_of(t) for t in new]
        lines = [
            rel if (n := usable.get(t)) is None else f"{rel}\t{n}"
            for t, rel in zip(new, new_rels, strict=True)
        ]
        lines += [f"{rel_of(t)}\t{usable[t]}" for t in (given & unsized & remote) if t in usable]
        if self.journal is not None:  # before the index lines: a crash between repeats them
            self.journal.append_many("remote", new_rels)
        self.remote_index.append(lines)
        return _Batch(every, given, tasks[order], sizes, BitMap(sizeless) - local - given)

    def _apply_rels(self, batch: _Batch) -> int:
        """On the trio thread: what the thread worked out, less what changed meanwhile (facts
        learned by another path, witnesses committed or fetched here since the copies: their
        file tells their size)."""
        tasks, sizes = batch.tasks, batch.sizes
        late = batch.given & self.local
        if late:
            keep = ~np.isin(tasks, np.frombuffer(late.to_array(), dtype=np.uint32))
            tasks, sizes = tasks[keep], sizes[keep]
        self.sizes.set_many(tasks, sizes)  # before the facts: no stat sees them sizeless
        self.unsized -= batch.given
        self.unsized |= self.sizes.unknown(batch.sizeless - self.local)
        new = batch.ids - self.remote
        self.facts.add_remote(new)
        self.counters.learned += len(new)
        return len(new)

    async def refresh(
        self, *, full: bool = False, force: bool = False, verify: bool = False
    ) -> int:
        """Learn other workers' witnesses; returns how many new facts were learned.

        Every refresh does what is due in the fact log (factlog.py; `force`: publish our
        manifest now). `full`: a verification listing of this node's shards (its part of the
        fleet's `--full-refresh`); `verify`: of every shard (`missionfs sync --verify`). What a
        verification finds that was not known goes into our next manifest, for everyone."""
        learned = await self.factlog.tick(force=force)
        if full or verify:
            learned += await self.verify(everything=verify)
        self.counters.refreshes += 1
        self.counters.last_refresh = time.time()
        return learned

    async def verify(self, *, everything: bool) -> int:
        """List this node's shards (rendezvous among the crew, verify.py) or all of them."""
        shards = await _s3(self.s3.witness_shards)
        if not everything:
            crew = self.factlog.members(self.factlog.window(self.factlog.now()))
            shards = my_shards(shards, self.worker, crew)
        _, found = await self._list_shards(shards)
        self.factlog.publish_found(found)
        self.counters.full_refreshes += 1
        self.counters.last_full_refresh = time.time()
        if found:
            log.info("verification listing found %d witnesses nobody had published", len(found))
        return len(found)

    async def _list_shards(self, shards: list[str] | None) -> tuple[Listed, Listed]:
        """List witness shards (None: every shard) in parallel; learn what they hold. Returns
        the (rel, size) of every witness listed and of those that were new facts."""
        if shards is None:
            shards = await _s3(self.s3.witness_shards)
        listed: Listed = []

        def one(shard: str, rels: Listed) -> None:
            listed.extend(rels)

        errors = await blocking_each(self.s3.sized_rels_under, shards, self.uploaders, one)
        found: Listed = []
        await self.learn_rels(listed, found)  # what the shards hold, as one batch
        if errors:
            raise errors[0]  # one plain exception, not a group, for the refresh loop
        return listed, found

    async def learn_checkpoint(self, cp: Checkpoint) -> int:
        """Learn a checkpoint's facts with their sizes; returns how many were new.

        A checkpoint may hold millions of facts (a new node, one back after days): what to
        learn, their sizes and their persistence take seconds of CPU, so they are worked out
        in a worker thread from copies taken here, and the trio thread, which serves every
        FUSE request of the mount, only takes the copies and applies the result (a few bitmap
        operations). Persisted as one snapshot of the remote index (written in the thread,
        before any of it is applied: a crash leaves the old index and a cursor that loads the
        checkpoint again, or the new snapshot) and one journal line, not a log line and a
        `remote` note per fact."""
        async with self._learning:  # no batch (learn_rels) logs lines meanwhile
            generation = self.remote_index.rotate()  # lines from now on: replayed over it
            taken = _Taken(self.remote.copy(), self.local.copy(), self.sizes.record())
            self._loading += 1  # the periodic save leaves the remote index to us meanwhile
            try:
                plan = await trio.to_thread.run_sync(self._plan_checkpoint, cp, taken, generation)
            except BaseException:
                self.sizes.forget_changes()
                raise
            finally:
                self._loading -= 1
            return self._apply_checkpoint(cp, plan, taken.sizes)

    def _plan_checkpoint(self, cp: Checkpoint, taken: _Taken, generation: int) -> _Plan:
        """In a worker thread: the new facts, the sizes of the remote-only ones (merged into
        the sizes' copy), and the snapshot of the remote index with them (nothing here touches
        the live sets)."""
        new = cp.facts - taken.remote
        remote_only = new - taken.local
        tasks, sizes = _checkpoint_sizes(cp, remote_only)
        taken.sizes.merge(tasks, sizes)
        unsized = remote_only - BitMap(array("I", tasks.astype(np.uint32).tobytes()))
        if new:  # else the old snapshot and the logs after it still say it all
            self.remote_index.snapshot(taken.remote | new, generation, taken.sizes)
        return _Plan(new, remote_only, unsized)

    def _apply_checkpoint(self, cp: Checkpoint, plan: _Plan, sizes: RemoteSizes) -> int:
        """On the trio thread: what the thread worked out, less what changed meanwhile (facts
        learned by another path, witnesses committed or fetched here since the copies)."""
        new = plan.new - self.remote
        self.sizes.adopt(sizes)  # before the facts: no stat sees them sizeless
        for task in plan.remote_only & self.local:  # local since the copy: its file tells
            self.sizes.drop(task)
        self.unsized |= plan.unsized - self.local - self.remote  # learned since: as it was
        self.facts.add_remote(new)
        self.counters.learned += len(new)
        self.note("checkpoint", None, window=cp.window, facts=len(cp.facts), learned=len(new))
        return len(new)

    def _task(self, rel: str) -> int | None:
        try:
            return self.space.parse_rel(rel)
        except OutOfPlan:
            return None

    # -- remote-only witnesses ----------------------------------------------------------------
    async def fill_sizes(self, batch: int = UPLOAD_BATCH) -> int:
        """HEAD remote-only witnesses whose size no listing or manifest gave (old manifests),
        a batch per refresh; never on a `stat` (getattr shows 0 until then)."""
        todo = list(islice(iter(self.unsized - self.local), batch))
        self.unsized -= self.local
        if not todo:
            return 0
        found = 0

        def size_of(task: int) -> int | None:
            return self.s3.size_of(self.s3.key(WITNESSES, self.space.rel(task)))

        def one(task: int, size: int | None) -> None:
            nonlocal found
            self.unsized.discard(task)  # gone from the bucket: a full listing will tell
            if size is not None and task not in self.local:
                self.sizes.set(task, size)
                self._log_sizes((task,))
                found += 1
                self.state.notify((task,))  # drop the kernel's cached size 0

        errors = await blocking_each(size_of, todo, self.uploaders, one)  # failed: next time
        if errors:
            log.info("sizes of %d remote witnesses not known yet (%s)", len(errors), errors[0])
        return found

    def _log_sizes(self, tasks: Iterable[int]) -> None:
        """Persist sizes learned for tasks already known as remote (a `rel<TAB>size` line)."""
        lines = [self._sized_line(t, self.space.rel(t)) for t in tasks]
        if lines:
            self.remote_index.append(lines)
