"""Commits through the FUSE handlers: `mv tmp/X done/REL` and direct writes into done/."""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field

import pytest

from fusefs.engine.durable import Fsyncer
from tests.engine.conftest import UNPLANNED_TASK, UNPLANNED_TILE
from tests.engine.driver import EngineNode

REL = "10.1/20.0/coffee shop.csv"
BODY = b"name,phone\nJoe's,555\n"


@pytest.mark.parametrize("how", ["tmp", "direct"])
def test_valid_commit_becomes_a_witness(node: EngineNode, how: str) -> None:
    assert node.claim(REL) == 0
    code = node.commit_tmp("w1", BODY, REL) if how == "tmp" else node.direct_write(REL, BODY)
    assert code == 0
    assert node.ls("done") == ["10.1"]
    assert node.ls("done/10.1/20.0") == ["coffee shop.csv"]
    assert node.read(f"done/{REL}") == BODY
    e = node.stat(f"done/{REL}")
    assert e.size == len(BODY) and stat.S_IMODE(e.mode) == 0o444
    assert node.ls("claimed") == []  # the commit ended the claim
    assert node.ls("pending/10.1/20.0") == ["plumber.csv"]
    assert node.ls("tmp") == []
    assert (node.state_dir / "scraped-tiles" / REL).read_bytes() == BODY
    assert node.status()["commits"][{"tmp": "rename", "direct": "write"}[how]] == 1


@pytest.mark.parametrize("how", ["tmp", "direct"])
def test_malformed_csv_is_refused_and_the_task_stays_pending(node: EngineNode, how: str) -> None:
    bad = b"name,phone\ntruncated"
    code = node.commit_tmp("w1", bad, REL) if how == "tmp" else node.direct_write(REL, bad)
    assert code == errno.EBADMSG
    assert node.ls("done") == []
    assert "coffee shop.csv" in node.ls("pending/10.1/20.0")
    if how == "tmp":  # the refused result is still the worker's to fix or delete
        assert node.ls("tmp") == ["w1"] and node.read("tmp/w1") == bad
        assert node.unlink("tmp/w1") == 0
    else:  # kept for inspection, never in done/
        assert [p.name.endswith(".why") for p in (node.state_dir / "rejected").iterdir()].count(
            True
        ) == 1
    assert node.ls("tmp") == []
    assert node.status()["refused"] == 1


@pytest.mark.parametrize("how", ["tmp", "direct"])
def test_second_commit_of_a_task_is_refused(node: EngineNode, how: str) -> None:
    assert node.direct_write(REL, BODY) == 0
    other = b"name\nother\n"
    code = node.commit_tmp("w2", other, REL) if how == "tmp" else node.direct_write(REL, other)
    assert code == errno.EEXIST
    assert node.read(f"done/{REL}") == BODY  # a witness is immutable


@pytest.mark.parametrize("how", ["tmp", "direct"])
def test_commit_outside_the_plan_is_refused(node: EngineNode, how: str) -> None:
    code = (
        node.commit_tmp("w3", BODY, UNPLANNED_TASK)
        if how == "tmp"
        else node.direct_write(UNPLANNED_TASK, BODY)
    )
    assert code == errno.EACCES
    assert not node.exists(f"done/{UNPLANNED_TASK}")
    # A name that is no phrase of the mission, and a tile that is not planned at all.
    assert node.direct_write("10.1/20.0/locksmith.csv", BODY) == errno.EACCES
    assert node.direct_write(f"{UNPLANNED_TILE}/plumber.csv", BODY) == errno.ENOENT
    assert node.ls("done") == []


def test_witnesses_cannot_be_changed(node: EngineNode) -> None:
    assert node.direct_write(REL, BODY) == 0
    assert node.unlink(f"done/{REL}") == errno.EPERM
    assert node.rename(f"done/{REL}", f"pending/{REL}") == errno.EPERM
    assert node.read(f"done/{REL}") == BODY


@dataclass
class DirFsyncFault:
    """While `on`, Fsyncer.fsync of a directory fails with EIO (a dying disk); of a file it
    works. `failed`: the directory fds it failed (the commit reached that step)."""

    on: bool = True
    failed: list[int] = field(default_factory=list)


@pytest.fixture
def dir_fsync_fault(monkeypatch: pytest.MonkeyPatch) -> DirFsyncFault:
    fault = DirFsyncFault()
    real = Fsyncer.fsync

    async def fsync(self: Fsyncer, fd: int, *, datasync: bool = False) -> None:
        if fault.on and stat.S_ISDIR(os.fstat(fd).st_mode):
            fault.failed.append(fd)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        await real(self, fd, datasync=datasync)

    monkeypatch.setattr(Fsyncer, "fsync", fsync)
    return fault


