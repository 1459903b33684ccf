"""STATE/claims.log read by a state dir's other users (`status`, `pending`): no mount needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyroaring import BitMap

from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.state import MissionState
from fusefs.statedir.claimlog import ClaimLog

SPACE = TaskSpace(Axis(0, 1, 2, 2), Axis(100, 1, 2, 2), ("a", "b"))
NOW = 1_000_000.0


def _log(path: Path, text: str) -> ClaimLog:
    path.write_text(text, encoding="utf-8")
    return ClaimLog(path, MissionState(SPACE, BitMap(range(SPACE.size))))


def test_live_claims_are_held_and_ended_expired_or_cut_ones_are_not(tmp_path: Path) -> None:
    live, renewed, ended, expired, cut = (SPACE.rel(t) for t in range(5))
    log = _log(
        tmp_path / "claims.log",
        f"claim\t{NOW + 60:.3f}\t{live}\n"
        f"claim\t{NOW - 5:.3f}\t{renewed}\n"
        f"claim\t{NOW + 30:.3f}\t{renewed}\n"  # renewed: the last line wins
        f"claim\t{NOW + 60:.3f}\t{ended}\n"
        f"end\t\t{ended}\n"
        f"claim\t{NOW - 1:.3f}\t{expired}\n"
        f"claim\t{NOW + 60:.3f}\t{cut}",  # being written: no newline yet
    )
    held = log.claim_live(NOW)
    assert held == {0: NOW + 60, 1: NOW + 30}
    assert set(log.state.claimed) == {0, 1}
    assert 2 in log.state.pending and 3 in log.state.pending and 4 in log.state.pending
    assert log.path.read_text(encoding="utf-8").endswith(cut)  # read only: the file is untouched


def test_an_unreadable_log_holds_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "claims.log"
    path.mkdir()  # reading it fails with IsADirectoryError, an OSError
    log = ClaimLog(path, MissionState(SPACE, BitMap(range(SPACE.size))))
    assert log.claim_live(NOW) == {}
    assert "cannot read" in caplog.text


def test_a_claim_ended_by_its_commit_writes_no_line_and_is_not_held_again(tmp_path: Path) -> None:
    state = MissionState(SPACE, BitMap(range(SPACE.size)))
    log = ClaimLog(tmp_path / "claims.log", state)
    log.restore(NOW)
    done, released = 0, 1
    for task in (done, released):
        state.claim(task, NOW, 60.0, "pid 1")
    state.add_fact(done)  # committed: the claim ends with no line
    state.release(released)
    lines = (tmp_path / "claims.log").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == ["claim", "claim", "end"]
    assert lines[-1].endswith(SPACE.rel(released))
    again = MissionState(SPACE, BitMap(range(SPACE.size)))
    again.add_fact(done)  # a restart knows the fact (its index)
    refused: list[str] = []
    assert ClaimLog(tmp_path / "claims.log", again).claim_live(NOW + 1, "", refused.append) == {}
    assert refused == []  # not counted as a claim refused at restart: it simply ended


def test_a_removed_facts_claim_gets_its_end_line_so_a_restart_does_not_hold_it(
    tmp_path: Path,
) -> None:
    """The commit ended the claim without a line; when the fact goes (a witness removed, found
    at a reconcile), the end line is written, or a restart within the lease would hold the
    claim again and keep the pending task from every worker."""
    state = MissionState(SPACE, BitMap(range(SPACE.size)))
    log = ClaimLog(tmp_path / "claims.log", state)
    log.restore(NOW)
    state.claim(0, NOW, 60.0, "pid 1")
    state.add_fact(0)
    state.remove_facts(BitMap([0]))  # pending again
    lines = (tmp_path / "claims.log").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == ["claim", "end"]
    again = MissionState(SPACE, BitMap(range(SPACE.size)))
    assert ClaimLog(tmp_path / "claims.log", again).claim_live(NOW + 1) == {}
    assert 0 in again.pending
