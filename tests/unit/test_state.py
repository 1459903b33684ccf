"""The pure state model, against a naive reference built from plain Python sets."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pyroaring import BitMap

from fusefs.model import state as state_module
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.state import WINDOW, MissionState, NotClaimed, NotPending, View

SPACE = TaskSpace(Axis(0, 1, 4, 2), Axis(100, 1, 5, 2), ("a", "b", "c"))
LEASE = 10.0


def _intent() -> BitMap:
    # A ragged intent: not every phrase, and one tile (row 1, col 2) not planned at all, so
    # row/tile queries see gaps.
    skip = set(range(*SPACE.tile_range(1, 2)))
    return BitMap(t for t in range(SPACE.size) if (t * 7) % 5 != 0 and t not in skip)


def expected_views(
    intent: set[int],
    facts: set[int],
    claims: dict[int, float],
    now: float,
    foreign: set[int] | None = None,
    elsewhere: set[int] | None = None,
    protected: set[int] | None = None,
) -> dict[View, set[int]]:
    """The listed views; with other workers' shares (`elsewhere`), pending/ lists the first
    WINDOW tasks of our share, else the last WINDOW of the others' not `protected`."""
    live = {t for t, exp in claims.items() if exp > now and t not in facts}
    available = intent - facts - live - (foreign or set())
    listed = available
    if elsewhere:
        mine = sorted(available - elsewhere)
        helpable = sorted(available - (protected or set()))
        listed = set(mine[:WINDOW]) if mine else set(helpable[-WINDOW:])
    return {View.PENDING: listed, View.CLAIMED: live, View.DONE: set(facts)}


class StateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = MissionState(SPACE, _intent())
        self.intent = set(_intent())
        self.facts: set[int] = set()
        self.claims: dict[int, float] = {}
        self.foreign: set[int] = set()
        self.elsewhere: set[int] = set()
        self.protected: set[int] = set()
        self.now = 1000.0
        self.heard: set[int] = set()  # tasks the listeners were told about since the last check
        self.state.subscribe(self.heard.update)
        self.listed = self._views()

    def _views(self) -> dict[View, set[int]]:
        return {v: set(self.state.bitmap(v)) for v in View}

    tasks = st.integers(0, SPACE.size - 1)

    @rule(task=tasks)
    def claim(self, task: int) -> None:
        # Any available task can be claimed by name, in our share or not.
        live = {t for t, exp in self.claims.items() if exp > self.now}
        if task in self.intent - self.facts - live - self.foreign:
            self.state.claim(task, self.now, LEASE)
            self.claims[task] = self.now + LEASE
        else:
            with pytest.raises(NotPending):
                self.state.claim(task, self.now, LEASE)

    @rule(task=tasks)
    def renew(self, task: int) -> None:
        if task in self.claims:
            self.state.renew(task, self.now, LEASE)
            self.claims[task] = self.now + LEASE
        else:
            with pytest.raises(NotClaimed):
                self.state.renew(task, self.now, LEASE)

    @rule(task=tasks)
    def release(self, task: int) -> None:
        if task in self.claims:
            self.state.release(task)
            del self.claims[task]
        else:
            with pytest.raises(NotClaimed):
                self.state.release(task)

    @rule(task=tasks)
    def commit(self, task: int) -> None:
        assert self.state.add_fact(task) == (task not in self.facts)
        self.facts.add(task)
        self.claims.pop(task, None)

    @rule(batch=st.sets(tasks, max_size=8))
    def remote_facts(self, batch: set[int]) -> None:
        new = self.state.add_facts(BitMap(batch))
        assert set(new) == batch - self.facts
        self.facts |= batch
        for t in batch:
            self.claims.pop(t, None)

    @rule(batch=st.sets(tasks, max_size=4))
    def facts_vanish(self, batch: set[int]) -> None:
        self.state.remove_facts(BitMap(batch))
        self.facts -= batch

    @rule(batch=st.sets(tasks, max_size=6))
    def other_workers_leases(self, batch: set[int]) -> None:
        self.state.set_foreign(BitMap(batch))
        self.foreign = set(batch)

    @rule(lo=tasks, width=st.integers(0, 30), quiet=st.integers(0, 30))
    def shares_change(self, lo: int, width: int, quiet: int) -> None:
        batch = set(range(lo, min(SPACE.size, lo + width)))
        self.state.set_shares(BitMap(batch), BitMap(range(lo, lo + quiet)))
        self.elsewhere = batch
        self.protected = batch & set(range(lo, lo + quiet))

    @rule(task=tasks)
    def claim_lost_to_another_worker(self, task: int) -> None:
        self.state.claim_lost(task)
        self.claims.pop(task, None)
        self.foreign.add(task)

    @rule(dt=st.floats(0, 8))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        expired = self.state.expire(self.now)
        gone = {t for t, exp in self.claims.items() if exp <= self.now}
        assert set(expired) == gone
        for t in gone:
            del self.claims[t]

    def _ref(self) -> dict[View, set[int]]:
        return expected_views(
            self.intent,
            self.facts,
            self.claims,
            self.now,
            self.foreign,
            self.elsewhere,
            self.protected,
        )

    @invariant()
    def views_match_reference(self) -> None:
        for view, tasks in self._ref().items():
            assert set(self.state.bitmap(view)) == tasks, view
        assert set(self.state.pending) == self.intent - self.facts - set(self.claims) - self.foreign

    @invariant()
    def listeners_hear_every_task_that_changed_view(self) -> None:
        """Kernel caches are dropped through the listeners: a change they miss is a stale ls."""
        now = self._views()
        for v in View:
            missed = (now[v] ^ self.listed[v]) - self.heard
            assert not missed, (v, missed)
        self.listed = now
        self.heard.clear()

    @invariant()
    def directory_queries_match_reference(self) -> None:
        for view, tasks in self._ref().items():
            rows = {SPACE.split(t).row for t in tasks}
            assert list(self.state.rows(view)) == sorted(rows)
            for row in range(SPACE.lat.n):
                cols = sorted({SPACE.split(t).col for t in tasks if SPACE.split(t).row == row})
                assert list(self.state.tiles(view, row)) == cols
                assert self.state.row_has(view, row) == bool(cols)
                for col in cols[:2]:
                    expect = sorted(
                        t for t in tasks if SPACE.split(t).row == row and SPACE.split(t).col == col
                    )
                    assert list(self.state.tasks(view, row, col)) == expect

    @invariant()
    def lookups_reach_every_pending_task_and_every_planned_dir(self) -> None:
        pending = self.intent - self.facts - set(self.claims) - self.foreign  # not just listed
        planned = self.intent | self.facts
        releasable = pending | set(self.claims)  # `mv claimed/REL pending/REL` needs the dir
        for view, tasks in (
            (View.PENDING, releasable),
            (View.DONE, planned),
            (View.CLAIMED, planned),
        ):
            for row in range(SPACE.lat.n):
                in_row = {SPACE.split(t).col for t in tasks if SPACE.split(t).row == row}
                assert self.state.row_reachable(view, row) == bool(in_row), (view, row)
                for col in range(SPACE.lon.n):
                    assert self.state.tile_reachable(view, row, col) == (col in in_row)

    @precondition(lambda self: bool(self.claims))
    @invariant()
    def next_expiry_is_the_earliest_lease(self) -> None:
        assert self.state.next_expiry() == min(self.claims.values())


