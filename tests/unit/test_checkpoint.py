"""The checkpoint codec: a round trip keeps facts, sizes and tile digests; any damaged,
truncated, foreign or hostile body is a CorruptCheckpoint (never another exception); tile
digests are order-independent set hashes that a repeated witness does not change."""

from __future__ import annotations

import hashlib
import json
import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from fusefs.model.checkpoint import (
    UNKNOWN_SIZE,
    Checkpoint,
    CheckpointBuilder,
    CorruptCheckpoint,
    ForeignCheckpoint,
    Sizes,
    TileDigests,
    decode,
    encode,
    fingerprint,
    peek_window,
)
from fusefs.model.codec import Axis, TaskSpace

SPACE = TaskSpace(Axis(4070, 1, 30, 2), Axis(-7402, 1, 40, 2), ("coffee shop", "a/b", "100%"))
FP = fingerprint(SPACE)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample(seed: int = 1, n: int = 500) -> Checkpoint:
    rng = random.Random(seed)
    facts = BitMap(rng.sample(range(SPACE.size), n))
    sizes = {t: rng.randrange(1, 5000) for t in facts if rng.random() < 0.7}
    digests = TileDigests.for_space(SPACE)
    for t in list(facts)[: n // 2]:
        digests.add(SPACE.rel(t), sha(str(t)))
    return Checkpoint(1234, facts, sizes, digests)


def same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.window == b.window
    assert a.facts == b.facts
    assert dict(a.sizes.items()) == dict(b.sizes.items())
    assert dict(a.digests.items()) == dict(b.digests.items())


def test_round_trip_keeps_everything() -> None:
    cp = sample()
    back = decode(encode(cp, FP), FP)
    same(cp, back)
    assert isinstance(back.digests, TileDigests) and isinstance(cp.digests, TileDigests)
    assert back.digests.hashed == cp.digests.hashed
    assert isinstance(back.sizes, Sizes)
    unknown = next(t for t in cp.facts if t not in cp.sizes)
    assert unknown not in back.sizes and back.sizes.get(unknown) is None
    known = next(iter(cp.sizes))
    assert back.sizes[known] == cp.sizes[known]
    assert sorted(back.sizes.known()) == sorted(cp.sizes.items())
    assert peek_window(encode(cp, FP)) == 1234


def test_empty_checkpoint_and_plain_digest_mapping() -> None:
    cp = Checkpoint(0, BitMap())
    same(cp, decode(encode(cp, FP), FP))
    plain = Checkpoint(7, BitMap([1, 2]), {1: 10, 99: 5}, {0: b"\x01" * 16})
    back = decode(encode(plain, FP, SPACE.tile_size), FP)
    assert dict(back.sizes.items()) == {1: 10}  # the size of a non-fact is dropped
    assert dict(back.digests.items()) == {0: b"\x01" * 16}


def test_sizes_outside_32_bits_are_unknown_and_dense_sizes_are_read() -> None:
    facts = BitMap([3, 4, 5, 6])
    sizes = Sizes.of(facts, {3: 0, 4: UNKNOWN_SIZE, 5: 2**40, 6: 12})
    assert dict(sizes.items()) == {6: 12}
    dense = array("I", [0] * 10)
    dense[3], dense[6] = 7, 9
    assert dict(Sizes.from_dense(facts, dense).items()) == {3: 7, 6: 9}


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.integers(0, SPACE.size - 1), max_size=200))
def test_round_trip_any_fact_set(window: int, tasks: list[int]) -> None:
    facts = BitMap(tasks)
    sizes = {t: t % 977 + 1 for t in tasks[::2]}
    cp = Checkpoint(window, facts, sizes)
    same(cp, decode(encode(cp, FP), FP))


def test_another_space_is_foreign() -> None:
    other = TaskSpace(SPACE.lat, SPACE.lon, ("coffee shop", "a/b"))
    assert fingerprint(other) != FP
    assert fingerprint(TaskSpace(SPACE.lat, SPACE.lon, SPACE.phrases)) == FP
    with pytest.raises(ForeignCheckpoint):
        decode(encode(sample(), FP), fingerprint(other))


def test_every_single_byte_change_is_corrupt() -> None:
    body = encode(sample(n=40), FP)
    rng = random.Random(5)
    positions = list(range(len(body)))
    for pos in rng.sample(positions, 300) + positions[:60] + positions[-40:]:
        bad = bytearray(body)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptCheckpoint):
            decode(bytes(bad), FP)


def test_every_truncation_is_corrupt() -> None:
    body = encode(sample(n=40), FP)
    for cut in range(len(body)):
        with pytest.raises(CorruptCheckpoint):
            decode(body[:cut], FP)
    with pytest.raises(CorruptCheckpoint):
        decode(body + b"\0", FP)


def rewrite(body: bytes, **changes: object) -> bytes:
    """The body with header fields changed, its sha256 recomputed unless given."""
    head, _, payload = body.partition(b"\n")
    header = json.loads(head)
    header.pop("sha256")
    header.update(changes)
    if "sha256" in changes:
        return json.dumps(header).encode() + b"\n" + payload
    return forged(payload, **header)


