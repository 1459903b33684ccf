"""Uploads run `uploaders` at a time from trio's thread (fusefs/engine/uploads.py): the
in-process bucket's PUT goes through the engine's threads (S3's goes on trio streams:
tests/mount/test_thin_put.py), small witnesses are read inline, and each upload keeps its
bookkeeping: synced, journal line, manifest line."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from fusefs.engine import uploads
from fusefs.objects import Unavailable
from fusefs.objects.memory import MemoryStore
from fusefs.statedir.journal import read_journal
from fusefs.statedir.store import INLINE_BYTES
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


def witness_puts(bucket: MemoryStore, since: int = 0) -> list[str]:
    log = bucket.log[since:]  # type: ignore[attr-defined]
    return [key for kind, key in log if kind == "PUT" and "/scraped-tiles/" in key]


def test_every_witness_goes_up_once_with_its_bookkeeping(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    node = make_node(bucket=bucket)
    rels = planned(node)
    sync = node.ws.sync
    assert sync is not None
    sync.uploaders = 4
    assert len(rels) > sync.uploaders  # uploaders take the next witness when one is done
    for i, rel in enumerate(rels):
        assert node.direct_write(rel, f"name\nwitness {i}\n".encode()) == 0
    mark = len(bucket.log)  # type: ignore[attr-defined]
    assert node.upload() == 0
    assert len(witness_puts(bucket, mark)) == len(rels)  # one PUT each, no retry, no HEAD
    assert sync.counters.uploaded == len(rels) and sync.queue_size() == 0
    assert sorted(journal_events(node, "upload")) == sorted(rels)
    root = sync.s3.root("scraped-tiles")
    assert sorted(sync.s3.rel_of("scraped-tiles", i.key) for i in bucket.list(root)) == sorted(rels)
    manifests = [bucket.get(i.key)[0].decode() for i in bucket.list(sync.s3.log_root())]
    lines = [line.split("\t") for m in manifests for line in m.splitlines()]
    assert sorted(rel for rel, _, _ in lines) == sorted(rels)  # rel, sha256, size each
    for rel, sha, size in lines:  # the hash sent is the witness's (computed once, reused)
        body = bucket.get(sync.s3.key("scraped-tiles", rel))[0]
        assert (sha, int(size)) == (uploads.sha256_hex(body), len(body))


def test_an_outage_costs_one_refused_put_per_uploader_not_one_per_witness(
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
    sync = node.ws.sync
    assert sync is not None
    sync.uploaders = 3
    outage.down = True
    assert node.upload() == len(rels)  # everything still queued
    assert outage.refused == 3  # the three in flight when the first answer came
    assert node.status()["sync"]["s3"] == "offline"
    outage.down = False
    assert node.upload() == 0  # the witnesses not attempted were kept queued, and go up now
    assert sync.counters.uploaded == len(rels)


def test_a_witness_already_there_is_recognised_by_its_hash(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    """A re-upload after a crash (the synced line was lost): the create answers 412 and the
    SHA-256 of the witness there is read (one HEAD); it matches, the task is synced."""
    node = make_node(bucket=bucket)
    rel = planned(node)[0]
    assert node.direct_write(rel, b"name\nmine\n") == 0
    sync = node.ws.sync
    assert sync is not None
    assert node.upload() == 0
    task = node.mission.space.parse_rel(rel)
    sync.synced.discard(task)  # as if the synced log line had not reached the disk
    mark = len(bucket.log)  # type: ignore[attr-defined]
    assert node.upload() == 0
    key = sync.s3.key("scraped-tiles", rel)
    assert [r for r in bucket.log[mark:] if r[1] == key] == [("PUT", key), ("HEAD", key)]  # type: ignore[attr-defined]
    assert sync.counters.already_there == 1 and task in sync.synced


def test_a_small_witness_is_read_inline_a_large_one_in_a_thread(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, hops: list[Any]
) -> None:
    node = make_node(bucket=bucket)
    small, large = planned(node)[:2]
    assert node.direct_write(small, b"name\nsmall\n") == 0
    rows = b"".join(b"row %d\n" % i for i in range(INLINE_BYTES // 6))
    assert node.direct_write(large, b"name\n" + rows) == 0
    assert node.upload() == 0  # connect first: its hops are not the uploads'
    sync = node.ws.sync
    assert sync is not None
    sp = node.mission.space
    for rel in (small, large):
        sync.synced.discard(sp.parse_rel(rel))
    hops.clear()
    assert node.upload() == 0
    reads = [fn for fn in hops if getattr(fn, "__name__", "") == "read_bytes"]
    assert [fn.__self__.name for fn in reads] == [large.rsplit("/", 1)[1]]


def test_a_batch_is_recorded_with_one_write_per_log(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's `upload` lines and the synced and remote index lines of a batch go in one
    write each (history and caches: a lost line costs a re-upload that finds the witness
    there), while each manifest line is spooled at once (no crash may lose it)."""
    node = make_node(bucket=bucket)
    rels = planned(node)
    for i, rel in enumerate(rels):
        assert node.direct_write(rel, f"name\nwitness {i}\n".encode()) == 0
    sync = node.ws.sync
    assert sync is not None and sync.journal is not None
    writes: list[str] = []
    journal = sync.journal
    real_write = journal._write

    def counted(data: bytes, lines: int) -> bool:
        writes.extend(["journal"] * (b'"ev":"upload"' in data))
        return real_write(data, lines)

    monkeypatch.setattr(journal, "_write", counted)
    for name in ("synced_index", "remote_index"):
        index = getattr(sync, name)

        def spy(rels: Any, real: Any = index.append, name: str = name) -> None:
            got = list(rels)
            writes.extend([name] * bool(got))
            real(got)

        monkeypatch.setattr(index, "append", spy)
    spooled: list[list[str]] = []
    spool = sync.factlog.spool
    real_spool = spool.append

    def spooling(lines: Any) -> None:
        got = list(lines)
        spooled.append(got)
        real_spool(got)

    monkeypatch.setattr(spool, "append", spooling)
    assert node.upload() == 0
    assert sync.counters.uploaded == len(rels) and sync.queue_size() == 0
    assert sorted(writes) == ["journal", "remote_index", "synced_index"]
    assert sorted(journal_events(node, "upload")) == sorted(rels)
    assert [len(lines) for lines in spooled] == [1] * len(rels)  # each as it was made


def test_a_full_disk_while_recording_uploads_loses_nothing_and_wedges_nothing(
    make_node: Callable[..., EngineNode], bucket: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synced and remote index lines are caches: when the disk is full they are not
    written (counted, logged), the uploads stand, and no witness stays held as in flight."""
    node = make_node(bucket=bucket)
    rels = planned(node)
    for i, rel in enumerate(rels):
        assert node.direct_write(rel, f"name\nwitness {i}\n".encode()) == 0
    sync = node.ws.sync
    assert sync is not None

    def full(rels: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sync.synced_index, "append", full)
    assert node.upload() == 0  # nothing left queued, nothing raised
    assert sync.counters.uploaded == len(rels) and sync.counters.errors >= 1
    assert not sync._inflight
    root = sync.s3.root("scraped-tiles")
    assert len(list(bucket.list(root))) == len(rels)
