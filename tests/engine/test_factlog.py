"""Protocol v2's fact log over an in-process bucket (factlog.py, docs/protocol.md): node
manifests per window, segments, checkpoints, and what happens when parts of it fail.

The bucket's clock (the FakeClock) is the server's: windows come from it alone. The machine's
own clock (time.time, decades away from the FakeClock's) plays no part, which is what lets a
node whose clock is off name windows right (tests/mount/test_factlog_s3.py skews a real one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from pyroaring import BitMap

from fusefs.engine import fscksegments
from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model import segment as sg
from fusefs.model.checkpoint import Checkpoint
from fusefs.model.errors import S3Unavailable
from fusefs.objects.s3store import S3Store
from tests.engine.driver import (
    BUCKET_URL,
    WINDOW,
    EngineNode,
    FakeClock,
    RecordingStore,
    close_window,
)

RELS = [
    "10.0/20.0/coffee shop.csv",
    "10.0/20.0/plumber.csv",
    "10.1/20.0/coffee shop.csv",
    "10.1/20.1/plumber.csv",
    "10.2/20.0/coffee shop.csv",
    "10.2/20.1/plumber.csv",
]


def body(rel: str) -> bytes:
    return f"name\n{rel}\n".encode()


def work(node: EngineNode, *rels: str) -> None:
    """The node finishes tasks and uploads them (its node manifest waits for its window's
    end, or a drain: here the drain of `upload`)."""
    for rel in rels:
        assert node.direct_write(rel, body(rel)) == 0
    assert node.upload() == 0


def knows(node: EngineNode, rel: str) -> bool:
    return node.mission.space.parse_rel(rel) in node.sync.remote


def turn(clock: FakeClock, *nodes: EngineNode) -> None:
    """A window closes: every node's loop turns at the compaction time (the designated
    compactor writes the segment), then at the reading time (the others GET it)."""
    end = (clock.now // WINDOW + 1) * WINDOW
    clock.now = end + 5.0 + 0.01  # settle: 5 s with 30 s windows
    for node in nodes:
        node.refresh()
    close_window(clock, WINDOW)
    clock.now = end + 0.75 * WINDOW
    for _ in range(2):
        for node in nodes:
            node.refresh()


def layout(node: EngineNode, bucket: RecordingStore) -> S3Store:
    return S3Store(BUCKET_URL, node.mission.name, objects=bucket)


def test_nodes_learn_each_others_witnesses_through_one_segment_per_window(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """Three nodes, one window: each PUTs one node manifest; one segment holds all three; a
    node that did not compact it learns everything with one GET."""
    a, b, c = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "abc")
    for n in (a, b, c):
        n.refresh()  # start: a bucket without checkpoint is listed once (bootstrap)
    turn(clock, a, b, c)
    for n, rel in zip((a, b, c), RELS, strict=False):
        work(n, rel)
    w = a.sync.factlog.window(clock.now)
    s3 = layout(a, bucket)
    assert sorted(name for name, _ in s3.node_manifests(w)) == [
        f"worker-{n}-00000001.txt" for n in "abc"
    ]
    close_window(clock)
    first = None
    for n in (a, b, c):  # the compactor (rendezvous among the crew) writes it, once
        mark = len(bucket.log)
        n.refresh()
        if n.sync.factlog._wrote == w:
            first = n
            continue
        # Not the compactor: one GET of the segment, whatever the fleet's size.
        assert [k for _, k in bucket.since(mark)] in ([s3.segment_key(w)], [])
    assert first is not None
    for n in (a, b, c):
        n.refresh()
        assert n.sync.factlog.cursor == w
        assert all(knows(n, rel) for rel in RELS[:3]), n.worker
        assert n.stat(f"done/{RELS[0]}").size == len(body(RELS[0]))
    found = s3.get_segment(w)
    assert found is not None
    seg = sg.decode(found[0], w)
    assert [f.rel for f in seg.facts] == sorted(RELS[:3])
    assert seg.workers == {"worker-a": 1, "worker-b": 1, "worker-c": 1}
    assert b.read(f"done/{RELS[0]}") == body(RELS[0])


def test_a_compactor_killed_mid_compaction_leaves_a_gap_the_fallback_fills(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    work(a, RELS[0])
    work(b, RELS[1])
    turn(clock, a, b)  # both in the crew now (the segment names them)
    work(a, RELS[2])
    work(b, RELS[3])
    w = a.sync.factlog.window(clock.now)
    close_window(clock)
    crew = a.sync.factlog.members(w + 1)
    assert sorted(crew) == ["worker-a", "worker-b"]
    rank0 = sg.rendezvous(f"{w}", crew)[0]
    dead, alive = (a, b) if rank0 == "worker-a" else (b, a)

    def killed(*_: object) -> bool:
        raise S3Unavailable("killed before its PUT")

    monkeypatch.setattr(dead.sync.s3, "put_segment", killed)
    with pytest.raises(S3Unavailable):  # it listed and read the manifests, then died
        dead.refresh()
    dead.close(clean=False)
    s3 = layout(alive, bucket)
    assert s3.get_segment(w) is None
    # The rank-2 node steps in W/4 after the compactor's time (end + 5 + 7.5 s): not before.
    clock.now = sg.window_end(w, WINDOW) + 11.5  # its reading time (end + 8..11 s) is past
    mark = len(bucket.log)
    alive.refresh()
    assert bucket.since(mark) == [("GET", s3.segment_key(w))]  # 404
    assert s3.get_segment(w) is None and alive.sync.factlog.cursor == w - 1
    mark = len(bucket.log)
    clock.advance(0.5)
    alive.refresh()  # a missing segment is not asked for again at every turn of the loop
    assert bucket.since(mark) == []
    clock.now = sg.window_end(w, WINDOW) + 5.0 + WINDOW / 4 + 0.1
    alive.refresh()
    assert alive.sync.factlog._wrote == w and s3.get_segment(w) is not None
    assert all(knows(alive, rel) for rel in RELS[:4])  # nothing lost
    dead.restart(clean=False)  # back: it reads the fallback's segment
    dead.refresh()
    assert all(knows(dead, rel) for rel in RELS[:4])


def test_a_late_manifest_is_published_again(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's manifest PUT lands after B compacted its window: the segment does not name it, so
    A publishes its lines again in its current window, and B learns them from the next one."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    work(b, RELS[1])
    turn(clock, b, a)
    held: list[tuple[int, str, bytes]] = []
    real = a.sync.s3.put_node_manifest
    monkeypatch.setattr(
        a.sync.s3, "put_node_manifest", lambda w, n, data: held.append((w, n, data))
    )
    work(a, RELS[0])  # its PUT is slow...
    assert len(held) == 1
    w = held[0][0]
    close_window(clock)
    b.refresh()  # ...B, alone in the crew, compacts the window without it
    assert b.sync.factlog._wrote == w and not knows(b, RELS[0])
    monkeypatch.setattr(a.sync.s3, "put_node_manifest", real)
    real(*held[0])  # ...and lands late
    a.refresh()  # applies segment w: its manifest is missing from the header
    assert a.sync.factlog.republished == 1
    a.run(partial(a.sync.flush_manifest, now=True))  # `drain` (or its window's end) publishes again
    turn(clock, a, b)
    assert knows(b, RELS[0])


def test_a_deleted_or_corrupt_segment_is_rebuilt_from_the_manifests(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    s3 = layout(a, bucket)
    for damage in ("delete", "corrupt"):
        rel = RELS[0] if damage == "delete" else RELS[1]
        work(a, rel)
        w = a.sync.factlog.window(clock.now)
        close_window(clock)
        a.refresh()  # A compacts (B has not published: it is not in the crew)
        assert a.sync.factlog._wrote == w
        if damage == "delete":
            bucket.delete(s3.segment_key(w))
        else:
            found = s3.get_segment(w)
            assert found is not None
            bucket.put(s3.segment_key(w), found[0].replace(b"plumber", b"plumbe_"))
        clock.now = sg.window_end(w, WINDOW) + 2 * WINDOW + 6  # B's fallback is due
        b.refresh()
        assert knows(b, rel), damage
        found = s3.get_segment(w)
        assert found is not None and [f.rel for f in sg.decode(found[0], w).facts] == [rel]


def test_a_witness_whose_manifest_and_segment_are_lost_is_found_by_verification(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """The worst case: segment and node manifests of a window gone. The window is recompacted
    empty, so the fact is hidden, but not for good: a verification listing finds it and
    publishes it, and every node learns it from the next segment."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    work(a, RELS[0])
    w = a.sync.factlog.window(clock.now)
    s3 = layout(a, bucket)
    for _, key in s3.node_manifests(w):
        bucket.delete(key)
    turn(clock, a, b)
    assert not knows(b, RELS[0])
    assert b.refresh(verify=True) == 1  # `missionfs sync --verify`: every shard listed
    assert b.sync._manifest and b.sync._manifest[0].startswith(RELS[0] + "\t\t")
    c = make_node(bucket=bucket, name="c", worker="worker-c")
    c.refresh()
    b.run(partial(b.sync.flush_manifest, now=True))
    turn(clock, a, b, c)
    assert knows(c, RELS[0]) and knows(a, RELS[0])


