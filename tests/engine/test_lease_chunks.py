"""Leases by chunk (fleet.py, leases.py): what a refresh lists, claim races with shares, adoption
after a restart, helpers, tombstone batches; the real FleetClaims and LeaseBook over one
in-process bucket (MemoryStore) shared by many nodes, each a MissionState without a mount.

Each node here is what FleetClaims needs of a sync engine (fleet.FleetHost) and nothing more:
facts reach the other nodes through a `Board` two rounds later (as segments would, about two
refresh intervals), and the tests drive refreshes, claims and tombstone deletes round by round
on a clock of their own (the bucket's clock, and fleet.py's wall and monotonic time).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from pyroaring import BitMap

import fusefs.engine.fleet
import fusefs.engine.leases
from fusefs.engine.fleet import LeaseListing
from fusefs.engine.leases import GRACE, LeaseBook, chunk_of_task, chunk_range, chunks_of_part
from fusefs.model.affinity import MEMBER_SECONDS, shares
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.state import WINDOW, MissionState
from fusefs.objects.memory import MemoryStore
from fusefs.objects.s3store import CLAIMS, S3Store, chunk_name

BUCKET_URL = "s3://chunks/runs"
MISSION = "chunks"
LEASE = 600.0
REFRESH = 10.0
# 1024 x 1024 tiles x 1 phrase: 1M task ids, 1,024 lease chunks, affinity chunks of 1,024 tasks.
SPACE = TaskSpace(Axis(0, 1, 1024, 0), Axis(0, 1, 1024, 0), ("a",))


class Clock:
    """Wall and monotonic time of fleet.py and leases.py, and the bucket's clock."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Counters:
    lost_claims: int = 0


@dataclass
class Board:
    """Facts published by the nodes: learned by the others `delay` rounds later."""

    delay: int = 2
    published: list[tuple[int, int]] = field(default_factory=list)  # (round, task)

    def visible(self, now_round: int) -> BitMap:
        return BitMap(t for r, t in self.published if r + self.delay <= now_round)


