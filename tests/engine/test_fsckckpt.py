"""fsck's checkpoint audit over the in-process store, case by case: a v1 bucket gets a note
only; a v2 bucket without a checkpoint, with one of a future window or with facts that have no
witness is reported and rebuilt from the listing; a sound one is left alone."""

from __future__ import annotations

import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.engine.fsckckpt import PROTOCOL_KEY, CheckpointAudit, Listed
from fusefs.model.checkpoint import Checkpoint, TileDigests
from fusefs.model.codec import Axis, TaskSpace
from fusefs.objects.memory import MemoryStore
from fusefs.objects.s3store import S3Store

SPACE = TaskSpace(Axis(0, 1, 10, 2), Axis(100, 1, 10, 2), ("a", "b"))
W = 30
NOW = 1_800_000_000.0  # server time of the listing: window 60,000,000
WITNESSES = BitMap(range(0, 200, 3))


def setup(v2: bool = True) -> tuple[S3Store, CheckpointBook]:
    bucket = MemoryStore(clock=lambda: NOW)
    s3 = S3Store("s3://bkt/runs", "m", objects=bucket)
    if v2:
        bucket.put(f"{s3.base}/{PROTOCOL_KEY}", b'{"version": 2, "window": %d}' % W)
    return s3, CheckpointBook(s3, SPACE)


def audit(s3: S3Store) -> CheckpointAudit:
    listing = {t: Listed(t + 10, NOW - 3600) for t in WITNESSES}  # written an hour ago
    a = CheckpointAudit(s3, SPACE, listing, NOW, {3: "ab" * 32})
    a.run()
    return a


def test_a_v1_bucket_gets_a_note_only() -> None:
    s3, _ = setup(v2=False)
    a = audit(s3)
    assert not a.findings and "protocol v1" in a.notes[0]


def test_a_sound_checkpoint_is_left_alone() -> None:
    s3, book = setup()
    book.write(Checkpoint(int(NOW // W) - 1, WITNESSES))
    a = audit(s3)
    assert not a.findings and "0 not in it" in a.notes[0]


@pytest.mark.parametrize("case", ["none", "future", "extra"])
def test_damage_is_found_and_rebuilt_from_the_listing(case: str) -> None:
    s3, book = setup()
    now = int(NOW // W)
    if case == "future":
        book.write(Checkpoint(now + 100, WITNESSES))
    elif case == "extra":
        book.write(Checkpoint(now - 1, WITNESSES | BitMap([199])))
    a = audit(s3)
    kinds = {
        "none": "checkpoint-missing",
        "future": "checkpoint-future",
        "extra": "checkpoint-extra",
    }
    assert [f.kind for f in a.findings] == [kinds[case]]
    ok, how = a.rebuild()
    assert ok and f"{now - 2:010d}.ckpt" in how
    assert book.windows() == [now - 2]  # the damaged one deleted
    fresh = book.latest()
    assert fresh is not None and fresh.facts == WITNESSES and fresh.sizes[3] == 13
    assert isinstance(fresh.digests, TileDigests) and fresh.digests.hashed == BitMap([3])
    assert not audit(s3).findings


def test_a_fact_whose_witness_came_after_the_listing_is_not_extra() -> None:
    """A checkpoint written while fsck listed may hold witnesses PUT after the listing."""
    s3, book = setup()
    book.write(Checkpoint(int(NOW // W) - 1, WITNESSES | BitMap([199])))
    s3.objects.put(s3.key("scraped-tiles", SPACE.rel(199)), b"late\n")
    assert not audit(s3).findings