def test_a_new_node_learns_every_fact_from_a_checkpoint_in_few_requests(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    a.refresh()
    done = []
    for rel in RELS:
        work(a, rel)
        done.append(rel)
        turn(clock, a)
    while a.sync.factlog.window(clock.now) % 10 != 1:  # through a checkpoint window
        turn(clock, a)
    assert a.sync.factlog.checkpoints_written >= 2  # bootstrap's, and window % C == 0's
    mark = len(bucket.log)
    c = make_node(bucket=bucket, name="c", worker="worker-c")
    c.upload()  # connect and start: the first refresh
    asked = bucket.since(mark)
    learning = [(k, key) for k, key in asked if "/.missionfs/probe" not in key]
    assert len(learning) <= 20, learning
    assert not [key for _, key in asked if "/scraped-tiles/" in key]  # no listing of witnesses
    assert all(knows(c, rel) for rel in done)
    assert c.stat(f"done/{RELS[0]}").size == len(body(RELS[0]))  # sizes from the checkpoint


def test_a_node_offline_for_days_starts_from_a_checkpoint_and_its_queue_reaches_everyone(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """Hour-long windows (the fleet's protocol.json), so three days are 72 windows. B leaves
    with work queued; A keeps working; B comes back after three days: it loads the newest
    checkpoint and the few segments after it, and its queued witnesses reach A."""
    hour = 3600.0
    s3 = S3Store(BUCKET_URL, "engine-tier", objects=bucket)
    assert s3.create_protocol({"version": 2, "window": hour})
    bucket.put(f"{s3.base}/manifests/{1000:013d}-v1-00000001.txt", b"")  # protocol v1's
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    assert a.sync.factlog.width == hour
    assert b.direct_write(RELS[5], body(RELS[5])) == 0
    b.close()  # unmounted with its upload queued (the uploader never ran)
    for i in range(72):
        if i < 5:
            work(a, RELS[i])
        close_window(clock, hour)
        a.refresh()
    assert a.sync.factlog.checkpoints_written >= 7
    # Retention (by the compactors, a few requests every C windows): the node manifests older
    # than an hour, protocol v1's manifests, the checkpoints but 3, the segments before them.
    assert s3.log_windows_before(a.sync.factlog.window(clock.now)) == []
    assert not list(s3.manifests())
    kept = s3.checkpoint_windows()
    assert len(kept) == 3 and min(s3.segment_windows()) >= min(kept) - 10
    b.restart()
    mark = len(bucket.log)
    b.refresh()
    asked = [(k, key) for k, key in bucket.since(mark) if "/.missionfs/probe" not in key]
    assert len(asked) <= 20, asked
    assert b.sync.factlog.checkpoint_loaded is not None
    assert all(knows(b, rel) for rel in RELS[:5])
    assert b.upload() == 0  # the queue goes out, and its manifest with it
    close_window(clock, hour)
    a.refresh()
    b.refresh()
    a.refresh()
    assert knows(a, RELS[5])


def test_fsck_finds_corrupt_and_unmerged_segments_and_rebuilds_them(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """fsck's segments check (fscksegments.py): a corrupt segment and a closed window whose
    node manifests were never merged are reported, and --repair rebuilds both from the node
    manifests; a window nobody wrote in needs no segment."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    a.refresh()
    s3 = layout(a, bucket)
    windows = []
    for rel in RELS[:2]:
        work(a, rel)
        windows.append(a.sync.factlog.window(clock.now))
        turn(clock, a)
    turn(clock, a)  # an empty window between
    corrupt, lost = windows
    found = s3.get_segment(corrupt)
    assert found is not None
    bucket.put(s3.segment_key(corrupt), found[0] + b"10.2/20.2/plumber.csv\t\t1\n")
    bucket.delete(s3.segment_key(lost))
    findings = fscksegments.audit(s3, WINDOW, clock.now)
    assert [(f.kind, f.window) for f in findings] == [
        ("segment-corrupt", corrupt),
        ("segment-missing", lost),
    ]
    assert findings[0].where == f"segments/{corrupt:010d}.seg"
    for f in findings:
        ok, how = fscksegments.rebuild(s3, f)
        assert ok and how == "rebuilt from 1 node manifest(s), 1 fact(s)"
    assert fscksegments.audit(s3, WINDOW, clock.now) == []
    for w, rel in zip(windows, RELS, strict=False):
        found = s3.get_segment(w)
        assert found is not None and [f.rel for f in sg.decode(found[0], w).facts] == [rel]


@pytest.mark.parametrize("n", [2, 6])
def test_fact_log_requests_per_node_and_window_do_not_grow_with_the_fleet(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock, n: int
) -> None:
    """Steady state, every node uploading every window: per node and window, one manifest PUT
    and one segment GET, plus the compaction shared by the fleet (a LIST, a GET per manifest,
    a PUT): 3 + 1/N requests, whatever N (protocol v1: a GET per peer's manifest, N - 1)."""
    nodes = [make_node(bucket=bucket, name=f"n{i}", worker=f"worker-{i}") for i in range(n)]
    for node in nodes:
        node.refresh()
    todo = _all_rels(nodes[0])  # 15 tasks: 2 windows of 6 nodes
    turn(clock, *nodes)  # the crew is known from here on
    mark = len(bucket.log)
    windows = 2
    for _ in range(windows):
        for node in nodes:
            work(node, todo.pop())
        turn(clock, *nodes)
    areas = ("/log/", "/segments/", "/checkpoints/", "/manifests/")
    asked = [(kind, key) for kind, key in bucket.since(mark) if any(a in key for a in areas)]
    retention = [(kind, key) for kind, key in asked if key.endswith(areas)]  # every C windows
    steady = [r for r in asked if r not in retention]
    assert len(steady) / (n * windows) <= 3 + 1 / n + 0.01, "\n".join(map(str, steady))
    assert len(retention) <= 4, retention
    for node in nodes:
        assert all(knows(node, rel) for other in nodes for rel in _done(other))


def _all_rels(node: EngineNode) -> list[str]:
    return sorted(node.mission.space.rel(t) for t in node.mission.intent)


def _done(node: EngineNode) -> list[str]:
    return [node.mission.space.rel(t) for t in node.sync.local]


def test_hour_long_windows_late_in_the_hour_list_the_bucket_once(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """The bootstrap's cursor is window(T) - 2: with hour-long windows, late in the hour, the
    window after it ended almost an hour ago. It is merged (or taken from a newer checkpoint),
    never a reason to list the bucket again and again (it was, at every turn)."""
    hour = 3600.0
    s3 = S3Store(BUCKET_URL, "engine-tier", objects=bucket)
    assert s3.create_protocol({"version": 2, "window": hour})
    clock.now = (clock.now // hour + 1) * hour + 3500  # 100 s before the end of a window
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    work(a, RELS[0])
    listing = [k for kind, k in bucket.log if kind == "LIST" and "/scraped-tiles/" in k]
    assert listing  # the bootstrap
    mark = len(bucket.log)
    for _ in range(3):
        clock.advance(1.0)
        a.refresh()
    assert not [k for kind, k in bucket.since(mark) if "/scraped-tiles/" in k]
    assert a.sync.factlog.cursor == a.sync.factlog.window(clock.now) - 1


def test_a_checkpoint_named_for_a_future_window_is_not_started_from(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """Starting from it would put the cursor in the future: every segment until then would be
    skipped (facts hidden). A new node takes the newest checkpoint of a past window instead."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    work(a, RELS[0])
    turn(clock, a)
    now = a.sync.factlog.window(clock.now)
    book = CheckpointBook(layout(a, bucket), a.mission.space)
    assert book.write(Checkpoint(now + 100, BitMap()))
    c = make_node(bucket=bucket, name="c", worker="worker-c")
    c.refresh()
    assert c.sync.factlog.cursor is not None and c.sync.factlog.cursor <= now
    assert knows(c, RELS[0])


def test_a_segment_that_cannot_be_written_is_retried_calmly(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its compaction is due, but the PUT answers 412 and the GET finds nothing (a server
    that misbehaves): the node tries again after a pause, not at every turn of its loop."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    a.refresh()
    work(a, RELS[0])
    w = a.sync.factlog.window(clock.now)
    monkeypatch.setattr(a.sync.s3, "put_segment", lambda *_: False)
    monkeypatch.setattr(a.sync.s3, "get_segment", lambda *_: None)
    clock.now = sg.window_end(w, WINDOW) + 5.0 + 0.01  # its compaction is due
    mark = len(bucket.log)
    a.refresh()
    assert bucket.since(mark)  # it tried
    assert a.sync.factlog.cursor == w - 1
    mark = len(bucket.log)
    for _ in range(5):
        clock.advance(0.2)
        a.refresh()
    assert bucket.since(mark) == []  # not 5 more tries in a second
    assert a.sync.factlog.next_due() >= clock.now + 0.5
    clock.advance(2.0)
    a.refresh()
    assert bucket.since(mark)  # and again after the pause


def test_a_node_killed_before_its_window_ends_still_publishes_its_uploads(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """A uploads a witness and is killed (-9) before its window's end and before any save of
    fact-log.json: the line it owed is on disk (spool.py), so the restarted A publishes it and
    B learns it from the next segment, not an hour later from a verification listing."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    assert a.direct_write(RELS[0], body(RELS[0])) == 0

    async def upload_only() -> int:  # the uploader's turn, without the window's publish
        engine = a.sync
        return await engine.upload(list(engine.local - engine.synced))

    assert a.run(upload_only) == 0
    assert a.sync.queue_size() == 0 and a.sync._manifest  # uploaded, its line owed
    a.close(clean=False)
    a.restart(clean=False)
    assert a.sync._manifest == [a.sync._manifest[0]] and RELS[0] in a.sync._manifest[0]
    a.refresh()  # back online, its fact log started
    a.run(partial(a.sync.flush_manifest, now=True))  # its window's end (or a drain)
    turn(clock, a, b)  # the segment carries it
    assert knows(b, RELS[0])


def test_the_unmerged_tail_of_a_stopped_fleet_is_a_note_that_repair_merges(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """The last node to unmount publishes its manifest and nobody is left to merge its window:
    nothing is lost (the next node merges it as it reads), so fsck says so as a note, not a
    problem (a gap before the newest segment stays a problem, test above); --repair merges."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    a.refresh()
    s3 = layout(a, bucket)
    work(a, RELS[0])
    turn(clock, a)  # merged: the newest segment
    work(a, RELS[1])  # published, then the node stops: nobody merges this window
    tail = a.sync.factlog.window(clock.now)
    clock.now = sg.window_end(tail, WINDOW) + 2 * WINDOW
    findings = fscksegments.audit(s3, WINDOW, clock.now)
    assert [(f.kind, f.window) for f in findings] == [("segment-unmerged", tail)]
    ok, how = fscksegments.rebuild(s3, findings[0])
    assert ok and how == "rebuilt from 1 node manifest(s), 1 fact(s)"
    assert fscksegments.audit(s3, WINDOW, clock.now) == []


def test_a_fleet_started_together_compacts_each_window_once(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """Nodes that have never read a segment know no crew: each used to take itself for the
    compactor, so a fleet started together read every node manifest N times (N x N GETs, and
    SlowDowns at N = 1,000 in the simulator). Now a crewless node lists the window's
    manifests once and ranks among their writers: one node reads them."""
    nodes = [make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "abcd"]
    for n in nodes:
        n.refresh()
    for n, rel in zip(nodes, RELS, strict=False):
        work(n, rel)
    w = nodes[0].sync.factlog.window(clock.now)
    s3 = layout(nodes[0], bucket)
    log_root = s3.log_root(w)
    for n in nodes:  # as if none had read a segment yet (here the empty windows' named one)
        n.sync.factlog.crew.clear()
    close_window(clock)
    clock.now = sg.window_end(w, WINDOW) + 5.0 + 0.01  # the designated compactor's time
    mark = len(bucket.log)
    for n in nodes:
        n.refresh()
    manifest_gets = [
        k for kind, k in bucket.since(mark) if kind == "GET" and k.startswith(log_root)
    ]
    assert len(manifest_gets) == len(nodes)  # one compactor read each manifest once
    assert s3.get_segment(w) is not None
    clock.now = sg.window_end(w, WINDOW) + WINDOW
    for n in nodes:
        n.refresh()
        assert all(knows(n, rel) for rel in RELS[:4]), n.worker


def test_a_manifest_read_failing_during_compaction_is_one_plain_s3_error(
    make_node: Callable[..., EngineNode],
    bucket: RecordingStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GET failing inside the compaction's nursery came out as an ExceptionGroup, which the
    loops (they catch S3 errors by class) did not catch: the sync engine, and the daemon,
    died. Now it is the S3 error itself, and the loop backs off and tries again."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    work(a, RELS[0])
    work(b, RELS[1])
    w = a.sync.factlog.window(clock.now)
    close_window(clock)
    clock.now = sg.window_end(w, WINDOW) + 5.0 + 0.01
    real_get = bucket.get

    def failing(key: str, *args: object, **kw: object) -> object:
        if "/log/" in key:
            raise S3Unavailable("503 SlowDown")
        return real_get(key, *args, **kw)

    monkeypatch.setattr(bucket, "get", failing)
    compactor = None
    for n in (a, b):
        try:
            n.refresh()
        except S3Unavailable:
            compactor = n
    assert compactor is not None  # it raised the S3 error itself, not a group
    monkeypatch.setattr(bucket, "get", real_get)
    clock.now = sg.window_end(w, WINDOW) + WINDOW
    for n in (a, b, a):
        n.refresh()
    assert all(knows(n, rel) for n in (a, b) for rel in RELS[:2])


def test_a_node_with_nothing_finished_yet_is_crew_after_its_first_window(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """A node learns the crew from the segments (a node's lease bodies are read a few per
    listing). A node whose first tasks are still running used to be in no segment, so the
    others did not count it in the shares (and worked its share). Every node's first window
    now has a manifest of it, empty if need be: the others see it after that window."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}", claims="strict") for n in "ab")
    for n in (a, b):
        n.refresh()
    clock.now = sg.window_end(a.sync.factlog.window(clock.now), WINDOW) - 1.0  # flush time
    for n in (a, b):
        n.refresh()
    turn(clock, a, b)
    fleet = a.sync.fleet
    assert fleet is not None
    assert "worker-b" in fleet.crew.last_seen
    assert a.sync.state.elsewhere  # b's share is b's
    turn(clock, a, b)
    hellos = [k for kind, k in bucket.log if kind == "PUT" and "/log/" in k and "worker-b" in k]
    assert len(hellos) == 1  # once per start, not once per window


def test_a_node_whose_turns_miss_the_flush_slot_publishes_in_the_next_window(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """A node publishes its manifest in the last `_lead()` seconds of a window. A busy node
    whose turns never fall in that slot (its segment reads take longer than the rest of the
    window: seen with 0.5 s windows on a loaded machine) never published: its facts reached
    nobody. It now publishes at its first turn in a later window."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    a.sync.factlog.hello = False  # only the owed line below is to publish
    assert a.direct_write(RELS[0], body(RELS[0])) == 0

    async def upload_only() -> int:  # the uploader's turn, without the window's publish
        engine = a.sync
        return await engine.upload(list(engine.local - engine.synced))

    assert a.run(upload_only) == 0 and a.sync._manifest
    s3 = layout(a, bucket)
    w = a.sync.factlog.window(clock.now)
    clock.now = sg.window_end(w, WINDOW) - WINDOW / 2  # mid-window: not in the slot
    a.refresh()
    assert a.sync._manifest  # waits for the slot
    clock.now = sg.window_end(w + 1, WINDOW) - WINDOW / 2  # the slot passed without a turn
    a.refresh()
    assert not a.sync._manifest
    assert [name for name, _ in s3.node_manifests(w + 1)] == ["worker-a-00000001.txt"]
    turn(clock, a, b)
    assert knows(b, RELS[0])


def test_a_manifest_that_landed_late_with_facts_merged_since_is_a_note_not_a_problem(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """A node's manifest PUT timed out while S3 hung; it published the lines again in a later
    window, and the first PUT landed after the node had passed its window over as empty (seen
    by bench/outage_run.py s3hang). fsck called that window "segment-missing", a problem,
    though every fact of it is in a segment. Now it is "segment-orphan", a note; a window whose
    manifests hold a fact no segment has is still "segment-missing"."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    a.refresh()
    s3 = layout(a, bucket)
    work(a, RELS[0])
    w0 = a.sync.factlog.window(clock.now)
    turn(clock, a)
    turn(clock, a)  # an empty window
    work(a, RELS[1])
    turn(clock, a)
    empty = w0 + 1
    bucket.delete(s3.segment_key(empty))  # passed over as empty (a node far behind does so)
    assert s3.get_segment(w0 + 2) is not None
    late = sg.line(RELS[1], "ab" * 32, 9)
    s3.put_node_manifest(empty, "worker-a-00000099.txt", f"{late}\n".encode())
    findings = fscksegments.audit(s3, WINDOW, clock.now)
    assert [(f.kind, f.window) for f in findings] == [("segment-orphan", empty)]
    unknown = sg.line(RELS[3], "cd" * 32, 9)
    s3.put_node_manifest(empty, "worker-b-00000001.txt", f"{unknown}\n".encode())
    findings = fscksegments.audit(s3, WINDOW, clock.now)
    assert [(f.kind, f.window) for f in findings] == [("segment-missing", empty)]


def test_a_manifest_is_never_written_into_a_window_already_read(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """A node's reading of the server's clock can go back (the Date headers' offset is
    re-estimated). A manifest written into a window whose segment the node has already applied
    was never checked against that segment: if the compactor had merged the window before it
    landed, its facts were in no segment (test_fleet_view's 0.5 s windows lost a node's
    uploads so). It now goes into the window after the node's cursor."""
    a, b = (make_node(bucket=bucket, name=n, worker=f"worker-{n}") for n in "ab")
    for n in (a, b):
        n.refresh()
    turn(clock, a, b)
    log = a.sync.factlog
    assert log.cursor is not None
    clock.now = sg.window_end(log.cursor, WINDOW) - WINDOW / 2  # back inside a window read
    work(a, RELS[0])  # its drain publishes now
    s3 = layout(a, bucket)
    assert [n for n, _ in s3.node_manifests(log.cursor)] == []
    assert [n for n, _ in s3.node_manifests(log.cursor + 1)] == ["worker-a-00000001.txt"]
    clock.now = sg.window_end(log.cursor + 1, WINDOW) + 0.1
    turn(clock, a, b)
    assert knows(b, RELS[0])