class Node:
    """A FleetHost: one worker's state and FleetClaims over the shared bucket."""

    def __init__(
        self, bucket: MemoryStore, worker: str, intent: BitMap, mode: str = "strict"
    ) -> None:
        self.state = MissionState(SPACE, intent.copy())
        self.space = SPACE
        self.worker = worker
        self.claims_mode = mode
        self.counters = Counters()
        self.s3 = S3Store(BUCKET_URL, MISSION, objects=bucket)
        book = LeaseBook(self.s3, worker, LEASE, SPACE)
        self.fleet = fusefs.engine.fleet.FleetClaims(self, book, REFRESH, timeout=60.0)
        self.done: list[int] = []  # tasks this node's workers completed

    # -- FleetHost ----------------------------------------------------------------------------
    def answered(self) -> None:
        pass

    def went_offline(self, why: str | Exception) -> None:
        raise AssertionError(f"the in-process bucket never goes away: {why}")

    def note(self, ev: str, rel: str, **fields: Any) -> None:
        pass

    async def flush_manifest(self) -> None:
        pass

    # -- what the engine and the mount do -----------------------------------------------------
    async def a_refresh(self, facts: BitMap | None = None) -> LeaseListing:
        """One refresh: leases listed, facts learned, leases applied."""
        listing = await self.fleet.list_live()
        if facts is not None:
            self.state.add_facts(facts)
        self.fleet.apply(listing)
        return listing

    def refresh(self, facts: BitMap | None = None) -> LeaseListing:
        return trio.run(self.a_refresh, facts)

    async def a_claim(self, task: int, now: float) -> bool:
        """`mv pending/REL claimed/REL` with strict claims: local claim, then the lease."""
        self.state.claim(task, now, LEASE)
        won: bool = await self.fleet.claim(task)
        return won

    def claim(self, task: int, now: float) -> bool:
        return trio.run(self.a_claim, task, now)

    def complete(self, task: int) -> None:
        self.state.add_fact(task)
        self.fleet.retire(task)
        self.done.append(task)

    def retire_due(self) -> int:
        return trio.run(self.fleet.retire_due)

    def observe_all(self, workers: list[str], now: float) -> None:
        """The crew as segments show it (engineer A's sync calls crew.observe)."""
        for w in workers:
            self.fleet.crew.observe(w, now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(fusefs.engine.fleet, "time", c)
    monkeypatch.setattr(fusefs.engine.leases, "time", c)
    yield c


@pytest.fixture
def bucket(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock.time)


def lists(bucket: MemoryStore) -> int:
    return bucket.requests["LIST"]


def full_intent() -> BitMap:
    intent = BitMap()
    intent.add_range(0, SPACE.size)
    return intent


def test_chunk_keys_are_not_confused_with_v1_keys(bucket: MemoryStore) -> None:
    """A lease key is claims/{chunk}/LAT/LON/FILE; a v1 key claims/LAT/LON/FILE (even with a
    10-digit latitude) and a key whose chunk is not its rel's are not leases."""
    s3 = S3Store(BUCKET_URL, MISSION, objects=bucket)
    rel = SPACE.rel(5000)
    key = s3.lease_key(chunk_of_task(5000), rel)
    assert key == f"runs/{MISSION}/{CLAIMS}/{chunk_name(4)}/{rel}" and chunk_name(4) == "0000000004"
    assert s3.lease_rel_of(key) == (4, rel)
    root = s3.root(CLAIMS)
    for other in (
        f"{root}{rel}",  # protocol v1
        f"{root}1234567890/20/a.csv",  # v1 with a latitude of 10 digits
        f"{root}{chunk_name(4)}/{rel}/x",  # one part too many
        f"{root}4/{rel}",  # not zero-padded
        f"{root}{chunk_name(4)}//5/a.csv",
    ):
        assert s3.lease_rel_of(other) is None, other
    body = b'{"worker": "old", "lease": 600}'
    bucket.put(f"{root}{rel}", body)  # a v1 lease of a task
    bucket.put(s3.lease_key(7, rel), body)  # in the wrong chunk (another TaskSpace)
    book = LeaseBook(s3, "me", LEASE, SPACE)
    assert book.live() == [] and book.live([4, 7]) == []
    assert [lease.rel for lease in LeaseBook(s3, "view", LEASE).live()] == [rel]  # no space


def test_a_refresh_lists_one_or_two_chunks_among_twenty_nodes(
    bucket: MemoryStore, clock: Clock
) -> None:
    """20 nodes with 8 workers each, in a bucket holding 3,000 leases of a larger fleet: after
    the one full listing at start, each refresh LISTs only the 1-2 chunks of its view and of
    its own leases, and hides the other nodes' leases found there."""
    workers = [f"node-{i:02d}" for i in range(20)]
    rest = S3Store(BUCKET_URL, MISSION, objects=bucket)
    for i in range(3000):  # the rest of the fleet, at work in the top chunks
        task = SPACE.size - 1 - 7 * i
        bucket.put(rest.lease_key(chunk_of_task(task), SPACE.rel(task)), b'{"worker": "far"}')
    nodes = [Node(bucket, w, full_intent()) for w in workers]
    for n in nodes:
        n.observe_all(workers, clock.now)
        before = lists(bucket)
        listing = n.refresh()
        assert listing.chunks is None  # the start-up listing: all of claims/, 3+ pages
        assert lists(bucket) - before >= 3
    rng = random.Random(1)
    for n in nodes:
        names = list(n.state.pending_view())
        assert len(names) == WINDOW
        for task in rng.sample(names, 8):
            assert n.claim(task, clock.now)
    clock.advance(REFRESH)
    per_refresh = []
    for n in nodes:
        before = lists(bucket)
        listing = n.refresh()
        per_refresh.append(lists(bucket) - before)
        assert listing.chunks is not None and 1 <= len(listing.chunks) <= 2
        held = {chunk_of_task(t) for t in n.fleet.held}
        assert held <= listing.chunks
        view = n.state.pending_view()
        assert not view & n.state.foreign and len(view) == WINDOW
    assert max(per_refresh) <= 2, per_refresh
    # The leases of the other nodes in a node's chunks are hidden from it.
    claimed = {t: n.worker for n in nodes for t in n.state.claimed}
    for n in nodes:
        last = n.refresh()
        assert last.chunks is not None
        theirs = {
            t for t, w in claimed.items() if w != n.worker and chunk_of_task(t) in last.chunks
        }
        assert theirs <= set(n.state.foreign)


def no_shares(now: float, *, offline: bool = False) -> None:
    """Stands in for FleetClaims.update_shares in a fleet without shares."""


@dataclass
class FleetRun:
    nodes: list[Node]
    rounds: list[tuple[int, int, int]] = field(default_factory=list)  # (pending, claims, refused)
    max_posts: int = 0  # most DeleteObjects by one node in one round

    def refused(self, busy: int = 0) -> tuple[int, int]:
        """(refused, claims) over the rounds that began with at least `busy` tasks pending."""
        kept = [(c, r) for p, c, r in self.rounds if p >= busy]
        return sum(r for _, r in kept), sum(c for c, _ in kept)

    def done(self) -> Counter[int]:
        return Counter(t for n in self.nodes for t in n.done)


def run_fleet(
    bucket: MemoryStore,
    clock: Clock,
    intent: BitMap,
    *,
    shares: bool = True,
    pick: str = "random",
    rounds: int = 200,
) -> FleetRun:
    """20 strict nodes of 4 workers each claim and complete in rounds of one refresh interval
    until every task is done (or `rounds` have passed). Each worker takes a random name of its
    node's pending/ (`find pending | shuf -n 1`), or with pick="first" the first names (`ls |
    head`). Without `shares`, nodes never compute shares: pending/ shows every pending task."""
    workers = [f"node-{i:02d}" for i in range(20)]
    board = Board()
    rng = random.Random(7)
    run = FleetRun([Node(bucket, w, intent) for w in workers])
    for n in run.nodes:
        n.observe_all(workers, clock.now)  # the crew as segments show it
        if not shares:
            n.fleet.update_shares = no_shares  # type: ignore[method-assign]

    async def one_round(rnd: int) -> None:
        facts = board.visible(rnd)
        for n in run.nodes:
            await n.a_refresh(facts)
        pending = len(intent) - len(facts)
        refused_before = sum(n.counters.lost_claims for n in run.nodes)
        claims = 0
        for n in run.nodes:
            view = list(n.state.pending_view())
            picked = view[:4] if pick == "first" else rng.sample(view, min(4, len(view)))
            for task in picked:
                claims += 1
                if await n.a_claim(task, clock.now):
                    n.complete(task)
                    board.published.append((rnd, task))
        refused = sum(n.counters.lost_claims for n in run.nodes) - refused_before
        run.rounds.append((pending, claims, refused))
        clock.advance(REFRESH)
        for n in run.nodes:
            before = bucket.requests["POST"]
            await n.fleet.retire_due()
            run.max_posts = max(run.max_posts, bucket.requests["POST"] - before)

    for rnd in range(rounds):
        if len(board.visible(rnd)) == len(intent):
            break
        trio.run(one_round, rnd)
    return run


def test_strict_nodes_with_shares_do_no_duplicate_work_and_rarely_race(
    bucket: MemoryStore, clock: Clock
) -> None:
    """20 strict nodes x 4 workers, facts learned two rounds late: every task done exactly
    once (leases, and tombstones until the facts are known); claim refusals (PUT 412 + GET)
    about none while every node works its own share, few in the end (helpers, each on its own
    range of the others' shares); at most one DeleteObjects per node per round. Without shares
    the same fleet races on nearly every claim when workers take the first names."""
    intent = BitMap(range(0, 3 * 1024, 2))  # 1,536 tasks over 3 chunks
    for pick in ("random", "first"):
        run = run_fleet(MemoryStore(clock=clock.time), clock, intent, pick=pick)
        done = run.done()
        assert set(done) == set(intent) and max(done.values()) == 1, pick
        refused, claims = run.refused(busy=4 * 80)
        assert refused <= claims // 100, (pick, refused, claims, run.rounds)
        refused, claims = run.refused()
        assert refused <= claims // 10, (pick, refused, claims, run.rounds)
        assert run.max_posts == 1
    control = run_fleet(bucket, clock, intent, shares=False, pick="first", rounds=5)
    refused, claims = control.refused()
    assert refused >= claims // 2, (refused, claims)
    assert max(control.done().values()) == 1


def test_own_leases_are_adopted_after_a_restart_wherever_they_are(
    bucket: MemoryStore, clock: Clock
) -> None:
    """A node holding a lease far from its view restarts with nothing claimed (its claims log
    lost): the first listing (all of claims/) adopts it; later ones list its chunk with the
    view's, the held lease's chunk included."""
    workers = ["node-a", "node-b"]
    a = Node(bucket, "node-a", full_intent())
    a.observe_all(workers, clock.now)
    a.refresh()
    far = SPACE.size - 10
    assert chunk_of_task(far) not in {chunk_of_task(t) for t in a.state.pending_view()}
    assert a.claim(far, clock.now)
    clock.advance(REFRESH)
    again = Node(bucket, "node-a", full_intent())
    again.observe_all(workers, clock.now)
    again.fleet.update_shares(clock.now)  # pending/ is already a window of a's share
    assert chunk_of_task(far) not in (again.fleet.chunks_to_list() or {chunk_of_task(far)})
    listing = again.refresh()
    assert listing.chunks is None
    assert far in again.state.claimed and far in again.fleet.held
    later = again.refresh()
    assert later.chunks is not None and chunk_of_task(far) in later.chunks
    assert len(later.chunks) <= 3
    assert far in again.state.claimed


def test_a_helper_takes_a_silent_nodes_share_in_a_strict_fleet(
    bucket: MemoryStore, clock: Clock
) -> None:
    """Node b falls silent. Once a has done its own share, a's pending/ shows b's share, range
    by range in a's help order; an optimistic fleet protects it instead until b has been silent
    MEMBER_SECONDS. After that, b's share is a's own in both modes."""
    workers = ["node-a", "node-b"]
    intent = BitMap(range(0, 4096))
    mine = shares(intent, workers)["node-a"]
    theirs = intent - mine
    for mode in ("strict", "optimistic"):
        fleet_bucket = MemoryStore(clock=clock.time)
        a = Node(fleet_bucket, "node-a", intent, mode)
        a.observe_all(workers, clock.now)
        a.refresh()
        assert set(a.state.pending_view()) <= set(mine)
        a.state.add_facts(mine)  # a's share done
        clock.advance(4 * REFRESH)  # b silent: no segment line, no lease
        a.refresh()
        view = a.state.pending_view()
        if mode == "strict":  # the first range of a's help order, from the top
            lo, hi = a.fleet.crew.help_order[0]
            assert view and view == theirs & BitMap(range(lo, hi))
            a.state.add_facts(view)
            lo, hi = a.fleet.crew.help_order[1]  # then the next
            assert a.state.pending_view() == theirs & BitMap(range(lo, hi))
        else:
            assert not view  # protected: b may hold finished work made offline
        clock.advance(MEMBER_SECONDS)
        a.refresh()
        assert a.fleet.crew.members == ("node-a",)
        assert a.state.pending_view() == theirs - a.state.fact  # a's now: every task shown


def test_foreign_leases_of_chunks_not_listed_stay_hidden_until_they_expire(
    bucket: MemoryStore, clock: Clock
) -> None:
    """b holds a lease in a chunk a listed once (its start-up listing) and no longer lists:
    a keeps it hidden until its expiry on the server's clock, then shows it again."""
    workers = ["node-a", "node-b"]
    b = Node(bucket, "node-b", full_intent())
    far = SPACE.size - 3
    b.state.claim(far, clock.now, LEASE)
    assert trio.run(b.fleet.claim, far)
    a = Node(bucket, "node-a", full_intent())
    a.observe_all(workers, clock.now)
    a.refresh()
    assert far in a.state.foreign
    clock.advance(REFRESH)
    listing = a.refresh()
    assert listing.chunks is not None and chunk_of_task(far) not in listing.chunks
    assert far in a.state.foreign  # still hidden: not listed, not expired
    clock.advance(LEASE + GRACE + 1)
    a.refresh()
    assert far not in a.state.foreign and far in a.state.pending


def test_tombstones_go_in_one_delete_objects_per_round(bucket: MemoryStore, clock: Clock) -> None:
    """2,500 finished tasks' leases: each retire pass deletes at most 1,000 in one request."""
    n = Node(bucket, "node-a", full_intent())
    n.refresh()
    tasks = list(range(2500))
    for task in tasks:
        assert n.claim(task, clock.now)
        n.complete(task)
    clock.advance(n.fleet.retire_seconds + 1)
    deleted = []
    for _ in range(3):
        before = bucket.requests["POST"]
        deleted.append(n.retire_due())
        assert bucket.requests["POST"] - before == 1
    assert deleted == [1000, 1000, 500]
    assert list(n.s3.leases_in(None)) == []
    lo, hi = chunk_range(0)
    assert (lo, hi) == (0, 1024)


def test_lease_history_is_found_by_chunk(clock: Clock) -> None:
    """`missionfs log` reads a lease's versions under claims/{chunk}/: for a rel, a tile or a
    row it lists only their chunks; a v1 key is never taken for a lease."""
    bucket = MemoryStore(clock=clock.time, versioned=True)
    s3 = S3Store(BUCKET_URL, MISSION, objects=bucket)
    book = LeaseBook(s3, "node-a", LEASE, SPACE)
    rels = [SPACE.rel(t) for t in (5 * 1024 + 3, 5 * 1024 + 900, 9 * 1024)]
    for rel in rels:
        etag = book.acquire(rel)
        assert etag is not None
        book.release(rel, etag)
    bucket.put(f"{s3.root(CLAIMS)}{rels[0]}", b"{}")  # v1
    assert chunks_of_part(SPACE, rels[0]) == [5]
    assert chunks_of_part(SPACE, "5/") == [5]  # row 5: ids 5,120..6,143
    assert chunks_of_part(SPACE, "5/3/") == [5] and chunks_of_part(SPACE, "") is None
    assert chunks_of_part(SPACE, "x/") is None
    found = Counter(rel for rel, _ in s3.lease_versions(rels[0], [5]))
    assert found == {rels[0]: 2}  # the lease and its delete marker
    assert {rel for rel, _ in s3.lease_versions("5/", [5])} == set(rels[:2])
    assert Counter(rel for rel, _ in s3.lease_versions("", None)) == {r: 2 for r in rels}


def test_a_small_mission_is_listed_whole_in_one_request(bucket: MemoryStore, clock: Clock) -> None:
    """When the chunks to list are every chunk of the intent (here 2), one listing of claims/
    costs less than one per chunk; a larger mission lists its chunks."""
    small = Node(bucket, "node-a", BitMap(range(0, 2048, 4)))
    small.refresh()
    assert small.fleet.chunks_to_list() is None
    before = lists(bucket)
    assert small.refresh().chunks is None and lists(bucket) - before == 1
    large = Node(bucket, "node-b", BitMap(range(0, 16 * 1024, 4)))
    large.observe_all(["node-a", "node-b"], clock.now)
    large.refresh()
    assert large.fleet.chunks_to_list() is not None


def test_a_helper_refused_twice_pauses_until_its_next_listing(
    bucket: MemoryStore, clock: Clock
) -> None:
    """Helping near a mission's end: what a's last listing showed pending in b's share may be
    taken since. A refused helper claim hides that range of b's share; a second one pauses
    helping until a's next lease listing, so a stale view costs at most two PUT 412 + GET per
    listing. Our own share is never hidden that way."""
    workers = ["node-a", "node-b"]
    intent = BitMap(range(0, 4096))
    a = Node(bucket, "node-a", intent)
    b = Node(bucket, "node-b", intent)
    for n in (a, b):
        n.observe_all(workers, clock.now)
        n.refresh()
    mine = shares(intent, workers)["node-a"]
    a.state.add_facts(mine)
    a.fleet.update_shares(clock.now)
    (lo1, hi1), (_, hi2) = a.fleet.crew.help_order[:2]
    first, second = hi1 - 1, hi2 - 1  # the tops of a's first two ranges: where a looks first
    for task in (first, second):
        assert b.claim(task, clock.now)  # b works there since a's last listing
    assert first in a.state.pending_view()
    assert not a.claim(first, clock.now)  # refused: b's lease
    view = a.state.pending_view()
    assert view and not view & BitMap(range(lo1, hi1)) and second in view
    assert not a.claim(second, clock.now)  # refused again: a pauses helping
    assert not a.state.pending_view()
    assert a.counters.lost_claims == 2
    clock.advance(REFRESH)
    a.refresh()  # the next listing: b's leases are known, the rest of b's share helpable
    view = a.state.pending_view()
    assert view == (BitMap(range(lo1, hi1)) & intent) - mine - BitMap([first])
