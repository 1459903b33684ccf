"""A full disk under the state directory: every request says ENOSPC, nothing acknowledged is lost.

The state directory is a small ext4 filesystem on a loop device, filled up with one file. Each
test checks the errno a real process sees, that the daemon still serves, then frees the space
and checks that work resumes, that the witnesses committed before are intact and that
`missionfs fsck` (the oracle) finds the state directory clean.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mount.test_mount import CSV, commit_via_tmp, sh
from tests.support.loopfs import fill, free, loop_ext4
from tests.support.mounts import Mount, write_mission

EARLY = "40.700/-74.020/plumber.csv"  # committed before the disk fills up
NEW_TILE = "40.725/-73.985/coffee shop.csv"  # a row and tile with no witness yet
# A 16 MiB ext4 with 1 KiB blocks and no root reserve: fills up in a moment, to the last byte.
SMALL_DISK = ("16M", "-b", "1024", "-m", "0")


@pytest.fixture
def full(tmp_path: Path, make_mount: Callable[..., Mount]) -> Iterator[Mount]:
    """A mount whose state dir is a loop-mounted ext4 holding one witness (EARLY), then filled.

    Teardown order: the daemon first (make_mount's mounts are cleaned up here too, before the
    loop filesystem under them is unmounted)."""
    mission = write_mission(tmp_path / "mission.toml", step="0.005")
    with loop_ext4(tmp_path / "disk.img", tmp_path / "m.state", *SMALL_DISK) as state:
        m = make_mount(mission)
        try:
            assert m.state == state
            commit_via_tmp(m, EARLY)
            fill(state)
            yield m
        finally:
            m.cleanup()


def assert_alive_then_recovers(m: Mount) -> None:
    """Status still readable; after freeing space a claim and a commit work, EARLY is intact
    and fsck finds the state dir clean (nothing committed was lost, nothing half-done)."""
    assert m.proc is not None and m.proc.poll() is None, m.daemon_log()
    assert m.status()["counts"]["done"] >= 1
    whole_log = (m.state.parent / f"{m.state.name}.daemon.log").read_text(errors="replace")
    assert "ENOSPC" in whole_log  # the failure is logged, not silent
    free(m.state)
    rel = "40.715/-74.000/plumber.csv"
    sh(f"mv 'pending/{rel}' 'claimed/{rel}'", m.mnt)
    commit_via_tmp(m, rel, name="after")
    assert m.p(f"done/{EARLY}").read_text() == CSV
    m.umount()
    res = m.fsck()
    assert res.returncode == 0 and "fsck: clean" in res.stdout, res.stdout + res.stderr
    assert (m.state / "scraped-tiles" / EARLY).read_text() == CSV


def test_tmp_file_on_full_disk_is_enospc(full: Mount) -> None:
    res = sh(f"printf %s {CSV!r} > tmp/x", full.mnt, check=False)
    assert res.returncode != 0 and "No space left on device" in res.stderr, res.stderr
    assert full.status()["request_errors"]["ENOSPC"] >= 1
    assert_alive_then_recovers(full)


def test_direct_write_on_full_disk_is_enospc(full: Mount) -> None:
    rel = "40.705/-74.010/coffee shop.csv"
    res = sh(f"printf %s {CSV!r} > 'done/{rel}'", full.mnt, check=False)
    assert res.returncode != 0 and "No space left on device" in res.stderr, res.stderr
    assert full.p(f"pending/{rel}").exists()
    assert_alive_then_recovers(full)


def test_commit_into_new_tile_on_full_disk_is_enospc_and_keeps_the_tmp_file(
    tmp_path: Path, make_mount: Callable[..., Mount]
) -> None:
    mission = write_mission(tmp_path / "mission.toml", step="0.005")
    with loop_ext4(tmp_path / "disk.img", tmp_path / "m.state", *SMALL_DISK) as state:
        m = make_mount(mission)
        try:
            commit_via_tmp(m, EARLY)
            fd = os.open(m.p("tmp/result"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, CSV.encode())
            os.fsync(fd)
            os.close(fd)
            fill(state)
            res = sh(f"mv tmp/result 'done/{NEW_TILE}'", m.mnt, check=False)
            assert res.returncode != 0 and "No space left on device" in res.stderr, res.stderr
            assert m.p("tmp/result").read_text() == CSV  # the user's file is still there
            assert m.p(f"pending/{NEW_TILE}").exists()  # the task is still pending
            assert not m.p(f"done/{NEW_TILE}").exists()
            free(state)
            sh(f"mv tmp/result 'done/{NEW_TILE}'", m.mnt)  # the same file commits now
            assert m.p(f"done/{NEW_TILE}").read_text() == CSV
            assert_alive_then_recovers_after_free(m)
        finally:
            m.cleanup()


def assert_alive_then_recovers_after_free(m: Mount) -> None:
    (m.state / "filler").touch()  # assert_alive_then_recovers frees it
    assert_alive_then_recovers(m)


def test_claim_on_full_disk_is_enospc_and_rolled_back(full: Mount) -> None:
    pending = sorted(
        str(p.relative_to(full.p("pending"))) for p in full.p("pending").rglob("*.csv")
    )
    # Two claims while there is space, so claims.log and the journal have a partly used last
    # block: the claims that still fit there succeed, the first that does not is refused.
    free(full.state)
    won: list[str] = []
    for rel in pending[:2]:
        os.rename(full.p(f"pending/{rel}"), full.p(f"claimed/{rel}"))
        won.append(rel)
    fill(full.state)
    refused = None
    for rel in pending[2:80]:  # each claim appends a line to claims.log and the journal
        try:
            os.rename(full.p(f"pending/{rel}"), full.p(f"claimed/{rel}"))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            refused = rel
            break
        won.append(rel)
    assert refused is not None, "no claim failed on a full disk"
    assert full.p(f"pending/{refused}").exists() and not full.p(f"claimed/{refused}").exists()
    claimed = {str(p.relative_to(full.p("claimed"))) for p in full.p("claimed").rglob("*.csv")}
    assert claimed == set(won)
    assert full.status()["counts"]["claimed"] == len(won)
    for rel in won:  # a renewal on the full disk succeeds (its log line waits for space)
        os.utime(full.p(f"claimed/{rel}"))
    # After a restart the claims log holds exactly the claims that were acknowledged.
    free(full.state)
    full.umount()
    full.start()
    claimed = {str(p.relative_to(full.p("claimed"))) for p in full.p("claimed").rglob("*.csv")}
    assert claimed == set(won)
    assert full.p(f"pending/{refused}").exists()
    assert_alive_then_recovers_after_free(full)


def test_claim_whose_journal_line_fails_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other half of a claim's persistence (the real-disk test above usually hits
    claims.log first): claims.log written, journal refused -> rolled back, and claims.log ends
    the claim, so a restart does not hold it. Handlers called directly, without a mount."""
    import types

    import pyfuse3
    import trio

    from fusefs.engine.claims import Claims
    from fusefs.engine.workspace import open_workspace
    from fusefs.fuse.fs import MissionFS
    from fusefs.model.mission import load_mission
    from fusefs.model.state import MissionState
    from fusefs.statedir import journal as journal_module
    from fusefs.statedir.claimlog import ClaimLog

    mission = load_mission(write_mission(tmp_path / "mission.toml"))
    ws = open_workspace(mission, tmp_path / "state", lock=False)
    claim_log = ClaimLog(ws.store.layout.claims_log, ws.state)
    claims = Claims(
        ws.state,
        ws.committer.journal,
        ws.lease,
        committer=ws.committer,
        store=ws.store,
        status=ws.status,
        claim_log=claim_log,
    )
    fs = MissionFS(ws.state, ws.store, ws.committer, ws.status, claims, invalidate=False)
    claims.restore()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "append_whole", full)  # the journal's disk is full
    task = 3
    ctx = types.SimpleNamespace(pid=os.getpid())
    with pytest.raises(pyfuse3.FUSEError) as refused:
        trio.run(fs._claim, task, ctx)  # type: ignore[arg-type]
    assert refused.value.errno == errno.ENOSPC
    assert task in ws.state.pending and task not in ws.state.claims
    claim_log.close()
    again = MissionState(mission.space, mission.intent)
    assert ClaimLog(ws.store.layout.claims_log, again).claim_live() == {}
    ws.close()
