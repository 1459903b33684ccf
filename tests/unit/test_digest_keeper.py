"""DigestKeeper's state listener in bulk (a checkpoint's millions of facts at once): the same
dirty tiles as task by task, without a Python step per task on the trio thread; and the
bounded memory of content hashes that a change of a fact invalidates."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pyroaring import BitMap

import fusefs.engine.digest as digest_mod
from fusefs.engine.digest import DigestKeeper
from fusefs.engine.facts import Content
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.state import MissionState

SPACE = TaskSpace(Axis(4070, 1, 40, 2), Axis(-7402, 1, 40, 2), ("coffee shop", "plumber", "x"))


class _State:
    def __init__(self, fact: BitMap) -> None:
        self.space = SPACE
        self.fact = fact


def keeper(fact: BitMap, known: BitMap) -> DigestKeeper:
    k = DigestKeeper(cast(MissionState, _State(fact)), cast(Any, None))
    k.known = known
    return k


def test_bulk_changes_dirty_the_same_tiles_as_one_by_one() -> None:
    fact = BitMap(range(0, SPACE.size, 7))
    known = BitMap(range(1, SPACE.size, 11))
    changed = BitMap(range(0, SPACE.size, 2))  # facts, known ones and neither
    bulk, single = keeper(fact, known), keeper(fact, known)
    bulk.changed(changed)
    for task in changed:
        single.changed([task])
    expected = {t // SPACE.nphr for t in changed if t in fact or t in known}
    assert set(bulk.dirty) == set(single.dirty) == expected
    assert len(expected) > 256


def test_remembered_hashes_are_bounded_and_dropped_by_any_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commits' hashes are kept for their tiles, the oldest tiles leave first past the bound,
    and a change of a fact (one by one or in bulk) forgets what was known of it."""
    monkeypatch.setattr(digest_mod, "MEMO_WITNESSES", 10)
    fact = BitMap(range(SPACE.size))
    k = keeper(fact, BitMap())
    nphr = SPACE.nphr
    for task in range(30):
        k.given(task, Content(f"{task:064x}", 1, 2, 3))
    memo = k._memo
    assert k._memo_size == sum(map(len, memo.values())) <= 10
    assert list(memo) == sorted(memo) and max(memo) == 29 // nphr  # the newest tiles stay
    last = max(memo)
    k.changed([last * nphr])
    assert 0 not in memo[last] and k._memo_size == sum(map(len, memo.values()))
    k.changed(BitMap(range(last * nphr, last * nphr + 400)))  # in bulk
    assert last not in memo and k._memo_size == sum(map(len, memo.values()))
