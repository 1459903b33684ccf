"""Uploads hand several witnesses to a worker thread at a time (fusefs/engine/uploads.py), with
the bookkeeping of one upload per witness unchanged: synced, journal line, manifest line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from fusefs.engine import uploads
from fusefs.objects import Unavailable
from fusefs.objects.memory import MemoryStore
from fusefs.statedir.journal import read_journal
from tests.engine.driver import EngineNode, FakeClock, memory_bucket


class Outage:
    """A bucket limiter that answers witness PUTs "unavailable" while `down`, counting them."""

    def __init__(self) -> None:
        self.down = False
        self.refused = 0

    def admit(self, kind: str, key: str, now: float) -> None:
        if self.down and kind == "PUT" and "/scraped-tiles/" in key:
            self.refused += 1
            raise Unavailable(f"PUT {key}: endpoint unreachable; will retry")


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The functions handed to trio's worker threads, in order."""
    seen: list[Any] = []
    real = trio.to_thread.run_sync

    async def spy(fn: Any, *args: Any, **kw: Any) -> Any:
        seen.append(fn)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(trio.to_thread, "run_sync", spy)
    yield seen


def planned(node: EngineNode) -> list[str]:
    sp = node.mission.space
    return [sp.rel(t) for t in node.mission.intent]


def journal_events(node: EngineNode, ev: str) -> list[str]:
    return [e["rel"] for e in read_journal(node.ws.store.root / "journal") if e["ev"] == ev]


def test_a_batch_of_witnesses_goes_up_in_one_hop_each_with_its_bookkeeping(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, hops: list[Any]
) -> None:
    node = make_node(bucket=bucket)
    rels = planned(node)
    assert len(rels) >= 2 * uploads.PER_HOP - 1
    for i, rel in enumerate(rels):
        assert node.direct_write(rel, f"name\nwitness {i}\n".encode()) == 0
    hops.clear()
    assert node.upload() == 0
    chunks = [fn for fn in hops if fn is uploads.upload_chunk]
    assert len(chunks) == len(rels) // uploads.PER_HOP  # one per witness before
    sync = node.ws.sync
    assert sync is not None
    assert sync.counters.uploaded == len(rels) and sync.queue_size() == 0
    assert sorted(journal_events(node, "upload")) == sorted(rels)
    root = sync.s3.root("scraped-tiles")
    assert sorted(sync.s3.rel_of("scraped-tiles", i.key) for i in bucket.list(root)) == sorted(rels)
    manifests = [bucket.get(i.key)[0].decode() for i in bucket.list(sync.s3.log_root())]
    lines = [line.split("\t") for m in manifests for line in m.splitlines()]
    assert sorted(rel for rel, _, _ in lines) == sorted(rels)  # rel, sha256, size each


def test_an_outage_costs_one_refused_put_per_hop_not_one_per_witness(
    make_node: Callable[..., EngineNode], clock: FakeClock
) -> None:
    outage = Outage()
    bucket = memory_bucket(clock)
    bucket.limiter = outage
    node = make_node(bucket=bucket)
    rels = planned(node)
    assert node.upload() == 0  # connected, nothing queued yet
    for rel in rels:
        assert node.direct_write(rel, b"name\nw\n") == 0
    outage.down = True
    assert node.upload() == len(rels)  # everything still queued
    assert node.ws.sync is not None
    n_hops = len(uploads.split(list(range(len(rels))), node.ws.sync.uploaders))
    assert outage.refused == n_hops
    assert node.status()["sync"]["s3"] == "offline"
    outage.down = False
    assert node.upload() == 0  # the skipped witnesses were kept queued, and go up now


def test_a_witness_already_there_needs_no_second_hop(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, hops: list[Any]
) -> None:
    """A re-upload after a crash (the synced line was lost): the create answers 412 and the
    SHA-256 of the witness there is read in the same hop; it matches, the task is synced."""
    node = make_node(bucket=bucket)
    rel = planned(node)[0]
    assert node.direct_write(rel, b"name\nmine\n") == 0
    sync = node.ws.sync
    assert sync is not None
    assert node.upload() == 0
    task = node.mission.space.parse_rel(rel)
    sync.synced.discard(task)  # as if the synced log line had not reached the disk
    hops.clear()
    assert node.upload() == 0
    assert hops == [uploads.upload_chunk]  # no HEAD of its own (nor a manifest: not new)
    assert sync.counters.already_there == 1 and task in sync.synced


def test_split_keeps_every_task_once_and_few_hops() -> None:
    tasks = list(range(100))
    for threads in (1, 3, 16):
        parts = uploads.split(tasks, threads)
        assert sorted(t for p in parts for t in p) == tasks
        assert len(parts) == min(threads, 100 // uploads.PER_HOP)
    assert uploads.split(tasks[:5], 16) == [tasks[:5]]  # a trickle: one hop
    assert uploads.split([], 16) == []
