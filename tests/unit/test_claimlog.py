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