@pytest.mark.parametrize("how", ["tmp", "direct"])
def test_a_failed_directory_fsync_leaves_the_task_pending_and_keeps_the_bytes(
    node: EngineNode, how: str, dir_fsync_fault: DirFsyncFault
) -> None:
    """The link was made before the directory fsync failed: it is taken back, so no witness
    exists, the task stays pending, and a retry once the disk works again commits it."""
    assert not node.ws.committer.batched  # durability strict: the commit fsyncs the directory
    code = node.commit_tmp("w1", BODY, REL) if how == "tmp" else node.direct_write(REL, BODY)
    assert code == errno.EIO and dir_fsync_fault.failed
    assert not (node.state_dir / "scraped-tiles" / REL).exists()
    assert not node.exists(f"done/{REL}")
    assert "coffee shop.csv" in node.ls("pending/10.1/20.0")
    assert REL not in _journalled_commits(node)
    assert node.status()["counts"]["done"] == 0
    if how == "tmp":  # the worker's file is still there, whole, to commit again
        assert node.ls("tmp") == ["w1"] and node.read("tmp/w1") == BODY
    else:  # the staged bytes are kept under rejected/ with a note of why
        kept = [p for p in (node.state_dir / "rejected").iterdir() if not p.name.endswith(".why")]
        assert [p.read_bytes() for p in kept] == [BODY]
    dir_fsync_fault.on = False  # the disk works again: the same commit succeeds (no stale link)
    code = node.rename("tmp/w1", f"done/{REL}") if how == "tmp" else node.direct_write(REL, BODY)
    assert code == 0
    assert (node.state_dir / "scraped-tiles" / REL).read_bytes() == BODY
    assert node.ls("pending/10.1/20.0") == ["plumber.csv"]
    assert _journalled_commits(node) == [REL]


def _journalled_commits(node: EngineNode) -> list[str]:
    """The witnesses the journal records as committed."""
    lines = [
        json.loads(line)
        for f in sorted((node.state_dir / "journal").iterdir())
        for line in f.read_text().splitlines()
    ]
    return [r["rel"] for r in lines if r["ev"] == "commit"]


def test_a_directory_that_cannot_be_opened_leaves_no_witness_behind(
    node: EngineNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory's descriptor (for its fsync) is taken before the link: out of
    descriptors (EMFILE), the commit fails with no link left (before: the link stayed, the
    worker was told the commit failed, and its retry got EEXIST)."""
    store = node.ws.store

    def no_descriptor(d: str) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    assert node.claim(REL) == 0
    node.commit_tmp("warm", b"h\n1\n", "10.1/20.0/plumber.csv")  # the tile exists, known
    monkeypatch.setattr(store.dir_fds, "acquire", no_descriptor)
    assert node.commit_tmp("w1", BODY, REL) == errno.EMFILE
    assert not (node.state_dir / "scraped-tiles" / REL).exists()
    monkeypatch.undo()
    assert node.commit_tmp("w2", BODY, REL) == 0  # no link was left: the task commits
    assert node.read(f"done/{REL}") == BODY


def test_commits_into_a_new_tile_wait_until_it_is_durable(
    node: EngineNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commits into a tile with no directory yet: the first makes it and fsyncs its
    parents; the second must not link into it, nor return, before those fsyncs end (before: it
    found the directory made and went on). A failed parent fsync is done by the next commit."""
    import trio
    import trio.testing

    from fusefs.engine.commit import Committer

    committer: Committer = node.ws.committer
    tiles = node.state_dir / "scraped-tiles"
    order: list[str] = []
    gate = trio.Event()
    fail_once = [True]
    real = Fsyncer.fsync

    async def slow_parents(self: Fsyncer, fd: int, *, datasync: bool = False) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path in (str(tiles), str(tiles / "10.2")):  # a parent of the new tile
            order.append(f"parent {os.path.relpath(path, tiles)}")
            await gate.wait()
            if fail_once[0] and path == str(tiles / "10.2"):
                fail_once[0] = False
                raise OSError(errno.EIO, "I/O error")
        await real(self, fd, datasync=datasync)

    monkeypatch.setattr(Fsyncer, "fsync", slow_parents)
    staged = []
    for i, name in enumerate(("coffee shop.csv", "plumber.csv")):
        p = node.state_dir / "tmp" / f"new{i}"
        p.write_bytes(BODY)
        staged.append((p, node.ws.state.space.parse_rel(f"10.2/20.1/{name}")))

    async def one(i: int) -> None:
        path, task = staged[i]
        try:
            await committer.commit(path, task, synced=False, source="rename")
            order.append(f"commit {i}")
        except Exception as e:  # the first: EIO from its parent's fsync
            order.append(f"failed {i}: {type(e).__name__}")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["parent ."]  # the second commit waits for the first
            gate.set()

    trio.run(main)
    # The first commit failed at its parent's fsync; the second waited for it, then made the
    # tile durable itself (the failed fsync again) before it linked and returned.
    assert order == ["parent .", "parent 10.2", "failed 0: OSError", "parent 10.2", "commit 1"]
    assert (tiles / "10.2/20.1/plumber.csv").read_bytes() == BODY
    assert not (tiles / "10.2/20.1/coffee shop.csv").exists()
