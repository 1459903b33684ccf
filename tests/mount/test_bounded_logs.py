"""Bounded logs: a worker retrying a refused commit in a tight loop grows neither the journal
nor STATE/missionfs.log by more than a few lines, and `status` still counts every refusal."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs.statedir.ratelog import Coalescer, log_coalesced
from tests.support.mounts import Mount, write_mission

TRIES = 5000


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def test_5000_refused_commits_of_one_file_cost_a_few_lines(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    m = make_mount(write_mission(tmp_path / "m.toml"))
    rel = "40.70/-74.02/plumber.csv"
    tmp = m.p("tmp/bad.csv")
    tmp.write_bytes(b"name,n\nno final newline")  # truncated: refused with EBADMSG
    journal, log = m.state / "journal", m.state / "missionfs.log"
    before = _size(journal), _size(log)
    for _ in range(TRIES):
        with pytest.raises(OSError) as e:
            os.rename(tmp, m.p(f"done/{rel}"))
        assert e.value.errno == errno.EBADMSG
    st = m.status()
    assert st["refused"] == TRIES
    assert st["errors"][-1]["path"] == f"done/{rel}" and st["errors"][-1]["repeated"] == TRIES
    grown = _size(journal) - before[0], _size(log) - before[1]
    assert grown[0] < 4096 and grown[1] < 4096, grown  # one line each, not 5,000
    m.umount()  # closing the state dir writes the count of the repeats
    lines = [
        json.loads(x) for f in sorted(journal.glob("*.jsonl")) for x in f.read_text().splitlines()
    ]
    refusals = [e for e in lines if e["ev"] == "refused"]
    assert 2 <= len(refusals) <= 3 and all(e["rel"] == rel for e in refusals)
    assert sum(e.get("repeated", 1) for e in refusals) == TRIES
    text = log.read_text()
    assert text.count(f"refused commit of done/{rel}") <= 3
    assert f"repeated {TRIES - 1:,} times" in text


def test_a_sustained_flood_is_one_line_a_window_and_every_event_is_counted() -> None:
    now = [0.0]
    said: list[tuple[str, int, float]] = []
    c: Coalescer[str] = Coalescer(lambda k, n, s: said.append((k, n, s)), 60.0, lambda: now[0])
    written = 0
    for i in range(600):  # one event every 0.5 s for 5 minutes, plus a lone other key
        now[0] = i * 0.5
        written += c.seen("bad")
        c.flush()
    written += c.seen("other")
    c.flush(everything=True)
    assert written == 2  # the first "bad" and the lone "other"
    assert len(said) == 5  # one count a minute
    assert written - 1 + sum(n for k, n, _ in said if k == "bad") == 600
    now[0] = 1000.0
    assert c.seen("bad")  # a new run long after: written again


def test_log_coalesced_says_a_message_once_then_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("missionfs.test-ratelog")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(100):
            log_coalesced(logger, logging.WARNING, "refused claim of 1/2/x.csv: retry later")
        from fusefs.statedir.ratelog import LOG_REPEATS

        LOG_REPEATS.flush(everything=True)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "refused claim of 1/2/x.csv: retry later"
    assert msgs[1].startswith("refused claim of 1/2/x.csv: retry later: repeated 99 times")
    assert len(msgs) == 2


def test_missionfs_log_rotates_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's log handler (a 4 KiB limit here instead of 10 MiB): 1,000 distinct lines
    leave missionfs.log and three older files, each within the limit, and the newest lines."""
    from fusefs.cli import mount as cli

    monkeypatch.setattr(cli, "LOG_BYTES", 4096)
    logger = logging.getLogger("missionfs")
    before = list(logger.handlers)
    try:
        cli._setup_logging(tmp_path, debug=False, to_stderr=False)
        for i in range(1000):
            logger.info("line %d of a chatty daemon", i)
    finally:
        for h in logger.handlers[len(before) :]:
            h.close()
            logger.removeHandler(h)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["missionfs.log", "missionfs.log.1", "missionfs.log.2", "missionfs.log.3"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert "line 999 of a chatty daemon" in (tmp_path / "missionfs.log").read_text()