HOSTILE: list[dict[str, object]] = [
    {"v": 1},
    {"v": True},
    {"v": "2"},
    {"window": -1},
    {"window": 1.5},
    {"window": None},
    {"window": 10**30},
    {"tasks": 10**12},
    {"tasks": -5},
    {"tasks": True},
    {"bitmap": 10**9},
    {"bitmap": -1},
    {"hashed": 3},
    {"tiles": 2**40},
    {"tiles": 1},
    {"tile": 0},
    {"sha256": 5},
    {"sha256": None},
    {"fingerprint": ["x"]},
]


@pytest.mark.parametrize("changes", HOSTILE, ids=[json.dumps(c) for c in HOSTILE])
def test_hostile_header_values_are_corrupt(changes: dict[str, object]) -> None:
    with pytest.raises(CorruptCheckpoint):
        decode(rewrite(encode(sample(n=40), FP), **changes), FP)


EMPTY, TWO = BitMap().serialize(), BitMap([1, 2]).serialize()


def test_a_forged_body_is_accepted_when_well_formed() -> None:
    """The forgery helper makes valid bodies (so the cases below fail for their own reason)."""
    body = forged(
        EMPTY + EMPTY + TWO + b"\1" * 32,
        tasks=0,
        bitmap=len(EMPTY),
        hashed=len(EMPTY),
        tiles=2,
        tilemap=len(TWO),
    )
    assert dict(decode(body, FP).digests.items()) == {1: b"\1" * 16, 2: b"\1" * 16}


def forged(payload: bytes, **fields: object) -> bytes:
    """A body whose sha256 matches: only the structure checks can refuse it."""
    header: dict[str, object] = {"v": 2, "window": 1, "fingerprint": FP, "tile": 3}
    header.update({"hashed": 0, "tiles": 0, "tilemap": 0}, **fields)
    canon = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    header["sha256"] = hashlib.sha256(canon + b"\n" + payload).hexdigest()
    return json.dumps(header).encode() + b"\n" + payload


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n",
        b"[]\n",
        b'"x"\n',
        b"\xff\xfe\n",
        b"[" * 5000 + b"\n",
        b'{"v":2}' + b" " * 5000 + b"\n",
        forged(b"garbage!", tasks=0, bitmap=8),
        forged(
            BitMap([1, 2]).serialize() + b"\0" * 8, tasks=1, bitmap=len(BitMap([1, 2]).serialize())
        ),
        forged(b"\0" * 4, tasks=1, bitmap=0),
        forged(
            BitMap([1]).serialize() + b"\0" * 4 + BitMap([9]).serialize(),
            tasks=1,
            bitmap=len(BitMap([1]).serialize()),
            hashed=len(BitMap([9]).serialize()),
        ),
        forged(  # a tile map of 2 tiles, the header says 3 (and 3 digests follow)
            EMPTY + EMPTY + TWO + b"\1" * 48,
            tasks=0,
            bitmap=len(EMPTY),
            hashed=len(EMPTY),
            tiles=3,
            tilemap=len(TWO),
        ),
        forged(EMPTY + EMPTY + b"\1" * 16, tasks=0, bitmap=len(EMPTY), hashed=len(EMPTY), tiles=1),
    ],
)
def test_hostile_bodies_are_corrupt(body: bytes) -> None:
    with pytest.raises(CorruptCheckpoint):
        decode(body, FP)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_corrupt(junk: bytes) -> None:
    with pytest.raises(CorruptCheckpoint):
        decode(junk, FP)
    with pytest.raises(CorruptCheckpoint):
        decode(forged(junk, tasks=0, bitmap=len(junk)), FP)


