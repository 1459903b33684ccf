"""Local store and start-up index on a real directory (no FUSE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyroaring import BitMap

from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.witness import InvalidWitness, check_csv
from fusefs.statedir.index import FactIndex, walk_facts
from fusefs.statedir.store import LocalStore

SPACE = TaskSpace(Axis(4070, 1, 3, 2), Axis(-7402, 1, 4, 2), ("coffee shop", "plumber"))


def _staged(store: LocalStore, name: str, body: bytes) -> Path:
    p = store.tmp / name
    p.write_bytes(body)
    return p


def test_commit_links_without_replacing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.prepare()
    rel = SPACE.rel(5)
    store.commit(_staged(store, "a", b"h\n1\n"), rel)
    assert store.witness_path(rel).read_bytes() == b"h\n1\n"
    assert not (store.tmp / "a").exists()
    second = _staged(store, "b", b"h\n2\n")
    with pytest.raises(FileExistsError):
        store.commit(second, rel)
    assert store.witness_path(rel).read_bytes() == b"h\n1\n"  # untouched
    assert second.read_bytes() == b"h\n2\n"  # the loser's bytes are not lost
    assert list(store.scan()) == [rel]


def test_reject_keeps_bytes_and_reason(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.prepare()
    kept = store.reject(_staged(store, "x", b"partial"), SPACE.rel(1), "truncated")
    assert kept.read_bytes() == b"partial"
    assert "truncated" in kept.with_name(kept.name + ".why").read_text()


def test_index_snapshot_plus_logs(tmp_path: Path) -> None:
    idx = FactIndex(tmp_path, SPACE)
    assert idx.load() is None  # nothing yet: the caller walks the tree
    idx.snapshot(BitMap([1, 2]), idx.rotate())
    idx.append([SPACE.rel(7)])
    idx.close()
    fresh = FactIndex(tmp_path, SPACE)
    assert set(fresh.load() or []) == {1, 2, 7}
    # A new snapshot drops the older logs; a torn last log line is ignored.
    gen = fresh.rotate()
    fresh.snapshot(BitMap([1, 2, 7]), gen)
    fresh.append([SPACE.rel(9)])
    fresh.close()
    with open(tmp_path / f"facts-{gen}.log", "a") as f:
        f.write("40.70/-74.0")
    assert set(FactIndex(tmp_path, SPACE).load() or []) == {1, 2, 7, 9}
    assert sorted(p.name for p in tmp_path.glob("facts-*.log")) == [f"facts-{gen}.log"]


def test_a_snapshot_older_than_one_written_is_skipped(tmp_path: Path) -> None:
    """Two worker threads may write snapshots at once (the daemon's periodic save and a
    checkpoint load): the older generation, finishing last, must not replace the newer one
    and its log (the newer holds what the older did, taken later)."""
    idx = FactIndex(tmp_path, SPACE)
    old = idx.rotate()
    new = idx.rotate()
    idx.append([SPACE.rel(9)])  # after the newer one was taken: its log
    idx.snapshot(BitMap([1, 2, 3]), new)
    idx.snapshot(BitMap([1]), old)  # finishes last
    idx.close()
    assert set(FactIndex(tmp_path, SPACE).load() or []) == {1, 2, 3, 9}


def test_index_of_another_universe_is_not_used(tmp_path: Path) -> None:
    idx = FactIndex(tmp_path, SPACE)
    idx.snapshot(BitMap([1]), idx.rotate())
    other = TaskSpace(SPACE.lat, SPACE.lon, ("coffee shop",))
    assert FactIndex(tmp_path, other).load() is None


def test_walk_finds_witnesses_and_strays(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.prepare()
    for t in (0, 3, 11):
        store.commit(_staged(store, str(t), b"h\n"), SPACE.rel(t))
    stray = store.tiles / "40.70" / "-74.02" / "tea.csv"
    stray.write_text("h\n")
    facts, outside = walk_facts(store.scan_tiles(), SPACE)
    assert set(facts) == {0, 3, 11}
    assert outside == ["40.70/-74.02/tea.csv"]


def test_clean_tmp_leftovers_only_drops_linked_names(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.prepare()
    rel = SPACE.rel(2)
    (store.tiles / "40.70" / "-74.01").mkdir(parents=True)
    linked = _staged(store, "linked", b"h\n")
    os.link(linked, store.witness_path(rel))  # a crash between link and unlink
    _staged(store, "mine", b"h\n")
    assert store.clean_tmp_leftovers() == 1
    assert sorted(os.listdir(store.tmp)) == ["mine"]
    assert store.witness_path(rel).read_bytes() == b"h\n"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"a,b\n1,2", "newline"),
        (b"a,b\n1,2,3\n", "fields"),
        (b"\n", "header"),
        (b'a,b\n"1,2\n', "malformed"),
        (b"a,b\n\xff,1\n", "UTF-8"),
    ],
)
def test_invalid_witnesses(data: bytes, why: str) -> None:
    with pytest.raises(InvalidWitness, match=why):
        check_csv(data)


def test_valid_witnesses() -> None:
    assert check_csv(b"a,b\n") == 0
    assert check_csv(b'a,b\n1,"x\ny"\n2,3\n') == 2
