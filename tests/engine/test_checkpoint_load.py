"""A node learning a checkpoint of many facts (remotefacts.learn_checkpoint, docs/protocol.md
"Checkpoints"): a new node, or one back after days, on a bucket of 200,000 facts.

What is checked: the trio thread, which serves every FUSE request of the mount, keeps serving
them while the facts are worked out and persisted (in a worker thread); the facts are persisted
as one snapshot of the remote index and one journal line, not a log line and a `remote` note
per fact; a restart (clean, or after a kill -9 at any point of the load) knows every fact with
its size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model.checkpoint import UNKNOWN_SIZE, Checkpoint, Sizes
from fusefs.model.mission import Mission
from fusefs.model.sizes import RemoteSizes
from fusefs.objects.s3store import S3Store
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import read_journal
from fusefs.statedir.layout import StateLayout
from tests.engine.conftest import WIDE_TASKS, wide_mission
from tests.engine.driver import BUCKET_URL, WINDOW, EngineNode, FakeClock, RecordingStore
from tests.engine.loop_probe import LoopProbe

N = WIDE_TASKS  # every task of the mission is in the checkpoint


@pytest.fixture
def mission(tmp_path: Path) -> Mission:
    """A mission of N tasks (this module's: the engine tier's usual one has 16)."""
    return wide_mission(tmp_path)


def size_of(task: int) -> int | None:
    """The size the checkpoint gives a task (None: one in a thousand is not known)."""
    return None if task % 1000 == 7 else 100 + task % 997


SAMPLE = [0, 7, 1, 4242, 99_999, 150_007, N - 1]


def put_checkpoint(bucket: RecordingStore, mission: Mission, clock: FakeClock) -> Checkpoint:
    """The fleet's protocol.json and a checkpoint of every task, for the window just closed."""
    s3 = S3Store(BUCKET_URL, mission.name, objects=bucket)
    assert s3.create_protocol({"version": 2, "window": WINDOW})
    facts = BitMap(range(N))
    ids = np.arange(N, dtype=np.int64)
    column = (100 + ids % 997).astype(np.uint32)
    column[ids % 1000 == 7] = UNKNOWN_SIZE
    cp = Checkpoint(int(clock.now // WINDOW) - 1, facts, Sizes(facts, column))
    assert CheckpointBook(s3, mission.space).write(cp)
    return cp


def remote_log_lines(node: EngineNode) -> int:
    index = StateLayout(node.state_dir).index
    return sum(len(p.read_bytes().splitlines()) for p in index.glob("remote-*.log"))


def events(node: EngineNode, ev: str) -> list[dict[str, Any]]:
    return [e for e in read_journal(StateLayout(node.state_dir).journal) if e["ev"] == ev]


def checkpoint_gets(bucket: RecordingStore, mark: int) -> list[str]:
    return [key for kind, key in bucket.since(mark) if kind == "GET" and "/checkpoints/" in key]


def assert_knows_everything(node: EngineNode) -> None:
    """Every task is a fact, with the checkpoint's size where it gave one (memory and stat)."""
    sync = node.sync
    assert sync.remote == BitMap(range(N))
    assert len(node.state.fact) == N
    for task in SAMPLE:
        assert sync.sizes.get(task) == size_of(task)
        rel = node.mission.space.rel(task)
        assert node.stat(f"done/{rel}").size == (size_of(task) or 0)


class Died(Exception):
    """A kill -9 at that point: nothing after it runs (the node is then closed unclean)."""


def test_a_checkpoint_is_persisted_as_one_snapshot_and_one_journal_line(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock, mission: Mission
) -> None:
    """200,000 facts learned: the remote index is a snapshot holding them with their sizes
    (no log line each), and the journal has one `checkpoint` line (window, facts, learned),
    no `remote` line each."""
    cp = put_checkpoint(bucket, mission, clock)
    node = make_node(bucket=bucket, worker="worker-n")
    assert node.refresh() == N
    assert node.sync.factlog.checkpoint_loaded == cp.window
    assert_knows_everything(node)
    assert remote_log_lines(node) == 0
    on_disk = RemoteSizes(N)
    index = FactIndex(StateLayout(node.state_dir).index, mission.space, "remote")
    assert index.load(on_disk) == cp.facts
    assert [on_disk.get(t) for t in SAMPLE] == [size_of(t) for t in SAMPLE]
    [line] = events(node, "checkpoint")
    assert (line["window"], line["facts"], line["learned"]) == (cp.window, N, N)
    assert events(node, "remote") == []


def test_a_restart_after_a_checkpoint_load_knows_every_fact_and_size_at_once(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock, mission: Mission
) -> None:
    """After a kill -9, then after a clean unmount: every fact and size is known from the
    state dir before any request (a snapshot to read, no 200,000 log lines to replay), and
    the next refresh does not read the checkpoint again."""
    put_checkpoint(bucket, mission, clock)
    node = make_node(bucket=bucket, worker="worker-n")
    node.refresh()
    for clean in (False, True):
        node.restart(clean=clean)
        assert remote_log_lines(node) == 0
        assert_knows_everything(node)
        mark = len(bucket.log)
        assert node.refresh() == 0
        assert checkpoint_gets(bucket, mark) == []
    assert len(events(node, "checkpoint")) == 1


@pytest.mark.parametrize("dies", ["writing the snapshot", "before the cursor is saved"])
def test_a_node_killed_during_a_checkpoint_load_starts_right(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
    monkeypatch: pytest.MonkeyPatch,
    dies: str,
) -> None:
    """A kill -9 in the middle of the snapshot (its sizes file written, not its bitmap), or
    after it but before the fact log's cursor: the next start has either the old index and
    loads the checkpoint again, or the new snapshot; either way every fact and size."""
    put_checkpoint(bucket, mission, clock)
    node = make_node(bucket=bucket, worker="worker-n")
    if dies == "writing the snapshot":
        index = node.sync.remote_index

        def half(facts: BitMap, generation: int, sizes: RemoteSizes | None) -> None:
            if sizes is not None and len(facts) == N:
                index._write_sizes(facts, generation, sizes)
                raise Died

        monkeypatch.setattr(index, "_snapshot", half, raising=False)
    else:

        async def save() -> None:
            raise Died

        monkeypatch.setattr(node.sync.factlog, "save", save)
    with pytest.raises(Died):
        node.refresh()
    monkeypatch.undo()
    node.restart(clean=False)
    mark = len(bucket.log)
    node.refresh()
    assert len(checkpoint_gets(bucket, mark)) == 1  # no cursor was saved: loaded again
    assert_knows_everything(node)
    assert remote_log_lines(node) == 0
    assert events(node, "remote") == []
    node.restart(clean=False)
    assert_knows_everything(node)


def test_the_trio_thread_serves_requests_while_a_checkpoint_is_learned(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the checkpoint is worked out and its snapshot written (in a worker thread, held
    there until the trio loop has run another task 100 times), a user's `cat > done/REL` of a
    task the checkpoint holds commits, a fact is learned meanwhile from elsewhere, and the
    daemon's periodic save runs (its snapshot must not replace the load's).
    The state is changed on the trio thread only, and those two changes survive the load: the
    committed task is local (its file's size, not the checkpoint's), the other keeps the size
    it came with."""
    cp = put_checkpoint(bucket, mission, clock)
    node = make_node(bucket=bucket, worker="worker-n")
    sync = node.sync
    space = mission.space
    mine, elsewhere = 4242, 150_007
    body = b"name\n" + b"x" * 500 + b"\n"

    async def meanwhile() -> int:
        """A user of the mount, and another source of facts, while the load runs."""
        errno = await node._create(f"done/{space.rel(mine)}", body)
        sync._learn_rels([(space.rel(elsewhere), 12345)])
        await node.daemon._snapshot()  # the daemon's periodic save, in a thread too
        return errno

    probe = LoopProbe(node, meanwhile)
    real_snapshot = sync.remote_index.snapshot

    def snapshot(facts: BitMap, generation: int, sizes: RemoteSizes | None = None) -> None:
        if probe.active and len(facts) == N:  # the load's (the checkpoint's facts in it)
            probe.hold()
        real_snapshot(facts, generation, sizes)

    async def work() -> None:
        assert await sync.connect()
        await sync.refresh()

    monkeypatch.setattr(
        sync.factlog, "_load_checkpoint", probe.timed(sync.factlog._load_checkpoint)
    )
    monkeypatch.setattr(sync.remote_index, "snapshot", snapshot)
    probe.watch_changes(monkeypatch)
    probe.run(work)
    probe.assert_loop_ran()
    assert probe.acted == [0]
    assert sync.factlog.checkpoint_loaded == cp.window
    assert sync.remote == cp.facts
    assert mine in sync.local and sync.sizes.get(mine) is None
    assert node.stat(f"done/{space.rel(mine)}").size == len(body)
    assert size_of(elsewhere) is None  # the checkpoint does not know its size, that path did
    assert sync.sizes.get(elsewhere) == 12345 and elsewhere not in sync.unsized
    node.restart(clean=False)  # the periodic save did not replace the load's snapshot
    assert node.sync.remote == cp.facts
    assert node.sync.sizes.get(SAMPLE[2]) == size_of(SAMPLE[2])
