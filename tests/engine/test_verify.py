"""The verification pass: the crew's shards together list the bucket once, and each node
finds exactly the witnesses it did not know (with their sizes), at one LIST per shard."""

from __future__ import annotations

from pyroaring import BitMap

from fusefs.engine.verify import my_shards, verify
from fusefs.model.codec import Axis, TaskSpace
from fusefs.objects.memory import MemoryStore
from fusefs.objects.s3store import WITNESSES, S3Store

SPACE = TaskSpace(Axis(0, 1, 12, 2), Axis(100, 1, 4, 2), ("a", "b"))
CREW = ["n1", "n2", "n3"]


def test_the_crew_verifies_the_bucket_once_and_finds_what_it_lacked() -> None:
    bucket = MemoryStore()
    s3 = S3Store("s3://bkt/runs", "m", objects=bucket)
    witnesses = BitMap(range(0, SPACE.size, 3))
    for t in witnesses:
        bucket.put(s3.key(WITNESSES, SPACE.rel(t)), b"x" * (t + 1))
    bucket.put(s3.key(WITNESSES, "9.99/1.00/a.csv"), b"off the grid")
    known = BitMap(list(witnesses)[::2])
    shards = s3.witness_shards()
    assert len(shards) == 13  # 12 latitudes + the one off the grid

    found: list[tuple[int, str, int | None]] = []
    listed = outside = 0
    for worker in CREW:
        before = bucket.requests["LIST"]
        mine = my_shards(shards, worker, CREW)
        result = verify(s3, SPACE, mine, known)
        assert bucket.requests["LIST"] - before == len(mine) == result.shards
        found += result.new
        listed += result.listed
        outside += result.outside
    assert listed == len(witnesses) + 1 and outside == 1
    assert sorted(t for t, _, _ in found) == list(witnesses - known)
    assert all(rel == SPACE.rel(t) and size == t + 1 for t, rel, size in found)
