"""Shared learning for the fleet simulator (bench/fleet_sim.py): what N nodes do identically.

Every node of a fleet learns every fact: at N = 1,000 nodes x 800 tasks/s, the simulator would
parse 800,000 manifest lines, write 800,000 index and journal lines and insert 800,000 hash
rows per virtual second. That work is local to each node (no request, no await, no effect on
what the node does next beyond its in-memory sets), so the simulator does it ONCE per object
body and applies the result to each node with bitmap operations:

- decoding a fact object (a manifest's or segment's lines): memoised on the body bytes (the
  store hands every reader the same bytes object); the node still makes its GET, counted;
- `RemoteFacts._learn_rels`: the parse (rel -> task id) is memoised on the decoded list; the
  node's effects are applied in bulk: `sizes` (the dense array through numpy, the sparse dict
  with one update), `unsized`, `counters.learned`, and `_learn`;
- `RemoteFacts._learn`: the new facts reach `facts.add_remote` (state, pending, listeners) as
  in the real code; the persistence of remote facts is skipped: the `remote` index log lines,
  the journal's "remote" notes, and the hash cache's rows (`on_remote_hashes`). A simulated
  node never restarts, so nothing reads them back.

`--exact` runs the real functions instead; tests/engine/test_fleet_sim.py checks that both
give the same requests, facts and sizes on a small fleet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from pyroaring import BitMap

from fusefs.engine import remotefacts
from fusefs.engine.remotefacts import RemoteFacts
from fusefs.model import affinity
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.sizes import RemoteSizes


class SharedRels(list[tuple[str, int | None]]):
    """A decoded fact object's (rel, size) pairs, shared by every node that read the same
    body; its parse for a task space is computed once (`parsed`)."""

    def __init__(self, items: Iterable[tuple[str, int | None]]) -> None:
        super().__init__(items)
        self.parsed: dict[int, Parsed] = {}  # id(space) -> parse


@dataclass
class Parsed:
    """(rel, size) pairs as task ids: every task in the plan, those with a size (and the
    sizes, in the same order), and those without one."""

    ids: BitMap
    sized: np.ndarray[Any, np.dtype[np.uint32]]
    sizes: np.ndarray[Any, np.dtype[np.int64]]
    unsized: BitMap = field(default_factory=BitMap)


def parse(rels: Iterable[tuple[str, int | None]], space: TaskSpace) -> Parsed:
    """The task ids of `rels` (out-of-plan names skipped); a later size of a task wins, as
    the real code's successive `sizes.set` calls do."""
    sized: dict[int, int] = {}
    unsized = BitMap()
    ids = BitMap()
    for rel, size in rels:
        try:
            task = space.parse_rel(rel)
        except OutOfPlan:
            continue
        ids.add(task)
        if size is not None and 0 < size < 2**32 - 1:
            sized[task] = size
            unsized.discard(task)
        elif task not in sized:
            unsized.add(task)
    keys = np.fromiter(sized.keys(), dtype=np.uint32, count=len(sized))
    vals = np.fromiter(sized.values(), dtype=np.int64, count=len(sized))
    return Parsed(ids, keys, vals, unsized)


def parsed_for(rels: Iterable[tuple[str, int | None]], space: TaskSpace) -> Parsed:
    if isinstance(rels, SharedRels):
        found = rels.parsed.get(id(space))
        if found is None:
            found = rels.parsed[id(space)] = parse(rels, space)
        return found
    return parse(rels, space)


class BodyCache:
    """Decoded bodies by their bytes, the most recent `lines` lines' worth."""

    def __init__(self, lines: int = 2_000_000) -> None:
        self.limit = lines
        self.lines = 0
        self._bodies: OrderedDict[bytes, SharedRels] = OrderedDict()

    def decode(
        self, body: bytes, decode: Callable[[bytes], list[tuple[str, int | None]]]
    ) -> SharedRels:
        found = self._bodies.get(body)
        if found is not None:
            self._bodies.move_to_end(body)
            return found
        found = SharedRels(decode(body))
        self._bodies[body] = found
        self.lines += len(found)
        while self.lines > self.limit and len(self._bodies) > 1:
            _, old = self._bodies.popitem(last=False)
            self.lines -= len(old)
        return found


def manifest_lines(body: bytes) -> list[tuple[str, int | None]]:
    """`rel<TAB>sha256<TAB>size` lines as (rel, size), as RemoteFacts._read_manifest reads them."""
    out: list[tuple[str, int | None]] = []
    for line in body.decode("utf-8", "surrogateescape").splitlines():
        rel, _, rest = line.partition("\t")
        _, _, size = rest.partition("\t")
        out.append((rel, int(size) if size.isascii() and size.isdigit() else None))
    return out


