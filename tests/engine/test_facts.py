"""The fact sets and the one reconcile of the witness files against the start-up index."""

from __future__ import annotations

import os
from pathlib import Path

from pyroaring import BitMap

from fusefs.engine.facts import Drift, Facts, reconcile_in_memory, walk
from fusefs.model.mission import Mission
from fusefs.model.state import MissionState
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import Journal, read_journal
from fusefs.statedir.store import LocalStore

COPIED = "10.1/20.2/plumber.csv"
DELETED = "10.0/20.0/coffee shop.csv"


class Opened:
    """What open_workspace gives the fact sets: a store, its index (loaded), a journal."""

    def __init__(self, mission: Mission, root: Path, *, remote: BitMap | None = None) -> None:
        self.space = mission.space
        self.store = LocalStore(root)
        self.store.prepare()
        self.index = FactIndex(self.store.index_dir, self.space)
        self.journal = Journal(self.store.layout.journal, "w1")
        local = self.index.load()
        assert local is not None
        self.state = MissionState(self.space, mission.intent, local.copy())
        self.facts = Facts(self.state, local, self.index, self.journal, remote)
        self.state.add_facts(self.facts.remote)
        self.told = 0
        self.facts.subscribe(self.tell)

    def tell(self) -> None:
        self.told += 1

    def close(self) -> None:
        self.index.close()
        self.journal.close()


def state_dir_with(mission: Mission, root: Path, indexed: list[str], files: list[str]) -> None:
    """A state dir whose start-up index holds `indexed` and whose tree holds `files`."""
    store = LocalStore(root)
    store.prepare()
    for rel in files:
        store.witness_path(rel).parent.mkdir(parents=True, exist_ok=True)
        store.witness_path(rel).write_bytes(b"name\nA\n")
    index = FactIndex(store.index_dir, mission.space)
    index.snapshot(BitMap(mission.space.parse_rel(r) for r in indexed), index.rotate())
    index.close()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: what "writes nothing" compares."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def test_reconcile_finds_a_witness_copied_in_while_down(mission: Mission, tmp_path: Path) -> None:
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[], files=[COPIED])
    node = Opened(mission, root)
    task = mission.space.parse_rel(COPIED)
    assert task not in node.state.fact and task in node.state.pending
    found, outside = walk(node.store, mission.space)
    drift = node.facts.reconcile(found, node.facts.local.copy())
    assert drift == Drift(BitMap([task]), BitMap())
    assert task in node.facts.local and task in node.state.fact
    assert task not in node.state.pending and outside == []
    assert node.told == 1  # the upload queue hears of it
    node.close()
    recovered = [e for e in read_journal(root / "journal") if e.get("rel") == COPIED]
    assert [e.get("recovered") for e in recovered] == [True]
    assert FactIndex(root / "index", mission.space).load() == BitMap([task])


def test_reconcile_drops_a_witness_deleted_while_down(mission: Mission, tmp_path: Path) -> None:
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[DELETED], files=[])
    node = Opened(mission, root)
    task = mission.space.parse_rel(DELETED)
    assert task in node.state.fact
    drift = node.facts.reconcile(walk(node.store, mission.space)[0], node.facts.local.copy())
    assert drift == Drift(BitMap(), BitMap([task])) and not drift.clean
    assert task not in node.facts.local and task not in node.state.fact
    assert task in node.state.pending  # to do again
    assert node.told == 0
    node.close()


def test_reconcile_keeps_remote_facts(mission: Mission, tmp_path: Path) -> None:
    """A local witness deleted while down is still done if the bucket has it."""
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[DELETED], files=[])
    task = mission.space.parse_rel(DELETED)
    node = Opened(mission, root, remote=BitMap([task]))
    drift = node.facts.reconcile(walk(node.store, mission.space)[0], node.facts.local.copy())
    assert drift.gone == BitMap([task])
    assert task not in node.facts.local
    assert task in node.facts.remote and task in node.state.fact
    assert task not in node.state.pending
    node.close()


def test_a_commit_during_the_walk_is_not_new(mission: Mission, tmp_path: Path) -> None:
    """The daemon walks in a thread while commits go on: one committed meanwhile is neither
    journalled twice nor dropped."""
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[], files=[COPIED])
    node = Opened(mission, root)
    loaded = node.facts.local.copy()
    task = mission.space.parse_rel(COPIED)
    node.facts.record_local(task)  # the commit path, while the walk runs
    drift = node.facts.reconcile(walk(node.store, mission.space)[0], loaded)
    assert drift.clean and task in node.state.fact
    node.close()
    assert [e for e in read_journal(root / "journal") if e.get("recovered")] == []


def test_write_false_changes_the_sets_and_writes_nothing(mission: Mission, tmp_path: Path) -> None:
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[DELETED], files=[COPIED])
    node = Opened(mission, root)
    node.journal.append("start", None)  # the journal's file exists: appending would show
    before = tree(root)
    drift = node.facts.reconcile(walk(node.store, mission.space)[0], node.facts.local, write=False)
    copied, deleted = mission.space.parse_rel(COPIED), mission.space.parse_rel(DELETED)
    assert drift == Drift(BitMap([copied]), BitMap([deleted]))
    assert copied in node.state.fact and deleted not in node.state.fact
    assert node.told == 0  # nothing uploaded by an audit
    assert tree(root) == before
    node.close()


def test_reconcile_in_memory_counts_logged_remote_facts(mission: Mission, tmp_path: Path) -> None:
    """digest/diff: remote facts a running daemon logged (no snapshot yet) count, files are
    walked, and the state dir is left as it was."""
    root = tmp_path / "state"
    state_dir_with(mission, root, indexed=[DELETED], files=[COPIED])
    remote_rel = "10.2/20.1/plumber.csv"
    (root / "index" / "remote-1.log").write_text(remote_rel + "\t7\n", encoding="utf-8")
    node = Opened(mission, root)
    before = tree(root)
    reconcile_in_memory(node.facts, node.store, with_remote=True, walked=False)
    space = mission.space
    assert node.state.fact == BitMap([space.parse_rel(COPIED), space.parse_rel(remote_rel)])
    assert tree(root) == before
    node.close()