TestStateMachine = StateMachine.TestCase
TestStateMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_queries_resume_from_a_start_position() -> None:
    state = MissionState(SPACE, _intent())
    rows = list(state.rows(View.PENDING))
    assert list(state.rows(View.PENDING, rows[1])) == rows[1:]
    cols = list(state.tiles(View.PENDING, 0))
    assert list(state.tiles(View.PENDING, 0, cols[-1])) == cols[-1:]
    assert list(state.tiles(View.PENDING, 0, cols[-1] + 1)) == []


def test_listeners_hear_every_change() -> None:
    state = MissionState(SPACE, _intent())
    heard: list[int] = []
    state.subscribe(lambda tasks: heard.extend(tasks))
    t = next(iter(state.pending))
    state.claim(t, 0.0, 1.0)
    state.expire(5.0)
    state.add_fact(t)
    assert heard == [t, t, t]


def test_national_scale_memory() -> None:
    # 10M tasks, half done at random: the bitmaps stay within a few MiB.
    import random

    space = TaskSpace(Axis(0, 1, 3163, 3), Axis(0, 1, 3163, 3), ("x",))
    intent = BitMap()
    intent.add_range(0, space.size)
    rng = random.Random(1)
    facts = BitMap(rng.sample(range(space.size), space.size // 2))
    state = MissionState(space, intent, facts)
    size = sum(len(b.serialize()) for b in (state.intent, state.fact, state.pending))
    assert len(state.pending) == space.size - len(facts)
    assert size < 8 * 2**20


def test_our_share_first_then_the_others_then_ours_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Affinity: pending/ lists the start of our share while it has tasks, then the end of the
    others' shares that may be helped with, and ours again when a task of it comes back (the
    listeners hear about every name that leaves the listing)."""
    monkeypatch.setattr(state_module, "WINDOW", 4)
    intent = _intent()
    state = MissionState(SPACE, intent)
    heard: set[int] = set()
    state.subscribe(heard.update)
    theirs = BitMap(t for t in intent if t % 2)
    ours = intent - theirs
    quiet = BitMap(t for t in theirs if t > 40)  # a worker we have not heard from lately
    state.set_shares(theirs, quiet)
    assert state.bitmap(View.PENDING) == BitMap(list(ours)[:4]) and state.pending == intent
    assert heard >= set(intent) - set(ours[:4])  # the rest left the listing
    back = ours.min()
    state.claim(back, 0.0, LEASE)
    state.add_facts(ours - BitMap([back]))
    helpable = list(theirs - quiet)
    assert state.bitmap(View.PENDING) == BitMap(helpable[-4:])  # help, from the far end
    heard.clear()
    state.add_fact(helpable[-1])
    assert state.bitmap(View.PENDING) == BitMap(helpable[-5:-1])
    heard.clear()
    state.release(back)
    assert state.bitmap(View.PENDING) == BitMap([back])
    assert heard >= set(helpable[-5:-1])  # every name that was listed must be dropped
    state.set_shares(BitMap(), BitMap())
    assert state.bitmap(View.PENDING) == state.pending