def set_sizes(sizes: RemoteSizes, tasks: np.ndarray[Any, Any], vals: np.ndarray[Any, Any]) -> None:
    """`sizes.set(t, v)` for every pair (sizes in (0, 2**32 - 1): see `parse`), in bulk."""
    if not len(tasks):
        return
    if sizes._dense is None:
        sizes._sparse.update(zip(tasks.tolist(), vals.tolist(), strict=True))
        if len(sizes._sparse) > max(1024, sizes.space_size // 32):
            sizes._densify()
        return
    dense = np.frombuffer(sizes._dense, dtype=np.uint32)
    sizes._count += int(np.count_nonzero(dense[tasks] == 0))
    dense[tasks] = vals


def fast_learn(self: RemoteFacts, tasks: Iterable[int], *, ours: bool = False) -> BitMap:
    """RemoteFacts._learn without the persistence (see the module docstring)."""
    new = (tasks if isinstance(tasks, BitMap) else BitMap(tasks)) - self.remote
    if new:
        self.facts.add_remote(new)
    return new


def fast_learn_rels(self: RemoteFacts, rels: Iterable[tuple[str, int | None]]) -> int:
    """RemoteFacts._learn_rels in bulk (same effects on the node's memory)."""
    p = parsed_for(rels, self.space)
    local = self.local
    mine = p.ids & local
    sized, vals = p.sized, p.sizes
    if mine and len(sized):
        keep = ~np.isin(sized, np.array(mine.to_array(), dtype=np.uint32))
        sized, vals = sized[keep], vals[keep]
    set_sizes(self.sizes, sized, vals)
    if len(sized):
        self.unsized -= BitMap(sized.tolist())
    for task in p.unsized - local:
        if self.sizes.get(task) is None:
            self.unsized.add(task)
    new = self._learn(p.ids)
    self.counters.learned += len(new)
    return len(new)


BODIES = BodyCache()


def fast_read_manifest(self: RemoteFacts, key: str) -> list[tuple[str, int | None]]:
    """Protocol v1's RemoteFacts._read_manifest: the GET is made; the decoding is shared, and
    the hashes are not handed to the (unused) digest cache."""
    body, _ = self.s3.get(key)
    return BODIES.decode(body, manifest_lines)


class SegmentCache:
    """Protocol v2: `segment.decode` once per body (every node GETs the same bytes object);
    each caller gets its own Segment (header fields copied) around the shared facts list, and
    `learn_facts` finds the facts' (rel, size) pairs, parsed once, by that list."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._decoded: OrderedDict[tuple[bytes, int | None], Any] = OrderedDict()
        self._pairs: dict[int, tuple[list[Any], SharedRels]] = {}  # id(facts) -> pairs

    def decode(self, real: Callable[..., Any], body: bytes, window: int | None = None) -> Any:
        key = (body, window)
        seg = self._decoded.get(key)
        if seg is None:
            seg = real(body, window)  # CorruptSegment propagates, uncached
            self._decoded[key] = seg
            self._pairs[id(seg.facts)] = (seg.facts, SharedRels((f.rel, f.size) for f in seg.facts))
            while len(self._decoded) > self.keep:
                _, old = self._decoded.popitem(last=False)
                self._pairs.pop(id(old.facts), None)
        return dataclasses.replace(seg, manifests=list(seg.manifests), workers=dict(seg.workers))

    def pairs(self, facts: list[Any]) -> SharedRels:
        found = self._pairs.get(id(facts))
        if found is not None and found[0] is facts:
            return found[1]
        return SharedRels((f.rel, f.size) for f in facts)


SEGMENTS = SegmentCache()


async def fast_learn_facts(self: RemoteFacts, facts: list[Any]) -> int:
    """RemoteFacts.learn_facts without the hash cache's rows and the persistence (a
    scheduling checkpoint where the real one waits for a thread or its lock, so that both
    interleave the fleet alike)."""
    if not facts:
        return 0
    await trio.lowlevel.checkpoint()  # the hashes and pairs, in a thread
    if len(facts) > getattr(remotefacts, "INLINE_BATCH", len(facts)):
        await trio.lowlevel.checkpoint()  # learn_rels' lock
        await trio.lowlevel.checkpoint()  # its thread
    return self._learn_rels(SEGMENTS.pairs(facts))


class Rendezvous:
    """Rendezvous hashing (affinity.py's `owner`, segment.py's `rendezvous`) for a fleet whose
    workers are known: every worker's score per key is computed once for the whole fleet
    (the real functions hash every member on every call, on every node: at N = 1,000 and
    1,024 chunks, a million blake2b per node per change of crew). Same answers."""

    def __init__(self, workers: Iterable[str]) -> None:
        self.workers = frozenset(workers)
        self._scores: dict[tuple[str, int], bytes] = {}
        self._ranked: dict[int, list[str]] = {}  # chunk -> every known worker, best first
        self._orders: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._owners: dict[tuple[int, tuple[str, ...], int], list[str | None]] = {}
        self._shares: dict[tuple[int, tuple[str, ...], int], dict[str, BitMap]] = {}

    def score(self, worker: str, chunk: int) -> bytes:
        found = self._scores.get((worker, chunk))
        if found is None:
            found = self._scores[(worker, chunk)] = REAL_SCORE(worker, chunk)
        return found

    def owner(self, chunk: int, workers: Iterable[str]) -> str:
        members = workers if isinstance(workers, set | frozenset) else set(workers)
        if not members <= self.workers:
            return REAL_OWNER(chunk, members)
        ranked = self._ranked.get(chunk)
        if ranked is None:
            ranked = sorted(self.workers, key=lambda w: self.score(w, chunk), reverse=True)
            self._ranked[chunk] = ranked
        return next(w for w in ranked if w in members)

    def owners(self, intent: BitMap, members: tuple[str, ...], chunks: int) -> list[str | None]:
        """The owner of every chunk of `intent` among `members` (None: an empty chunk)."""
        key = (id(intent), members, chunks)
        found = self._owners.get(key)
        if found is None:
            if len(self._owners) > 4096:
                self._owners.clear()
            bounds = affinity.chunk_bounds(intent, chunks)
            ms = set(members)
            found = [
                self.owner(c, ms) if bounds[c] < bounds[c + 1] else None
                for c in range(len(bounds) - 1)
            ]
            self._owners[key] = found
        return found

    def shares(
        self, intent: BitMap, workers: Iterable[str], chunks: int = affinity.CHUNKS
    ) -> dict[str, BitMap]:
        """affinity.shares, from `owners` (the BitMaps are the caller's own)."""
        members = tuple(sorted(set(workers)))
        out = {w: BitMap() for w in members}
        if not members:
            return out
        bounds = affinity.chunk_bounds(intent, chunks)
        for c, who in enumerate(self.owners(intent, members, chunks)):
            if who is not None:
                out[who].add_range(bounds[c], bounds[c + 1])
        return {w: s & intent for w, s in out.items()}

    def help_order(
        self, intent: BitMap, workers: Iterable[str], me: str, chunks: int = affinity.CHUNKS
    ) -> list[tuple[int, int]]:
        """affinity.help_order, from `owners`."""
        members = tuple(sorted(set(workers) | {me}))
        if len(members) == 1:
            return []
        bounds = affinity.chunk_bounds(intent, chunks)
        owners = self.owners(intent, members, chunks)
        theirs = [c for c, who in enumerate(owners) if who is not None and who != me]
        theirs.sort(key=lambda c: self.score(me, c), reverse=True)
        return [(bounds[c], bounds[c + 1]) for c in theirs]

    def split(self, crew: Any, members: list[str]) -> None:
        """affinity.Crew._split (shares, help order and own start of `crew.me` among `members`), from
        `owners` and `shares` computed once per set of members for the whole fleet."""
        ms = tuple(members)
        key = (id(crew.intent), ms, affinity.CHUNKS)
        found = self._shares.get(key)
        if found is None:
            if len(self._shares) > 256:
                self._shares.clear()
            found = self._shares[key] = self.shares(crew.intent, ms)
        crew._shares = dict(found)
        bounds = affinity.chunk_bounds(crew.intent)
        owners = self.owners(crew.intent, ms, affinity.CHUNKS)
        theirs = [c for c, who in enumerate(owners) if who is not None and who != crew.me]
        theirs.sort(key=lambda c: self.score(crew.me, c), reverse=True)
        crew.help_order = [(bounds[c], bounds[c + 1]) for c in theirs] if len(ms) > 1 else []
        mine = [c for c, who in enumerate(owners) if who == crew.me]
        crew.own_start = bounds[max(mine, key=lambda c: self.score(crew.me, c))] if mine else 0

    def rendezvous(self, key: str, members: Iterable[str]) -> list[str]:
        ms = tuple(sorted(set(members)))
        found = self._orders.get((key, ms))
        if found is None:
            if len(self._orders) > 100_000:
                self._orders.clear()
            found = self._orders[(key, ms)] = REAL_RENDEZVOUS(key, ms)
        return list(found)


REAL_PARSE_REL = TaskSpace.parse_rel
PARSED: dict[tuple[int, str], int | OutOfPlan] = {}


def cached_parse_rel(self: TaskSpace, rel: str) -> int:
    """TaskSpace.parse_rel, remembered (every node parses the same names: listings, leases)."""
    found = PARSED.get((id(self), rel))
    if found is None:
        if len(PARSED) > 4_000_000:
            PARSED.clear()
        try:
            found = REAL_PARSE_REL(self, rel)
        except OutOfPlan as e:
            found = e
        PARSED[(id(self), rel)] = found
    if isinstance(found, OutOfPlan):
        raise OutOfPlan(str(found))
    return found


REAL_SCORE: Callable[[str, int], bytes] = affinity._score
REAL_OWNER: Callable[[int, Iterable[str]], str] = affinity.owner
REAL_RENDEZVOUS: Callable[[str, Iterable[str]], list[str]] = lambda key, members: []  # noqa: E731


def deferred_build(self: Any, builder: Any, facts: Iterable[Any]) -> None:
    """FactDuties._build, deferred: the segment's facts (a list shared by every node) are
    remembered by the node's checkpoint builder and added when it builds (the compactor of a
    checkpoint window, once per C windows), not by every node for every segment."""
    pending = builder.__dict__.setdefault("_sim_pending", [])
    pending.append((self, facts))


def _flush_pending(builder: Any) -> None:
    for duties, facts in builder.__dict__.pop("_sim_pending", []):
        REAL_BUILD[0](duties, builder, facts)


def builder_build(self: Any, window: int) -> Any:
    _flush_pending(self)
    return REAL_BUILD[1](self, window)


def builder_len(self: Any) -> int:
    _flush_pending(self)
    return int(REAL_BUILD[2](self))


REAL_BUILD: list[Any] = []


def patches(workers: Iterable[str]) -> list[tuple[Any, str, Callable[..., Any]]]:
    """(owner, attribute, replacement) for the protocol the code under test has."""
    global REAL_RENDEZVOUS
    ranks = Rendezvous(workers)
    out: list[tuple[Any, str, Callable[..., Any]]] = [
        (RemoteFacts, "_learn", fast_learn),
        (RemoteFacts, "_learn_rels", fast_learn_rels),
        (affinity, "_score", ranks.score),
        (affinity, "owner", ranks.owner),
        (affinity, "shares", ranks.shares),
        (TaskSpace, "parse_rel", cached_parse_rel),
    ]
    if hasattr(affinity, "help_order"):  # leases by chunk (strict fleets with shares)
        out.append((affinity, "help_order", ranks.help_order))
    if hasattr(affinity.Crew, "_split"):  # shares and help order in one pass, per node
        out.append((affinity.Crew, "_split", lambda crew, members: ranks.split(crew, members)))
    if hasattr(RemoteFacts, "_read_manifest"):  # protocol v1
        out.append((RemoteFacts, "_read_manifest", fast_read_manifest))
    if hasattr(RemoteFacts, "learn_facts"):  # protocol v2
        from fusefs.model import segment

        real = segment.decode
        REAL_RENDEZVOUS = segment.rendezvous
        out.append((RemoteFacts, "learn_facts", fast_learn_facts))
        out.append((segment, "decode", functools.partial(SEGMENTS.decode, real)))
        out.append((segment, "rendezvous", ranks.rendezvous))
    with contextlib.suppress(ImportError):  # checkpoints (protocol v2)
        from fusefs.engine.factduties import FactDuties
        from fusefs.model.checkpoint import CheckpointBuilder

        REAL_BUILD[:] = [
            FactDuties.__dict__["_build"],
            CheckpointBuilder.__dict__["build"],
            CheckpointBuilder.__dict__["__len__"],
        ]
        out.append((FactDuties, "_build", deferred_build))
        out.append((CheckpointBuilder, "build", builder_build))
        out.append((CheckpointBuilder, "__len__", builder_len))
    return out


@contextlib.contextmanager
def shared_learning(workers: Iterable[str]) -> Iterator[None]:
    """Apply `patches()` for a fleet of these workers (undone on exit, caches emptied)."""
    todo = patches(workers)
    saved = [(o, n, o.__dict__[n] if isinstance(o, type) else getattr(o, n)) for o, n, _ in todo]
    try:
        for owner, name, fn in todo:
            setattr(owner, name, fn)
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        BODIES.__init__(BODIES.limit)  # type: ignore[misc]
        SEGMENTS.__init__(SEGMENTS.keep)  # type: ignore[misc]
        PARSED.clear()
