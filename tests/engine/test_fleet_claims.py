"""Strict fleet claims between two nodes sharing one in-process bucket (leases, engine/leases.py):
the real SyncEngine and LeaseBook over a MemoryStore whose clock is the test's, no server."""

from __future__ import annotations

import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fusefs.engine.leases import GRACE
from fusefs.objects.memory import MemoryStore
from tests.engine.driver import LEASE, EngineNode, FakeClock

REL = "10.0/20.2/plumber.csv"
RELS = [f"10.{r}/20.{c}/{p}" for r in (0, 1) for c in (0, 1) for p in ("coffee shop.csv",)]


def pair(make_node: Callable[..., EngineNode], bucket: MemoryStore) -> tuple[EngineNode, ...]:
    a = make_node(bucket=bucket, name="a", claims="strict", worker="worker-a")
    b = make_node(bucket=bucket, name="b", claims="strict", worker="worker-b")
    return a, b


def test_of_two_nodes_claiming_at_once_exactly_one_wins(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    """Both nodes see the task pending and `mv` it at the same moment (two threads): one lease
    object is created, the other claim gets ENOENT and the task leaves its pending/."""
    a, b = pair(make_node, bucket)
    for rel in RELS:
        with ThreadPoolExecutor(2) as ex:
            codes = list(ex.map(EngineNode.claim, (a, b), (rel, rel)))
        assert sorted(codes) == [0, errno.ENOENT], (rel, codes)
        winner, loser = (a, b) if codes[0] == 0 else (b, a)
        assert winner.exists(f"claimed/{rel}") and not loser.exists(f"claimed/{rel}")
        assert not loser.exists(f"pending/{rel}")  # now the other worker's
        assert (rel, winner.sync.worker) in a.leases()
    assert len(a.leases()) == len(RELS) == len(b.leases())


def test_a_released_claim_can_be_won_by_the_other_node(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    a, b = pair(make_node, bucket)
    assert a.claim(REL) == 0
    assert b.claim(REL) == errno.ENOENT
    assert b.leases() == [(REL, "worker-a")]
    b.refresh()
    assert not b.exists(f"pending/{REL}")  # A's live lease hides it
    assert a.release(REL) == 0  # `rm claimed/REL`: the lease object is deleted
    assert b.leases() == []
    b.refresh()
    assert b.exists(f"pending/{REL}")  # no live lease: pending for B again
    assert b.claim(REL) == 0
    assert a.leases() == [(REL, "worker-b")]
    a.refresh()
    assert not a.exists(f"pending/{REL}")


def test_an_expired_lease_is_taken_over_and_its_old_holder_loses_the_task(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, clock: FakeClock
) -> None:
    """A lease expires at LastModified + lease + GRACE on the bucket's clock: before that the
    other node's claim fails; after it, the other node takes it over (If-Match on the ETag it
    judged expired) and the old holder's renewal (`touch`) finds it lost."""
    a, b = pair(make_node, bucket)
    assert a.claim(REL) == 0
    clock.advance(LEASE + GRACE - 1)
    assert b.claim(REL) == errno.ENOENT  # not expired yet, grace included
    clock.advance(2)
    assert b.leases() == []  # expired on the bucket's clock
    b.refresh()
    assert b.exists(f"pending/{REL}")
    assert b.claim(REL) == 0  # taken over
    assert b.leases() == [(REL, "worker-b")]
    assert a.renew(REL) == errno.ENOENT  # A's lease was taken over: its claim ends
    assert not a.exists(f"claimed/{REL}")
    assert b.renew(REL) == 0
    assert b.exists(f"claimed/{REL}")
