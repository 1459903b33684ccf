"""RemoteSizes: the sizes of remote-only witnesses, in little memory at any scale, kept with
the remote facts across restarts (index.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyroaring import BitMap

from fusefs.engine.facts import remote_logs_without_snapshot
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.sizes import RemoteSizes
from fusefs.statedir.index import FactIndex


def test_sparse_then_dense_then_freed() -> None:
    sizes = RemoteSizes(100_000)
    assert sizes.get(5) is None
    sizes.set(5, 123)
    sizes.set(6, 0)  # unknown stays unknown
    assert sizes.get(5) == 123 and sizes.get(6) is None and len(sizes) == 1
    for t in range(5000):  # more than 1/32 of the space: the dense array
        sizes.set(t, t + 1)
    assert sizes._dense is not None and not sizes._sparse
    assert len(sizes) == 5000 and sizes.get(4999) == 5000 and sizes.get(5000) is None
    sizes.set(7, 2**40)  # too big for 32 bits: kept aside
    assert sizes.get(7) == 2**40 and len(sizes) == 5000
    for t in range(5000):
        sizes.drop(t)
    assert len(sizes) == 0 and sizes._dense is None and sizes.get(7) is None
    sizes.set(9, 10)
    assert sizes.get(9) == 10 and sizes._dense is None
    sizes.set(11, 10**30)  # from a hostile manifest: ignored, never an st_size overflow
    assert sizes.get(11) is None


def test_merge_sets_many_sizes_at_once_like_set() -> None:
    """merge() (a checkpoint's sizes, numpy when dense) ends as a `set` per task would."""
    tasks = np.arange(0, 20_000, 3, dtype=np.int64)
    values = (tasks % 500 + 1).astype(np.uint32)
    for start in ({}, {4: 9, 5: 2**40, 3: 2**40}):  # empty; sparse with a huge one merged over
        merged, one_by_one = RemoteSizes(100_000), RemoteSizes(100_000)
        for task, size in start.items():
            merged.set(task, size)
            one_by_one.set(task, size)
        merged.merge(tasks, values)
        for task, size in zip(tasks.tolist(), values.tolist(), strict=True):
            one_by_one._huge.pop(task, None)
            one_by_one.set(task, size)
        assert merged._dense is not None and len(merged) == len(one_by_one)
        assert all(merged.get(t) == one_by_one.get(t) for t in range(20_010))
    few = RemoteSizes(100_000)
    few.merge(tasks[:10], values[:10])  # a few: stays a dict
    assert few._dense is None and [few.get(t) for t in (0, 3, 27)] == [1, 4, 28]


def test_set_many_ends_as_a_set_each_hostile_and_huge_sizes_included() -> None:
    """set_many() (a segment's sizes on the trio thread, in bulk) ends as a `set` per task
    would, sparse or dense: a size of 0 or an absurd one (a hostile manifest) is skipped,
    one of 4 GiB and more is kept aside, a small one replaces a huge one; and while a copy
    is changed elsewhere (record()), its changes are redone by adopt()."""
    for count in (40, 20_000):  # sparse, then enough for the dense array
        tasks = np.arange(0, 3 * count, 3, dtype=np.int64)
        values = (tasks % 500 + 1).astype(np.int64)
        values[:4] = [0, 2**62, 2**33, 7]
        bulk, each = RemoteSizes(100_000), RemoteSizes(100_000)
        for sizes in (bulk, each):
            sizes.set(9, 2**35)  # huge, then small below
        bulk.set_many(tasks, values)
        for t, n in zip(tasks.tolist(), values.tolist(), strict=True):
            each.set(t, n)
        probe = [*range(0, 3 * count + 3), 9]
        assert [bulk.get(t) for t in probe] == [each.get(t) for t in probe]
        assert len(bulk) == len(each) and bulk.get(6) == 2**33 and bulk.get(9) == values[3]
        copy = bulk.record()
        bulk.set_many(np.array([1, 2], dtype=np.int64), np.array([11, 12], dtype=np.int64))
        bulk.adopt(copy)
        assert (bulk.get(1), bulk.get(2), bulk.get(9)) == (11, 12, values[3])


def test_a_copy_changed_elsewhere_is_adopted_with_the_changes_made_meanwhile() -> None:
    """record() / adopt(): a checkpoint's sizes go into a copy (a worker thread) while the
    live sizes keep changing (the trio thread); adopting the copy keeps those changes."""
    live = RemoteSizes(100_000)
    live.set(1, 10)
    live.set(2, 20)
    copy = live.record()
    copy.merge(np.arange(3, 5000, dtype=np.int64), np.full(4997, 7, dtype=np.uint32))
    live.set(4, 44)  # learned meanwhile by another path
    live.drop(2)  # fetched meanwhile
    live.set(6000, 2**40)
    live.adopt(copy)
    assert [live.get(t) for t in (1, 2, 3, 4, 4999, 5000, 6000)] == [
        10,
        None,
        7,
        44,
        7,
        None,
        2**40,
    ]
    live.set(9, 99)  # no longer recorded
    assert live._changes is None and len(live) == 1 + 4997 + 1


# -- kept with the remote facts (index.py): a restart shows them without asking S3 -------------
SPACE = TaskSpace(Axis(4070, 1, 40, 2), Axis(-7402, 1, 40, 2), ("coffee shop", "plumber"))


def _remote(directory: Path) -> tuple[FactIndex, RemoteSizes, BitMap | None]:
    idx = FactIndex(directory, SPACE, "remote")
    sizes = RemoteSizes(SPACE.size)
    return idx, sizes, idx.load(sizes)


def _known(sizes: RemoteSizes) -> dict[int, int]:
    return {t: n for t in range(SPACE.size) if (n := sizes.get(t)) is not None}


def test_sizes_round_trip_through_snapshot_and_logs(tmp_path: Path) -> None:
    idx = FactIndex(tmp_path, SPACE, "remote")
    before = RemoteSizes(SPACE.size)
    for task, size in ((1, 10), (2, 20), (4, 2**40)):
        before.set(task, size)
    idx.snapshot(BitMap([1, 2, 3, 4]), idx.rotate(), before.copy())  # 3: ours, no size
    idx.append([f"{SPACE.rel(5)}\t50", SPACE.rel(6), f"{SPACE.rel(2)}\t21"])  # 2: a later size
    idx.close()
    with open(tmp_path / f"remote-{idx.generation}.log", "a") as f:
        f.write(f"{SPACE.rel(7)}\t7")  # torn by a kill -9: neither the fact nor the size
    _, sizes, facts = _remote(tmp_path)
    assert facts == BitMap([1, 2, 3, 4, 5, 6])
    assert _known(sizes) == {1: 10, 2: 21, 4: 2**40, 5: 50}
    assert sizes.unknown(BitMap([1, 3, 4, 6])) == BitMap([3, 6])
    # Readers that want only the facts (fsck, status, pending, digest) take the rel.
    assert FactIndex(tmp_path, SPACE, "remote").load() == facts
    (tmp_path / "remote.roaring").unlink()  # a daemon before its first snapshot
    assert remote_logs_without_snapshot(tmp_path, SPACE) == BitMap([2, 5, 6])


def test_dense_sizes_round_trip(tmp_path: Path) -> None:
    """A node joining a finished fleet: every task remote-only, the dense array both ways."""
    idx = FactIndex(tmp_path, SPACE, "remote")
    before = RemoteSizes(SPACE.size)
    tasks = BitMap(range(0, SPACE.size, 2))
    for task in tasks:
        before.set(task, task + 100)
    assert before._dense is not None
    idx.snapshot(tasks, idx.rotate(), before.copy())
    size_file = tmp_path / f"remote-{idx.generation}.sizes"
    assert size_file.stat().st_size < 4 * len(tasks) + 200  # 4 bytes a remote fact
    _, sizes, facts = _remote(tmp_path)
    assert facts == tasks and sizes._dense is not None
    assert _known(sizes) == {t: t + 100 for t in tasks}
    assert sizes.unknown(BitMap(range(4))) == BitMap([1, 3])


def test_a_crash_between_sizes_file_and_snapshot_keeps_the_older_pair(tmp_path: Path) -> None:
    idx = FactIndex(tmp_path, SPACE, "remote")
    one = RemoteSizes(SPACE.size)
    one.set(1, 11)
    idx.snapshot(BitMap([1]), idx.rotate(), one.copy())
    idx.append([f"{SPACE.rel(2)}\t22"])
    gen = idx.rotate()
    two = RemoteSizes(SPACE.size)
    two.set(1, 99)
    idx._write_sizes(BitMap([1, 2]), gen, two)  # then killed before the snapshot's rename
    _, sizes, facts = _remote(tmp_path)
    assert facts == BitMap([1, 2]) and _known(sizes) == {1: 11, 2: 22}
    idx.snapshot(BitMap([1, 2]), gen, two)  # the next save completes: older files go
    assert [p.name for p in tmp_path.glob("remote-*.sizes")] == [f"remote-{gen}.sizes"]
    assert _known(_remote(tmp_path)[1]) == {1: 99}


def test_state_dir_without_sizes_and_damaged_sizes_files(tmp_path: Path) -> None:
    """A state dir from before sizes were kept, or a sizes file that does not match its
    snapshot: the facts load, the sizes stay unknown (the engine lists the bucket for them)."""
    idx = FactIndex(tmp_path, SPACE, "remote")
    idx.snapshot(BitMap([1, 2]), idx.rotate())  # the old format: no sizes file
    idx.append([SPACE.rel(3)])
    idx.close()
    _, sizes, facts = _remote(tmp_path)
    assert facts == BitMap([1, 2, 3]) and len(sizes) == 0
    good = RemoteSizes(SPACE.size)
    good.set(1, 5)
    idx.snapshot(BitMap([1, 2]), idx.rotate(), good)
    path = tmp_path / f"remote-{idx.generation}.sizes"
    body = path.read_bytes()
    for damaged in (body[:-2], b"not json\n" + body.partition(b"\n")[2], b""):
        path.write_bytes(damaged)
        _, sizes, facts = _remote(tmp_path)
        assert facts == BitMap([1, 2]) and len(sizes) == 0
