"""DigestKeeper's state listener in bulk (a checkpoint's millions of facts at once): the same
dirty tiles as task by task, without a Python step per task on the trio thread."""

from __future__ import annotations

from typing import Any, cast

from pyroaring import BitMap

from fusefs.engine.digest import DigestKeeper
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
