"""The digest keeper's cost per commit, and its correctness when a witness's content changes.

A commit hands the keeper the SHA-256 it computed (and the stat the hash cache keys on), so the
keeper reads no witness back and stats none of the tile's other witnesses; a conflict winner
replacing our witness (what the sync engine does) is verified again from its file, and only it.
Every root is checked against a keeper built from scratch over an empty hash cache (the files
are the truth, as for `missionfs digest`). The keeper's real loop (`run`) is driven with a short
settle time; the counts come from instrumenting the digest module's stat and file hashing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import fusefs.engine.digest as digest_mod
from fusefs.engine.digest import DigestKeeper, HashCache, Hasher
from fusefs.engine.workspace import Workspace, open_workspace
from fusefs.model.mission import load_mission
from tests.support.mounts import write_mission

PHRASES = tuple(f"phrase {i}" for i in range(6))
DEADLINE = 30.0


class _CountingOs:
    """The digest module's `os`, counting the stats of witness files (the rest passes)."""

    def __init__(self) -> None:
        self.stats: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def stat(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        self.stats.append(str(path))
        return os.stat(path, *args, **kwargs)


class Probe:
    """Counts of the keeper's file work since the last `reset`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.os = _CountingOs()
        self.hashed: list[str] = []
        self.after_hash: Callable[[Path], None] | None = None  # runs in the worker thread
        real = digest_mod._hash_file

        def hash_file(path: Path) -> tuple[str, int, int, int]:
            self.hashed.append(str(path))
            got = real(path)
            if self.after_hash is not None:
                self.after_hash(path)
            return got

        monkeypatch.setattr(digest_mod, "os", self.os)
        monkeypatch.setattr(digest_mod, "_hash_file", hash_file)
        monkeypatch.setattr(digest_mod, "SETTLE_SECONDS", 0.01)

    def reset(self) -> None:
        self.os.stats.clear()
        self.hashed.clear()


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A workspace over a mission of 2 x 2 tiles of six phrases each."""
    path = write_mission(
        tmp_path / "m.toml", south="10.0", west="20.0", north="10.2", east="20.2", step="0.1",
        phrases=PHRASES,
    )  # fmt: skip
    w = open_workspace(load_mission(path), tmp_path / "state")
    try:
        yield w
    finally:
        assert w.digest is not None
        w.digest.hasher.cache.close()
        w.close()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    return Probe(monkeypatch)


def truth(w: Workspace, tmp_path: Path) -> str:
    """The root from the files alone: a fresh keeper over an empty hash cache."""
    cache = HashCache(tmp_path / f"fresh-{os.urandom(4).hex()}.sqlite")
    try:
        return DigestKeeper(w.state, Hasher(w.state.space, w.store, None, cache)).build().root()
    finally:
        cache.close()


async def commit(w: Workspace, tmp_path: Path, task: int, body: str) -> None:
    staged = tmp_path / f"staged-{task}"
    staged.write_text(body, encoding="utf-8")
    await w.committer.commit(staged, task, synced=False, source="test")


async def settled(keeper: DigestKeeper) -> None:
    """Poll (with a deadline) until the keeper's tree reflects every fact."""
    with trio.fail_after(DEADLINE):
        while not (keeper.info()["state"] == "current" and keeper.known == keeper.state.fact):
            await trio.sleep(0.01)


def tile_tasks(w: Workspace, tile: int) -> list[int]:
    nphr = w.state.space.nphr
    return list(range(tile * nphr, (tile + 1) * nphr))


def test_commits_into_a_tile_read_no_witness_and_stat_no_other(
    ws: Workspace, probe: Probe, tmp_path: Path
) -> None:
    keeper = ws.digest
    assert keeper is not None
    tasks = tile_tasks(ws, 1)

    async def main() -> None:
        for t in tasks[:3]:  # witnesses committed before the keeper runs: verified at start
            await commit(ws, tmp_path, t, f"h\nfirst {t}\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run)
            await settled(keeper)
            for t in tasks[3:]:
                probe.reset()
                await commit(ws, tmp_path, t, f"h\nthen {t}\n")
                await settled(keeper)
                assert probe.hashed == [], "the commit's witness was read back to be hashed"
                assert probe.os.stats == [], "the tile's witnesses were stat'ed again"
                assert keeper.tree.root() == truth(ws, tmp_path)
            nursery.cancel_scope.cancel()

    trio.run(main)
    # The commits' hashes reached the cache with the stat of the linked file: a restart (or
    # `missionfs digest`) over the same cache reads none of the files.
    probe.reset()
    again = DigestKeeper(ws.state, Hasher(ws.state.space, ws.store, None, keeper.hasher.cache))
    assert again.build().root() == keeper.tree.root()
    assert probe.hashed == []
    assert len(probe.os.stats) == len(tasks)


def test_a_replaced_witness_is_verified_again_and_alone(
    ws: Workspace, probe: Probe, tmp_path: Path
) -> None:
    keeper = ws.digest
    assert keeper is not None
    tasks = tile_tasks(ws, 2)
    victim = tasks[2]
    rel = ws.state.space.rel(victim)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run)
            for t in tasks:
                await commit(ws, tmp_path, t, f"h\nours {t}\n")
            await settled(keeper)
            before = keeper.tree.root()
            probe.reset()
            # What the sync engine does when another worker's witness won the race.
            await trio.to_thread.run_sync(
                ws.store.replace_with_winner, rel, b"h\ntheirs\n", "w-test"
            )
            ws.state.notify((victim,))
            await settled(keeper)
            witness = str(ws.store.witness_path(rel))
            assert probe.hashed == [witness]
            assert probe.os.stats == [witness]
            assert keeper.tree.root() == truth(ws, tmp_path) != before
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_witness_replaced_while_being_hashed_is_hashed_again(
    ws: Workspace, probe: Probe, tmp_path: Path
) -> None:
    """The worker thread hashed the old bytes; the replacement it did not see must win."""
    keeper = ws.digest
    assert keeper is not None
    tasks = tile_tasks(ws, 3)
    victim = tasks[0]
    rel = ws.state.space.rel(victim)
    witness = ws.store.witness_path(rel)
    hashed_old, go_on = threading.Event(), threading.Event()

    def hold(path: Path) -> None:
        if path == witness and not hashed_old.is_set():
            hashed_old.set()
            go_on.wait(DEADLINE)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run)
            for t in tasks[:3]:
                await commit(ws, tmp_path, t, f"h\nours {t}\n")
            await settled(keeper)
            probe.after_hash = hold
            await trio.to_thread.run_sync(ws.store.replace_with_winner, rel, b"h\nA\n", "w-a")
            ws.state.notify((victim,))
            assert await trio.to_thread.run_sync(hashed_old.wait, DEADLINE)
            # The keeper's thread holds the hash of A; the file becomes B meanwhile.
            await trio.to_thread.run_sync(ws.store.replace_with_winner, rel, b"h\nB\n", "w-b")
            ws.state.notify((victim,))
            go_on.set()
            await settled(keeper)
            assert keeper.tree.root() == truth(ws, tmp_path)
            nursery.cancel_scope.cancel()

    trio.run(main)
