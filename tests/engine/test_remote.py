"""Remote facts (other workers' witnesses learned by the sync engine), over an in-process bucket."""

from __future__ import annotations

import errno
from collections.abc import Callable

from pyroaring import BitMap

from fusefs.objects.memory import MemoryStore
from tests.engine.driver import EngineNode, FakeClock, RecordingStore, close_window

REL = "10.0/20.2/plumber.csv"
BODY = b"name\nfrom another worker\n"


def test_a_remote_fact_leaves_pending_and_ends_our_claim(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    node = make_node(bucket=bucket)
    assert node.claim(REL) == 0
    assert node.learn_remote(REL, BODY) == 1
    assert node.ls("claimed") == []
    assert node.ls("pending/10.0/20.2") == ["coffee shop.csv"]
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.stat(f"done/{REL}").size == len(BODY)  # known from the listing, before a fetch
    assert node.direct_write(REL, b"name\nours\n") == errno.EEXIST
    assert node.read(f"done/{REL}") == BODY  # fetched from the bucket, kept locally
    assert node.stat(f"done/{REL}").size == len(BODY)
    assert (node.state_dir / "scraped-tiles" / REL).read_bytes() == BODY
    assert node.status()["sync"]["remote_facts"] == 1


def test_remote_facts_survive_a_restart_without_the_bucket_listing_them_again(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    node = make_node(bucket=bucket)
    assert node.learn_remote(REL, BODY) == 1
    node.restart()
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.claim(REL) == errno.ENOENT
    assert node.learn_remote(REL, BODY) == 0  # already known
    assert node.read(f"done/{REL}") == BODY


def test_remote_fact_of_a_task_done_here_changes_nothing(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    node = make_node(bucket=bucket)
    assert node.direct_write(REL, b"name\nours\n") == 0
    node.learn_remote(REL, BODY)
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.read(f"done/{REL}") == b"name\nours\n"


def test_remote_sizes_survive_restarts_of_both_kinds_without_a_listing(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    """Sizes are kept with the remote facts: after an unmount (the snapshot's sizes file) and
    after a kill (no snapshot: the log lines), `stat` is right at once, and no start-up
    listing is needed for it."""
    node = make_node(bucket=bucket)
    other = "10.1/20.0/coffee shop.csv"
    sizes = {REL: len(BODY), other: 2 * len(BODY)}
    assert node.learn_remote(REL, BODY) == 1
    node.restart(clean=True)
    assert node.learn_remote(other, BODY * 2) == 1  # only in the log: the next restart kills
    for clean in (False, False, True, False):
        node.restart(clean=clean)
        assert node.ws.sync is not None
        assert not node.ws.sync.unsized and not node.ws.sync._list_for_sizes
        for rel, size in sizes.items():
            assert node.stat(f"done/{rel}").size == size, (rel, clean)
            tile, _, name = rel.rpartition("/")
            listed = {e.name: e.size for e in node.ls_entries(f"done/{tile}")}
            assert listed[name] == size, (rel, clean)  # `ls -l`, `du`, rsync's listing
    assert node.read(f"done/{other}") == BODY * 2
    node.restart(clean=False)  # fetched since: the local file answers, no size kept for it
    assert node.stat(f"done/{other}").size == 2 * len(BODY)
    assert (
        node.ws.sync is not None
        and node.ws.sync.sizes.get(node.mission.space.parse_rel(other)) is None
    )


def test_a_state_dir_without_sizes_lists_the_bucket_for_them(
    make_node: Callable[..., EngineNode], bucket: MemoryStore
) -> None:
    """The format before sizes were kept: plain `rel` lines, no sizes file. The facts load and
    the sizes are asked from the bucket (the start-up listing), as before."""
    node = make_node(bucket=bucket)
    assert node.learn_remote(REL, BODY) == 1
    node.close(clean=False)
    index = node.state_dir / "index"
    for sizes in index.glob("remote-*.sizes"):
        sizes.unlink()
    for log in index.glob("remote-*.log"):
        log.write_text(
            "".join(line.split("\t")[0] + "\n" for line in log.read_text().split("\n")[:-1])
        )
    node._open()
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.ws.sync is not None and node.ws.sync._list_for_sizes
    assert node.ws.sync.unsized == BitMap([node.mission.space.parse_rel(REL)])
    assert node.read(f"done/{REL}") == BODY


def test_a_commit_uploaded_by_one_node_is_learned_by_the_other_with_its_size(
    make_node: Callable[..., EngineNode], bucket: RecordingStore, clock: FakeClock
) -> None:
    """The whole path through the real SyncEngine and the bucket layout: node A commits and
    uploads (witness, then its node manifest); node B learns the fact by a verifying listing
    first (`sync --verify`), then from the window's segment alone (no listing of the
    witnesses), each with its size before any fetch, then reads the bytes."""
    a = make_node(bucket=bucket, name="a", worker="worker-a")
    b = make_node(bucket=bucket, name="b", worker="worker-b")
    assert a.direct_write(REL, BODY) == 0
    assert a.upload() == 0  # nothing left queued
    assert b.refresh(verify=True) == 1
    assert b.ls("done/10.0/20.2") == ["plumber.csv"]
    assert b.stat(f"done/{REL}").size == len(BODY)  # from the listing
    other, body = "10.1/20.0/coffee shop.csv", BODY * 3
    assert a.commit_tmp("x.csv", body, other) == 0
    assert a.upload() == 0
    assert b.refresh() == 0  # the window is still open: nothing to read yet
    close_window(clock)
    assert a.refresh() == 0  # A, the only uploader so far, is the window's compactor
    mark = len(bucket.log)
    assert b.refresh() == 1  # the segment of A's window: one GET
    segment = f"runs/{b.mission.name}/segments/{b.sync.factlog.cursor:010d}.seg"
    # No listing of manifests or witnesses (b's own manifest may go up in this turn: the
    # fact its verification found is owed to the fleet, and its window's slot has passed).
    reads = [r for r in bucket.since(mark) if not (r[0] == "PUT" and "/log/" in r[1])]
    assert reads == [("GET", segment)]
    assert b.stat(f"done/{other}").size == len(body)  # from the segment's line
    assert not b.exists(f"pending/{other}")
    assert b.read(f"done/{other}") == body
    assert b.read(f"done/{REL}") == BODY
    assert b.refresh() == 0  # nothing new
    assert a.refresh(verify=True) == 0  # its own uploads are facts already
