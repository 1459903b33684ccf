"""Commits on a journaled ext4 through the AIO fsync path (fusefs/engine/durable.py): a real
daemon whose state dir is a loop-mounted ext4 commits with `mv tmp/X done/REL` and with a shell
redirection into done/, the witnesses hold the bytes written, the journal records them, fsck
finds the state dir clean, and `status` says the fsyncs went through Linux AIO."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mount.test_mount import CSV, commit_via_tmp, sh
from tests.support.aio import aio_unavailable
from tests.support.loopfs import loop_ext4
from tests.support.mounts import Mount, write_mission

NO_AIO = aio_unavailable()
pytestmark = pytest.mark.skipif(NO_AIO is not None, reason=f"Linux AIO unavailable: {NO_AIO}")

MOVED = "40.700/-74.020/plumber.csv"  # a new tile: its directory made by the commit
REDIRECTED = "40.700/-74.020/coffee shop.csv"  # the same tile: its kept descriptor reused
OTHER_TILE = "40.705/-74.010/plumber.csv"
SYNCED = "40.705/-74.010/coffee shop.csv"  # its writer fsyncs it: FUSE_FSYNC through AIO


@pytest.fixture
def on_ext4(tmp_path: Path, make_mount: Callable[..., Mount]) -> Iterator[Mount]:
    """A mount whose state dir is a fresh journaled ext4 (the daemon stopped before it is
    unmounted)."""
    mission = write_mission(tmp_path / "mission.toml", step="0.005")
    with loop_ext4(tmp_path / "disk.img", tmp_path / "m.state", "64M") as state:
        m = make_mount(mission)
        try:
            assert m.state == state
            yield m
        finally:
            m.cleanup()


def _journalled_commits(state: Path) -> dict[str, dict]:
    lines = [
        json.loads(line)
        for f in sorted((state / "journal").iterdir())
        for line in f.read_text().splitlines()
    ]
    return {r["rel"]: r for r in lines if r["ev"] == "commit"}


def test_commits_on_ext4_are_fsynced_through_aio(on_ext4: Mount) -> None:
    m = on_ext4
    assert m.status()["fsync"] == "untried"  # no AIO context before the first commit
    commit_via_tmp(m, MOVED)
    assert m.status()["fsync"] == "aio"
    bodies = {
        MOVED: CSV,
        REDIRECTED: "name,phone\nAl's,555 0100\n",
        OTHER_TILE: "name\nBo\n",
        SYNCED: "name\nCy\n",
    }
    for rel in (REDIRECTED, OTHER_TILE):
        sh(f"printf %b {json.dumps(bodies[rel])} > 'done/{rel}'", m.mnt)
    with open(m.p("tmp/synced"), "w") as f:  # fdatasync, then fsync, of a handle on the mount
        f.write(bodies[SYNCED])
        f.flush()
        os.fdatasync(f.fileno())
        os.fsync(f.fileno())
    os.rename(m.p("tmp/synced"), m.p(f"done/{SYNCED}"))
    status = m.status()
    assert status["fsync"] == "aio", m.daemon_log()
    assert status["counts"]["done"] == 4 and status["commits"] == {"rename": 2, "write": 2}
    assert status["refused"] == 0 and status["errors"] == []
    for rel, body in bodies.items():
        assert m.p(f"done/{rel}").read_text() == body
        assert (m.state / "scraped-tiles" / rel).read_text() == body
        assert not m.p(f"pending/{rel}").exists()
    journal = _journalled_commits(m.state)
    assert {rel: journal[rel]["size"] for rel in journal} == {
        rel: len(body.encode()) for rel, body in bodies.items()
    }
    assert {journal[rel]["source"] for rel in journal} == {"rename", "write"}
    assert sh("ls tmp", m.mnt).stdout == ""
    m.umount()
    res = m.fsck()
    assert res.returncode == 0 and "fsck: clean" in res.stdout, res.stdout + res.stderr
