"""Fixtures of the engine tier: a small mission, a fake clock and nodes over temp state dirs.

No kernel and no S3 server: handlers are called in process (see driver.py) and the bucket is
an in-process MemoryStore, so the whole tier runs in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyfuse3
import pytest
from pyroaring import BitMap

import fusefs.fuse.fs
from fusefs.model.mission import Mission, load_mission
from fusefs.objects.memory import MemoryStore
from tests.engine.driver import (
    EngineNode,
    FakeClock,
    RecordingStore,
    memory_bucket,
    readdir_reply,
)
from tests.support.mounts import write_mission

# 3 x 3 tiles x 2 phrases (one with a space). Tile 10.2/20.2 is not planned at all and
# "plumber" is not planned in tile 10.0/20.1: a hole in a planned tile and an absent tile.
UNPLANNED_TILE = "10.2/20.2"
UNPLANNED_TASK = "10.0/20.1/plumber.csv"


def small_mission(directory: Path) -> Mission:
    path = write_mission(
        directory / "mission.toml",
        name="engine-tier",
        south="10.0",
        west="20.0",
        north="10.3",
        east="20.3",
        step="0.1",
        phrases=("coffee shop", "plumber"),
    )
    m = load_mission(path)
    sp = m.space
    holes = {sp.parse_rel(UNPLANNED_TASK)}
    holes |= {sp.parse_rel(f"{UNPLANNED_TILE}/{p}") for p in sp.phrase_names}
    return dataclasses.replace(m, intent=m.intent - BitMap(holes))


WIDE_TASKS = 200_000  # wide_mission: 100 x 100 tiles x 20 phrases


def wide_mission(directory: Path) -> Mission:
    """A mission of WIDE_TASKS tasks, for the tests of learning big batches of facts (the
    engine tier's usual mission has 16)."""
    path = write_mission(
        directory / "mission.toml",
        name="engine-tier",
        south="10.00",
        west="20.00",
        north="11.00",
        east="21.00",
        step="0.01",
        phrases=tuple(f"phrase {i:02d}" for i in range(20)),
    )
    m = load_mission(path)
    assert m.space.size == WIDE_TASKS and len(m.intent) == WIDE_TASKS
    return m


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The wall clock of the FUSE handlers (lease starts and renewals), and the readdir hook."""
    c = FakeClock()
    monkeypatch.setattr(fusefs.fuse.fs, "time", c)
    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    yield c


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """Where state dirs go: tmpfs when there is one. This tier tests logic, not fsync latency
    (each commit fsyncs a file and a directory: slow on a disk shared by parallel test runs)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="missionfs-engine-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mission(tmp_path: Path) -> Mission:
    return small_mission(tmp_path)


@pytest.fixture
def make_node(
    state_root: Path, mission: Mission, clock: FakeClock
) -> Iterator[Callable[..., EngineNode]]:
    nodes: list[EngineNode] = []

    def make(
        *,
        bucket: MemoryStore | None = None,
        name: str = "state",
        claims: str = "local",
        worker: str | None = None,
    ) -> EngineNode:
        node = EngineNode(
            mission, state_root / name, clock, bucket=bucket, claims=claims, worker=worker
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def bucket(clock: FakeClock) -> RecordingStore:
    """One in-process bucket (nodes given it share it), on the test's clock."""
    return memory_bucket(clock)


@pytest.fixture
def node(make_node: Callable[..., EngineNode]) -> EngineNode:
    return make_node()
