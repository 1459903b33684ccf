"""A node applying a segment of many facts (remotefacts.learn_rels, docs/protocol.md
"Reading"): in a fleet of 1,000 nodes a window's segment holds ~24,000 facts, applied by every
node every window. Here 50,000, on a mission of 200,000 tasks.

What is checked: the trio thread, which serves every FUSE request of the mount, keeps serving
them while the facts are worked out and persisted (a worker thread); their `remote` journal
notes and index lines are written from that thread, in one write each; a witness committed
here meanwhile stays local (its file's size); the daemon's periodic save meanwhile drops no
line; a restart, clean or after a kill -9 at any point, knows every fact with its size (from
the index, or by reading the segment again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model import segment as sg
from fusefs.model.checkpoint import Checkpoint, Sizes
from fusefs.model.mission import Mission
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex
from fusefs.statedir.journal import read_journal
from fusefs.statedir.layout import StateLayout
from tests.engine.conftest import WIDE_TASKS, wide_mission
from tests.engine.driver import BUCKET_URL, WINDOW, EngineNode, FakeClock, RecordingStore
from tests.engine.loop_probe import LoopProbe

N = WIDE_TASKS
SEGMENT = BitMap(range(1, N, 4))  # 50,000 facts in one segment
EARLY = BitMap(range(0, 1000, 4))  # the checkpoint's (the node starts from it)
SAMPLE = [1, 4241, 99_997, 150_005, N - 3]


@pytest.fixture
def mission(tmp_path: Path) -> Mission:
    """A mission of N tasks (this module's: the engine tier's usual one has 16)."""
    return wide_mission(tmp_path)


def size_of(task: int) -> int:
    return 100 + task % 997


def started_node(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    m: Mission,
    segment: bool = True,
) -> tuple[EngineNode, int]:
    """A node started from a small checkpoint, and (`segment`) the next window's segment of
    50,000 facts in the bucket, closed and settled: the node's next refresh applies it."""
    s3 = S3Store(BUCKET_URL, m.name, objects=bucket)
    assert s3.create_protocol({"version": 2, "window": WINDOW})
    sizes = Sizes.of(EARLY, {t: size_of(t) for t in EARLY})
    cp = Checkpoint(int(clock.now // WINDOW) - 1, EARLY, sizes)
    assert CheckpointBook(s3, m.space).write(cp)
    node = make_node(bucket=bucket, worker="worker-n")
    assert node.refresh() == len(EARLY)
    w = cp.window + 1
    if not segment:
        return node, w
    sha = sha256_hex(b"x")
    facts = [sg.Fact(m.space.rel(t), sha, size_of(t)) for t in SEGMENT]
    assert s3.put_segment(w, sg.encode(sg.merge(w, {"worker-z-00000001.txt": facts})))
    clock.now = (w + 1) * WINDOW + 0.75 * WINDOW  # closed, settled, others' turn to compact
    return node, w


def remote_log_lines(node: EngineNode) -> list[str]:
    index = StateLayout(node.state_dir).index
    return [ln for p in index.glob("remote-*.log") for ln in p.read_text().splitlines()]


def noted(node: EngineNode) -> list[str]:
    return [
        e["rel"] for e in read_journal(StateLayout(node.state_dir).journal) if e["ev"] == "remote"
    ]


def segment_gets(bucket: RecordingStore, mark: int) -> list[str]:
    return [key for kind, key in bucket.since(mark) if kind == "GET" and "/segments/" in key]


def assert_knows_the_segment(node: EngineNode) -> None:
    """Every fact of the segment (and the checkpoint's) is known, with its size."""
    sync = node.sync
    assert sync.remote == SEGMENT | EARLY
    assert node.state.fact >= SEGMENT
    for task in SAMPLE:
        assert sync.sizes.get(task) == size_of(task)
        assert node.stat(f"done/{node.mission.space.rel(task)}").size == size_of(task)
    assert not sync.unsized


class Died(Exception):
    """A kill -9 at that point: nothing after it runs (the node is then closed unclean)."""


def test_a_segment_is_persisted_from_a_thread_in_one_write_each(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50,000 facts learned: a `remote` note and an index line (with its size) each, all
    written from a worker thread in one journal write and one index append; a kill -9 after
    it, then a clean restart: every fact and size known from the state dir at once."""
    node, w = started_node(make_node, bucket, clock, mission)
    space = mission.space
    writes: list[tuple[str, bool, int]] = []  # (what, from a worker thread, lines)
    journal = node.sync.journal
    assert journal is not None

    def recorder(what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kw: Any) -> Any:
            worker = threading.current_thread() is not threading.main_thread()
            if what == "index":
                args = (list(args[0]),)
                writes.append((what, worker, len(args[0])))
            elif args[0] == "remote":
                many = what == "notes"
                writes.append((what, worker, len(list(args[1])) if many else 1))
            return real(*args, **kw)

        return record

    monkeypatch.setattr(journal, "append", recorder("note", journal.append))
    many = getattr(journal, "append_many", None)  # (the code before it had none)
    if many is not None:
        monkeypatch.setattr(journal, "append_many", recorder("notes", many))
    index = node.sync.remote_index
    monkeypatch.setattr(index, "append", recorder("index", index.append))
    assert node.refresh() == len(SEGMENT)
    assert writes == [("notes", True, len(SEGMENT)), ("index", True, len(SEGMENT))]
    monkeypatch.undo()
    assert node.sync.factlog.cursor == w
    assert_knows_the_segment(node)
    lines = remote_log_lines(node)
    assert sorted(lines) == sorted(f"{space.rel(t)}\t{size_of(t)}" for t in SEGMENT)
    assert sorted(noted(node)) == sorted(space.rel(t) for t in SEGMENT)
    for clean in (False, True):
        node.restart(clean=clean)
        assert_knows_the_segment(node)
        mark = len(bucket.log)
        assert node.refresh() == 0
        assert segment_gets(bucket, mark) == []
    assert len(noted(node)) == len(SEGMENT)


@pytest.mark.parametrize(
    "dies", ["before the index lines", "after the index lines", "before the cursor is saved"]
)
def test_a_node_killed_while_applying_a_segment_starts_right(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
    monkeypatch: pytest.MonkeyPatch,
    dies: str,
) -> None:
    """A kill -9 in the worker thread after the journal notes but before the index lines
    (the facts unknown at restart: the segment is read again and noted again), just after
    the index lines (known from the index at once, each noted once: the notes come first),
    or after the facts were applied but before the fact log's cursor was saved (the same):
    every fact and size either way, every fact noted."""
    node, w = started_node(make_node, bucket, clock, mission)
    if dies != "before the cursor is saved":
        index = node.sync.remote_index
        real = index.append

        def append(rels: Iterable[str]) -> None:
            rels = list(rels)
            if len(rels) == len(SEGMENT) and dies == "before the index lines":
                raise Died
            real(rels)
            if len(rels) == len(SEGMENT):
                raise Died

        monkeypatch.setattr(index, "append", append)
    else:

        async def save() -> None:
            raise Died

        monkeypatch.setattr(node.sync.factlog, "save", save)
    with pytest.raises(Died):
        node.refresh()
    monkeypatch.undo()
    node.restart(clean=False)
    if dies == "before the index lines":
        assert node.sync.remote == EARLY
    else:
        assert_knows_the_segment(node)  # from the index, before any request
    mark = len(bucket.log)
    learned = node.refresh()
    assert segment_gets(bucket, mark) == [S3Store(BUCKET_URL, mission.name).segment_key(w)]
    assert learned == (len(SEGMENT) if dies == "before the index lines" else 0)
    assert node.sync.factlog.cursor == w
    assert_knows_the_segment(node)
    assert len(remote_log_lines(node)) == len(SEGMENT)
    twice = 2 if dies == "before the index lines" else 1  # notes first: repeated, never lost
    assert len(noted(node)) == twice * len(SEGMENT)
    node.restart(clean=False)
    assert_knows_the_segment(node)


def test_the_trio_thread_serves_requests_while_a_segment_is_applied(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the segment's facts are worked out and persisted (in a worker thread, held there
    until the trio loop has run another task 100 times), a user's `cat > done/REL` of a task
    the segment holds commits, and the daemon's periodic save runs (in a thread too).
    The state is changed on the trio thread only; the committed task stays local (its file's
    size, not the segment's); the save dropped no index line (a kill -9 after it: every fact
    known at restart)."""
    node, w = started_node(make_node, bucket, clock, mission)
    sync = node.sync
    space = mission.space
    mine = SAMPLE[1]
    body = b"name\n" + b"x" * 500 + b"\n"

    async def meanwhile() -> int:
        """A user of the mount while the segment is applied."""
        errno = await node._create(f"done/{space.rel(mine)}", body)
        await node.daemon._snapshot()  # the daemon's periodic save, in a thread too
        return errno

    probe = LoopProbe(node, meanwhile)
    index = sync.remote_index
    real_append = index.append

    def append(rels: Iterable[str]) -> None:
        rels = list(rels)
        if probe.active and len(rels) == len(SEGMENT):
            probe.hold()
        real_append(rels)

    monkeypatch.setattr(sync.factlog, "_apply", probe.timed(sync.factlog._apply))
    monkeypatch.setattr(index, "append", append)
    probe.watch_changes(monkeypatch)
    probe.run(sync.refresh)
    monkeypatch.undo()
    probe.assert_loop_ran()
    assert probe.acted == [0]
    assert sync.factlog.cursor == w
    assert sync.remote == SEGMENT | EARLY
    assert mine in sync.local and sync.sizes.get(mine) is None
    assert node.stat(f"done/{space.rel(mine)}").size == len(body)
    others = [t for t in SAMPLE if t != mine]
    assert [sync.sizes.get(t) for t in others] == [size_of(t) for t in others]
    node.restart(clean=False)  # the periodic save did not drop the segment's index lines
    assert node.sync.remote == SEGMENT | EARLY
    assert node.sync.sizes.get(SAMPLE[0]) == size_of(SAMPLE[0])
    assert node.stat(f"done/{space.rel(mine)}").size == len(body)


def test_a_verification_listing_learns_its_finds_as_one_batch(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    mission: Mission,
) -> None:
    """`missionfs sync --verify` lists the bucket: the 500 witnesses nobody published (and
    the checkpoint's, known) are learned as one batch (a worker thread), with their sizes,
    and only the unknown ones go into the node's next manifest for everyone."""
    node, _ = started_node(make_node, bucket, clock, mission, segment=False)
    space = mission.space
    s3 = S3Store(BUCKET_URL, mission.name, objects=bucket)
    unknown = BitMap(range(2, N, 400))
    for task in unknown | EARLY:
        bucket.put(s3.key(WITNESSES, space.rel(task)), b"x" * size_of(task))
    journal = node.sync.journal
    assert journal is not None
    many = getattr(journal, "append_many", None)
    batches: list[tuple[bool, int]] = []  # (from a worker thread, notes)

    def append_many(ev: str, rels: Iterable[str], **fields: Any) -> int:
        batches.append((threading.current_thread() is not threading.main_thread(), 0))
        assert many is not None
        n = many(ev, rels, **fields)
        batches[-1] = (batches[-1][0], n)
        return n

    if many is not None:
        journal.append_many = append_many  # type: ignore[method-assign]
    assert node.refresh(verify=True) == len(unknown)
    assert batches == [(True, len(unknown))]
    assert node.sync.remote == unknown | EARLY
    assert [node.sync.sizes.get(t) for t in unknown] == [size_of(t) for t in unknown]
    published = node.sync._manifest
    assert sorted(published) == sorted(sg.line(space.rel(t), "", size_of(t)) for t in unknown)
    assert sorted(noted(node)) == sorted(space.rel(t) for t in unknown)
