"""Work affinity: shares of the intent among live workers (pure functions)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pyroaring import BitMap

import fusefs.model.state as state_module
from fusefs.model.affinity import (
    MEMBER_SECONDS,
    SETTLE_SECONDS,
    Crew,
    chunk_bounds,
    help_order,
    others_share,
    shares,
)
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.state import WINDOW, MissionState

WORKERS = ["host-a-1", "host-b-7", "laptop", "vm-3"]


def share(intent: BitMap, workers: list[str], me: str) -> BitMap:
    return intent - others_share(intent, workers, me)


def test_shares_partition_the_intent_and_are_balanced() -> None:
    intent = BitMap(range(0, 200_000, 2))  # 100k tasks, every other id
    shares = {w: share(intent, WORKERS, w) for w in WORKERS}
    assert sum(len(s) for s in shares.values()) == len(intent)
    assert BitMap.union(*shares.values()) == intent
    for w, s in shares.items():
        assert 0.15 < len(s) / len(intent) < 0.35, (w, len(s))


def test_a_sparse_intent_is_balanced_too() -> None:
    # Three dense clusters far apart in the id space (an intent tree, not a grid).
    intent = BitMap(range(10, 3010)) | BitMap(range(5_000_000, 5_001_000)) | BitMap([9_999_999])
    sizes = [len(share(intent, WORKERS[:2], w)) for w in WORKERS[:2]]
    assert sum(sizes) == len(intent) and min(sizes) > 0.35 * len(intent)


def test_a_worker_leaving_moves_only_its_own_share() -> None:
    intent = BitMap(range(50_000))
    before = {w: share(intent, WORKERS, w) for w in WORKERS}
    rest = WORKERS[:-1]
    after = {w: share(intent, rest, w) for w in rest}
    for w in rest:
        assert before[w] <= after[w]  # nobody loses tasks: only the leaver's are handed out
    assert BitMap.union(*(after[w] - before[w] for w in rest)) == before[WORKERS[-1]]


def test_alone_a_worker_has_everything_and_bounds_cover_the_intent() -> None:
    intent = BitMap([3, 4, 8, 100])
    assert others_share(intent, [], "solo") == BitMap()
    assert others_share(intent, ["solo"], "solo") == BitMap()
    bounds = chunk_bounds(intent, chunks=3)
    assert bounds[0] == 0 and bounds[-1] == 101 and bounds == sorted(bounds)
    assert chunk_bounds(BitMap()) == [0, 0]


def test_crew_protects_the_shares_of_silent_and_returning_workers() -> None:
    intent = BitMap(range(10_000))
    crew = Crew("me", intent, quiet=10.0)
    assert crew.shares(0.0) is None  # alone: nothing changes
    crew.observe("b", 0.0)
    elsewhere, protected = crew.shares(0.0) or (BitMap(), BitMap())
    assert elsewhere == others_share(intent, ["me", "b"], "me") and elsewhere
    assert protected == elsewhere  # b just appeared: not helped with before it settles
    assert crew.shares(0.0) is None  # unchanged: no new answer
    for t in range(0, int(SETTLE_SECONDS) + 10, 5):  # b keeps working
        crew.observe("b", float(t))
    assert crew.shares(SETTLE_SECONDS + 5) == (elsewhere, BitMap())  # settled: help allowed
    assert crew.shares(SETTLE_SECONDS + 5, offline=True) == (elsewhere, elsewhere)
    assert crew.shares(SETTLE_SECONDS + 5) == (elsewhere, BitMap())  # back online
    assert crew.shares(SETTLE_SECONDS + 30) == (elsewhere, elsewhere)  # b went silent
    crew.observe("b", SETTLE_SECONDS + 31)  # back: protected until it settles again
    assert crew.shares(SETTLE_SECONDS + 32) is None
    for t in range(int(SETTLE_SECONDS) + 31, 2 * int(SETTLE_SECONDS) + 40, 5):
        crew.observe("b", float(t))
    assert crew.shares(2 * SETTLE_SECONDS + 40) == (elsewhere, BitMap())
    assert crew.shares(MEMBER_SECONDS + 200) == (BitMap(), BitMap())  # gone: its share is ours
    assert crew.members == ("me",)


def test_a_crew_computes_what_the_pure_functions_do_and_a_help_order_per_helper() -> None:
    """Crew hashes each worker's chunk scores once and reuses them as members come and go:
    its shares and help order are exactly shares() and help_order(). The help order holds the
    others' chunks only, and two helpers order them differently (so they spread out)."""
    intent = BitMap(range(0, 30_000, 3))
    crew = Crew("host-a-1", intent, quiet=10.0)
    members = ["host-a-1"]
    for t, w in enumerate([*WORKERS[1:], "late-1", "late-2"]):
        crew.observe(w, float(t))
        members.append(w)
        elsewhere, _ = crew.shares(float(t)) or (BitMap(), BitMap())
        mine = shares(intent, members)["host-a-1"]
        assert elsewhere == intent - mine
        assert crew.help_order == help_order(intent, members, "host-a-1")
        helped = BitMap()
        for lo, hi in crew.help_order:
            helped.add_range(lo, hi)
        assert helped & intent == elsewhere and not helped & mine
    other = help_order(intent, members, "host-b-7")
    assert crew.help_order[:5] != other[:5]
    assert help_order(intent, ["solo"], "solo") == []


def test_workers_who_know_different_parts_of_the_crew_still_start_apart() -> None:
    """At a fleet's start every node knows a different few of the others (leases and segments
    arrive one by one). Views that were the first tasks of each partial share all sat in the
    mission's first chunks (the first chunk where a node beats the 3 it knows is a low one for
    everyone): up to 29 of 100 nodes showed the same task and claims raced. Each node now
    works its share in its own rendezvous order, and its best chunks are its own under any
    crew: views overlap only where two nodes' best chunks meet."""
    space = TaskSpace(Axis(0, 1, 1000, 3), Axis(0, 1, 100, 3), ("x", "y"))
    intent = BitMap()
    intent.add_range(0, space.size)
    rng = random.Random(7)
    names = [f"node-{i}" for i in range(100)]
    shown: Counter[int] = Counter()
    for me in names:
        crew = Crew(me, intent, 60.0, guard=False)
        for other in rng.sample([n for n in names if n != me], 3):
            crew.observe(other, 0.0)
        state = MissionState(space, intent)
        changed = crew.shares(0.0)
        assert changed is not None
        state.set_shares(*changed, crew.help_order, crew.own_start)
        view = state.pending_view()
        assert len(view) == WINDOW and view <= intent - changed[0]  # our share only
        shown.update(view)
    excess = sum(n - 1 for n in shown.values())
    assert max(shown.values()) <= 4 and excess < 0.15 * len(names) * WINDOW, (excess, shown)


def test_our_view_starts_at_our_best_chunk_and_wraps_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The view is the first WINDOW tasks of our share from `own_start` up, then from the
    share's first task (our best chunk's tasks done, the view moves on upwards)."""
    monkeypatch.setattr(state_module, "WINDOW", 25)
    space = TaskSpace(Axis(0, 1, 10, 3), Axis(0, 1, 10, 3), ("x",))
    state = MissionState(space, BitMap(range(100)))
    state.set_shares(BitMap(range(40)), BitMap(), [], 85)
    assert state.pending_view() == BitMap([*range(85, 100), *range(40, 50)])
    state.add_facts(BitMap(range(85, 95)))
    assert state.pending_view() == BitMap([*range(95, 100), *range(40, 60)])
    state.set_shares(BitMap(range(40)), BitMap(), [], 0)
    assert state.pending_view() == BitMap(range(40, 65))