# -- tile digests ------------------------------------------------------------------------------
def test_digest_is_order_independent_and_idempotent() -> None:
    rels = [SPACE.rel(t) for t in range(0, 60, 2)]
    a, b = TileDigests.for_space(SPACE), TileDigests.for_space(SPACE)
    for rel in rels:
        assert a.add(rel, sha(rel))
    for rel in reversed(rels):
        b.add(rel, sha(rel))
    assert dict(a.items()) == dict(b.items()) and len(a) == len(
        set(t // 3 for t in range(0, 60, 2))
    )
    before = dict(a.items())
    assert not a.add(rels[0], sha("other bytes"))  # counted once: no XOR cancelling
    assert not a.add("not/a/task.csv", sha("x"))
    assert dict(a.items()) == before


def test_digest_tells_a_different_witness_set() -> None:
    a, b = TileDigests.for_space(SPACE), TileDigests.for_space(SPACE)
    a.add(SPACE.rel(0), sha("x"))
    b.add(SPACE.rel(0), sha("y"))  # other bytes
    assert a[0] != b[0]
    a.add(SPACE.rel(1), sha("x"))
    assert a[0] != b[0] and a.get(5) is None


def test_decoded_digests_extend_like_fresh_ones() -> None:
    """A node that loaded a checkpoint and then counts later witnesses gets the digest of a
    node that counted them all from scratch; witnesses the checkpoint had are not recounted."""
    rels = [(t, SPACE.rel(t)) for t in range(0, 90, 3)]
    full, part = TileDigests.for_space(SPACE), TileDigests.for_space(SPACE)
    for t, rel in rels:
        full.add_task(t, rel, sha(rel))
    for t, rel in rels[:15]:
        part.add_task(t, rel, sha(rel))
    loaded = decode(encode(Checkpoint(1, BitMap(t for t, _ in rels), {}, part), FP), FP).digests
    assert isinstance(loaded, TileDigests)
    for t, rel in rels:  # the segments repeat some of what the checkpoint counted
        loaded.add_task(t, rel, sha(rel))
    assert dict(loaded.items()) == dict(full.items())


def test_merge_takes_the_tiles_the_other_counted_more_of() -> None:
    a, b = TileDigests.for_space(SPACE), TileDigests.for_space(SPACE)
    a.add_task(0, SPACE.rel(0), sha("0"))  # tile 0: a has 1 witness, b 2
    b.add_task(0, SPACE.rel(0), sha("0"))
    b.add_task(1, SPACE.rel(1), sha("1"))
    a.add_task(3, SPACE.rel(3), sha("3"))  # tile 1: only a
    b.add_task(6, SPACE.rel(6), sha("6"))  # tile 2: only b
    a.merge(b)
    assert a[0] == b[0] and a[2] == b[2] and 1 in a
    assert a.hashed == BitMap([0, 1, 3, 6])


# -- the builder -------------------------------------------------------------------------------
def test_builder_extends_a_loaded_checkpoint_like_a_fresh_count() -> None:
    """Loaded checkpoint + later segment lines = the checkpoint of everything from scratch:
    facts, sizes (a later known size fills an unknown one) and digests."""
    lines = [(t, SPACE.rel(t), sha(str(t)), t % 50 + 1) for t in range(0, 600, 5)]
    scratch = CheckpointBuilder(SPACE)
    for t, rel, digest, size in lines:
        scratch.add(t, rel, digest, size)
    whole = scratch.build(9)

    first = CheckpointBuilder(SPACE)
    for t, rel, digest, size in lines[:70]:
        first.add(t, rel, digest, size if t % 2 else None)  # some sizes unknown at first
    loaded = decode(encode(first.build(4), FP), FP)
    later = CheckpointBuilder(SPACE, loaded)
    for t, rel, digest, size in lines[40:]:  # overlapping the checkpoint: harmless
        later.add(t, rel, digest, size)
    for t, rel, _digest, size in lines[:40]:
        later.add(t, rel, None, size)  # sizes learned later, no sha256
    built = later.build(9)
    same(whole, built)
    same(whole, decode(encode(built, FP), FP))
    assert len(later) == len(lines)


def test_a_built_checkpoint_does_not_change_with_the_builder() -> None:
    b = CheckpointBuilder(SPACE)
    b.add(3, SPACE.rel(3), sha("3"), 10)
    cp = b.build(1)
    b.add(30, SPACE.rel(30), sha("30"), 11)
    body = encode(cp, FP)  # digests of a later fact would make it corrupt
    assert decode(body, FP).facts == BitMap([3]) and b.build(2).facts == BitMap([3, 30])


def test_sizes_of_another_fact_set_keep_the_common_ones() -> None:
    old = Sizes.of(BitMap([1, 2, 3]), {1: 5, 3: 7})
    assert dict(Sizes.of(BitMap([2, 3, 4]), old).items()) == {3: 7}


def test_digests_of_non_facts_are_refused_at_encode() -> None:
    digests = TileDigests.for_space(SPACE)
    digests.add_task(7, SPACE.rel(7), sha("7"))
    with pytest.raises(ValueError):
        encode(Checkpoint(1, BitMap([1]), {}, digests), FP)


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
FIELDS = ["v", "window", "tasks", "fingerprint", "tile", "bitmap", "hashed", "tiles", "tilemap"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, min_size=1), st.booleans())
def test_any_header_values_with_a_matching_sha256_are_corrupt_or_valid(
    changes: dict[str, object], drop: bool
) -> None:
    """Hostile header values under a correct sha256: decode answers a checkpoint or
    CorruptCheckpoint, nothing else (no numpy or pyroaring error, no huge allocation)."""
    body = encode(sample(n=30), FP, SPACE.tile_size)
    head, _, payload = body.partition(b"\n")
    header = json.loads(head)
    header.pop("sha256")
    header.update(changes)
    if drop:
        header.pop(next(iter(changes)))
    try:
        cp = decode(forged(payload, **header), FP)
    except CorruptCheckpoint:
        return
    assert len(cp.facts) == 30  # accepted only when the changes did not change the meaning


def test_a_builder_leaves_the_checkpoint_it_started_from_alone() -> None:
    loaded = decode(encode(sample(), FP), FP)
    before = (BitMap(loaded.facts), dict(loaded.digests.items()))
    b = CheckpointBuilder(SPACE, loaded)
    b.add(SPACE.size - 1, SPACE.rel(SPACE.size - 1), sha("new"), 5)
    b.build(loaded.window + 1)
    assert (loaded.facts, dict(loaded.digests.items())) == before
    assert decode(encode(loaded, FP), FP).facts == before[0]
