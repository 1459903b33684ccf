"""CheckpointBook over the in-process store: a new node learns every fact with a LIST and a
GET; a corrupt, foreign or deleted newest checkpoint falls back to the previous one; writes
are create-only; prune keeps the newest few with one DeleteObjects."""

from __future__ import annotations

import hashlib

import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model.checkpoint import Checkpoint, TileDigests
from fusefs.model.codec import Axis, TaskSpace
from fusefs.objects.memory import MemoryStore
from fusefs.objects.s3store import S3Store

SPACE = TaskSpace(Axis(0, 1, 20, 2), Axis(100, 1, 20, 2), ("a", "b"))


def node(bucket: MemoryStore, space: TaskSpace = SPACE) -> CheckpointBook:
    """A fresh node's book (its own S3Store over the shared bucket)."""
    return CheckpointBook(S3Store("s3://bkt/runs", "m", objects=bucket), space)


def checkpoint(window: int, n: int) -> Checkpoint:
    facts = BitMap(range(0, 2 * n, 2))
    digests = TileDigests.for_space(SPACE)
    for t in facts:
        digests.add_task(t, SPACE.rel(t), hashlib.sha256(bytes([t % 256])).hexdigest())
    return Checkpoint(window, facts, {t: 100 + t for t in facts}, digests)


@pytest.fixture
def bucket() -> MemoryStore:
    return MemoryStore()


def test_new_node_learns_with_one_list_and_one_get(bucket: MemoryStore) -> None:
    writer = node(bucket)
    for w, n in ((10, 5), (20, 9), (30, 40)):
        assert writer.write(checkpoint(w, n))
    before = bucket.requests.snapshot()
    cp = node(bucket).latest()
    spent = {k: v - before.get(k, 0) for k, v in bucket.requests.snapshot().items()}
    assert {k: v for k, v in spent.items() if v} == {"LIST": 1, "GET": 1}
    assert cp is not None and cp.window == 30 and cp.facts == checkpoint(30, 40).facts
    assert cp.sizes[4] == 104 and dict(cp.digests.items()) == dict(checkpoint(30, 40).digests)


def test_none_when_there_is_none_or_nothing_newer(bucket: MemoryStore) -> None:
    book = node(bucket)
    assert book.latest() is None
    book.write(checkpoint(10, 3))
    assert book.latest(newer_than=10) is None
    found = book.latest(newer_than=9)
    assert found is not None and found.window == 10


def test_write_is_create_only(bucket: MemoryStore) -> None:
    book = node(bucket)
    assert book.write(checkpoint(10, 3))
    assert not book.write(checkpoint(10, 50))  # someone was first: theirs stays
    found = book.latest()
    assert found is not None and len(found.facts) == 3


def corrupt(bucket: MemoryStore, key: str) -> None:
    body = bytearray(bucket.get(key)[0])
    body[-1] ^= 0xFF
    bucket.put(key, bytes(body))


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "deleted", "foreign", "renamed"])
def test_damaged_newest_falls_back_to_the_previous(bucket: MemoryStore, damage: str) -> None:
    book = node(bucket)
    book.write(checkpoint(10, 5))
    book.write(checkpoint(20, 9))
    key = book.s3.checkpoint_key(20)
    if damage == "corrupt":
        corrupt(bucket, key)
    elif damage == "truncated":
        bucket.put(key, bucket.get(key)[0][:-7])
    elif damage == "foreign":
        other = TaskSpace(SPACE.lat, SPACE.lon, ("a",))
        bucket.delete(key)
        node(bucket, other).write(Checkpoint(20, BitMap([1]), {}, {}))
    elif damage == "renamed":  # a valid checkpoint of window 10 under the name of window 20
        bucket.put(key, bucket.get(book.s3.checkpoint_key(10))[0])
    fresh = node(bucket)
    if damage == "deleted":  # between the LIST and the GET
        listed = fresh.windows()
        bucket.delete(key)
        fresh.windows = lambda: listed  # type: ignore[method-assign]
    cp = fresh.latest()
    assert cp is not None and cp.window == 10 and cp.facts == checkpoint(10, 5).facts
    expected = {"deleted": "missing", "truncated": "corrupt", "renamed": "corrupt"}
    assert [(s.window, s.problem) for s in fresh.skipped] == [(20, expected.get(damage, damage))]


def test_all_damaged_is_none_and_examine_tells_each(bucket: MemoryStore) -> None:
    book = node(bucket)
    for w in (10, 20):
        book.write(checkpoint(w, 4))
        corrupt(bucket, book.s3.checkpoint_key(w))
    bucket.put(book.s3.root("checkpoints") + "notes.txt", b"not ours")  # ignored by name
    assert book.latest() is None and [s.window for s in book.skipped] == [20, 10]
    assert [(e.window, e.problem) for e in book.examine()] == [(10, "corrupt"), (20, "corrupt")]


def test_prune_keeps_the_newest_with_one_delete_objects(bucket: MemoryStore) -> None:
    book = node(bucket)
    for w in range(1, 8):
        book.write(checkpoint(w * 10, 2))
    before = bucket.requests.snapshot()
    assert book.prune(keep=3) == 4
    spent = {k: v - before.get(k, 0) for k, v in bucket.requests.snapshot().items()}
    assert {k: v for k, v in spent.items() if v} == {"LIST": 1, "POST": 1}
    assert book.windows() == [50, 60, 70]
    assert book.prune() == 0


def test_a_checkpoint_of_a_future_window_is_skipped_without_a_get(bucket: MemoryStore) -> None:
    book = node(bucket)
    book.write(checkpoint(10, 5))
    book.write(checkpoint(10**9, 1))  # would hide every segment up to that window
    fresh = node(bucket)
    cp = fresh.latest(now=11)
    assert cp is not None and cp.window == 10
    assert [(s.window, s.problem) for s in fresh.skipped] == [(10**9, "future")]
    assert bucket.requests["GET"] == 1
    unguarded = fresh.latest()  # without the server's window: the newest name wins
    assert unguarded is not None and unguarded.window == 10**9


def test_a_window_that_would_not_sort_is_refused(bucket: MemoryStore) -> None:
    with pytest.raises(ValueError):
        node(bucket).write(checkpoint(10**10, 1))
