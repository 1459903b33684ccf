"""The reference worker on real mounts: whole missions, failing sources, lease renewal and
expiry, a worker killed mid-task, stop signals, bad input, and the lazy spread-out walk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs.model.mission import load_mission
from scraper import cli, walk
from scraper.overpass import normalise
from scraper.schema import TaskInfo
from scraper.synthetic import synthetic_rows
from tests.support.mounts import Mount, wait_for, write_mission
from tests.support.scraper_util import (
    COFFEE,
    PLUMBER,
    SCRAPER,
    OverpassStub,
    Reply,
    Seen,
    check_witness,
    default_reply,
    finish,
    load_recorded,
    processes,
    start,
    tree_files,
)


def all_rels(mission: Path) -> set[str]:
    m = load_mission(mission)
    return {m.space.rel(t) for t in m.intent}


def scrape(mnt: Path, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Run `python -m scraper MNT --json ARGS`; (exit status, JSON summary, stderr)."""
    res = subprocess.run(
        [*SCRAPER, str(mnt), "--json", *args], capture_output=True, text=True, timeout=timeout
    )
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


def assert_no_claims_and_clean_tmp(m: Mount) -> None:
    assert tree_files(m.p("claimed")) == set()
    assert os.listdir(m.p("tmp")) == []
    assert m.status()["counts"]["claimed"] == 0


def test_synthetic_mission_end_to_end(mount: Mount, mission: Path) -> None:
    rc, summary, err = scrape(mount.mnt, "--source", "synthetic", "--workers", "4")
    rels = all_rels(mission)
    assert rc == 0, err
    assert summary["committed"] == len(rels) == 24 and summary["failed"] == {}
    assert summary["status"]["counts"]["done"] == 24 and summary["status"]["counts"]["pending"] == 0
    assert tree_files(mount.state / "scraped-tiles") == rels == tree_files(mount.p("done"))
    for rel in rels:
        rows = check_witness(mount.p(f"done/{rel}").read_bytes(), rel, {"synthetic"})
        task = TaskInfo.parse(_descriptor(mission, rel))
        assert [r["source_id"] for r in rows] == [p.source_id for p in synthetic_rows(task, "")]
    assert_no_claims_and_clean_tmp(mount)
    assert "24/24" in err  # the progress bar (done/total) went to stderr
    assert "24 task(s) committed" in err and "tasks/s" in err  # the human summary
    assert mount.status()["refused"] == 0


def _descriptor(mission: Path, rel: str) -> bytes:
    m = load_mission(mission)
    return m.space.descriptor(m.space.parse_rel(rel))


def test_overpass_mission_end_to_end(mount: Mount, mission: Path, stub: OverpassStub) -> None:
    args = ("--source", "overpass", "--overpass-url", stub.url, "--rate", "0", "--workers", "3")
    rc, summary, err = scrape(mount.mnt, *args)
    assert rc == 0, err
    assert summary["committed"] == 24 and len(stub.seen()) == 24
    assert all(r.headers["User-Agent"].startswith("missionfs-scrape/") for r in stub.seen())
    coffee = check_witness(mount.p(f"done/{COFFEE}").read_bytes(), COFFEE, {"osm"})
    task = TaskInfo.parse(_descriptor(mission, COFFEE))
    want = normalise(load_recorded("coffee_shop_40.71_-74.00.json"), task, "")
    assert [r["source_id"] for r in coffee] == [p.source_id for p in want] and len(want) == 6
    plumber = check_witness(mount.p(f"done/{PLUMBER}").read_bytes(), PLUMBER, {"osm"})
    assert {r["source_id"] for r in plumber} == {"node/5523891120", "way/244301877"}
    others = all_rels(mission) - {COFFEE, PLUMBER}
    assert all(check_witness(mount.p(f"done/{r}").read_bytes(), r, {"osm"}) == [] for r in others)
    assert "OpenStreetMap contributors" in err and "ODbL" in err  # attribution with the summary
    assert_no_claims_and_clean_tmp(mount)


def test_failing_source_releases_the_claim_and_reports(mount: Mount, stub: OverpassStub) -> None:
    def reply(req: Seen) -> Reply:
        if req.tile == "40.71/-74.00" and "coffee" in req.query:
            return Reply.recorded("gateway_timeout.html", 504)
        return default_reply(req)

    stub.reply = reply
    args = ["--source", "overpass", "--overpass-url", stub.url, "--rate", "0", "--workers", "4"]
    args += ["--http-retries", "1", "--backoff", "0.01", "--attempts", "2", "--retry-delay", "0.05"]
    rc, summary, err = scrape(mount.mnt, *args, "--quiet")
    assert rc == 1
    assert list(summary["failed"]) == [COFFEE] and "HTTP 504" in summary["failed"][COFFEE]
    assert summary["released"] == 2 and summary["committed"] == 23
    # Bounded: 2 task attempts x (1 try + 1 HTTP retry), and never more.
    assert len([r for r in stub.seen("40.71/-74.00") if "coffee" in r.query]) == 4
    lines = [line for line in err.splitlines() if "gave up on" in line]
    assert lines == [lines[0]] and COFFEE in lines[0] and "HTTP 504" in lines[0]
    assert mount.p(f"pending/{COFFEE}").exists()  # given back, not stuck under a claim
    assert mount.status()["counts"]["pending"] == 1
    assert_no_claims_and_clean_tmp(mount)


def test_malformed_answer_is_reported_in_one_line(mount: Mount, stub: OverpassStub) -> None:
    stub.reply = lambda req: (
        Reply.recorded("malformed.json") if req.tile == "40.70/-74.02" else default_reply(req)
    )
    args = ["--source", "overpass", "--overpass-url", stub.url, "--rate", "0", "--attempts", "1"]
    rc, summary, err = scrape(mount.mnt, *args, "--http-retries", "0", "--quiet")
    assert rc == 1 and summary["committed"] == 22  # the tile's two phrases failed, others done
    assert set(summary["failed"]) == {PLUMBER, "40.70/-74.02/coffee shop.csv"}
    why = summary["failed"][PLUMBER]
    assert why.startswith(f"overpass: malformed JSON from {stub.url}: ") and "line 25" in why
    assert sum("malformed JSON" in line for line in err.splitlines()) == 2, err
    assert_no_claims_and_clean_tmp(mount)


def test_slow_source_keeps_its_claims_alive(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """Lease 1 s, 2.5 s per task: the lease keeper renews, so no claim expires and nothing is
    done twice (without renewal the daemon would expire both claims)."""
    mission = write_mission(
        tmp_path / "small.toml", south="40.70", north="40.71", west="-74.00", east="-73.99"
    )
    m = make_mount(mission, args=("--lease", "1"))
    rc, summary, err = scrape(
        m.mnt, "--source", "synthetic", "--delay", "2.5", "--workers", "2", "--quiet"
    )
    assert rc == 0, err
    assert summary["committed"] == 2 and summary["claims_lost"] == 0
    st = m.status()
    assert st["expired_leases"] == 0 and st["refused"] == 0 and st["counts"]["done"] == 2


def test_sigterm_gives_back_the_claims(mount: Mount) -> None:
    with processes() as procs:
        p = start(
            procs,
            [
                *SCRAPER,
                str(mount.mnt),
                "--source",
                "synthetic",
                "--delay",
                "60",
                "--workers",
                "3",
                "--json",
                "--quiet",
            ],
        )
        wait_for(lambda: mount.status()["counts"]["claimed"] == 3, what="three claims")
        p.send_signal(signal.SIGTERM)
        rc, out, err = finish(p)
    summary = json.loads(out)
    assert rc == 0, err
    assert (
        summary["stopped"] == "SIGTERM" and summary["released"] == 3 and summary["committed"] == 0
    )
    assert mount.status()["counts"]["pending"] == 24
    assert_no_claims_and_clean_tmp(mount)


def test_worker_killed_mid_task_is_replaced_after_lease_expiry(
    make_mount: Callable[..., Mount], tmp_path: Path, stub: OverpassStub
) -> None:
    mission = write_mission(
        tmp_path / "one.toml", south="40.71", north="40.72", west="-74.00", east="-73.99"
    )
    m = make_mount(mission, args=("--lease", "2"))
    hang = threading.Event()
    hang.set()
    stub.reply = lambda req: (
        Reply(hang=True) if hang.is_set() and "coffee" in req.query else default_reply(req)
    )
    base = [*SCRAPER, str(m.mnt), "--source", "overpass", "--overpass-url", stub.url, "--rate", "0"]
    with processes() as procs:
        a = start(procs, [*base, "--workers", "1", "--quiet"])
        wait_for(lambda: any("coffee" in r.query for r in stub.seen()), what="worker A's request")
        assert m.p(f"claimed/{COFFEE}").exists()  # A holds the claim, blocked in its fetch
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
        hang.clear()  # the next request for the task is answered
        b = start(
            procs, [*base, "--workers", "2", "--follow", "--poll", "0.1", "--json", "--quiet"]
        )
        wait_for(lambda: m.p(f"done/{COFFEE}").exists(), timeout=30, what="B completing A's task")
        st = m.status()
        assert st["expired_leases"] >= 1  # the task came back by lease expiry, nothing else
        b.send_signal(signal.SIGTERM)
        rc, out, err = finish(b)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["committed"] >= 1 and summary["stopped"] == "SIGTERM"
    rows = check_witness(m.p(f"done/{COFFEE}").read_bytes(), COFFEE, {"osm"})
    assert len(rows) == 6
    assert len([r for r in stub.seen() if "coffee" in r.query]) == 2  # A's (lost) and B's
    assert st["counts"]["done"] == 2 and m.status()["counts"]["claimed"] == 0


def test_a_dead_mount_stops_the_run_with_one_clear_line(mount: Mount) -> None:
    cmd = [*SCRAPER, str(mount.mnt), "--source", "synthetic", "--delay", "0.2", "--workers", "2"]
    with processes() as procs:
        p = start(procs, [*cmd, "--quiet"])
        wait_for(lambda: mount.status()["counts"]["done"] >= 2, what="a few commits")
        mount.kill9()  # the daemon dies under the workers
        rc, _, err = finish(p)
    assert rc == 1
    assert (
        err.strip().splitlines()[-1].startswith(f"missionfs-scrape: {mount.mnt}: the mount is gone")
    )


# -- bad input: one line, exit status 2 --------------------------------------------------------
def test_bad_input_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    cases = [
        ([str(tmp_path / "nowhere")], "no such directory"),
        ([str(fake)], "not a missionfs mount"),
        ([str(fake), "--workers", "0"], "--workers 0: must be at least 1"),
        ([str(fake), "--poll", "0"], "--poll 0.0: must be a positive number"),
        ([str(fake), "--rate", "-1"], "--rate -1.0: must not be negative"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("missionfs-scrape: ") and message in err and err.count("\n") == 1, err
    (fake / "status").write_text('{"counts": {"intent": 1, "done": 0}}')  # looks like a mount
    assert cli.main([str(fake), "--overpass-url", "ftp://example.org/x"]) == 2
    err = capsys.readouterr().err
    assert "not an http(s) URL" in err and err.count("\n") == 1
    (fake / "status").write_text("garbage")
    assert cli.main([str(fake)]) == 2
    assert "not a missionfs status" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "missionfs-scrape"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--source" in res.stdout and "--workers" in res.stdout


# -- the walk ------------------------------------------------------------------------------------
def _pending_tree(root: Path, rows: int = 6, cols: int = 8, phrases: int = 2) -> set[str]:
    rels = set()
    for r in range(rows):
        for c in range(cols):
            d = root / f"40.{r:02d}" / f"-74.{c:02d}"
            d.mkdir(parents=True)
            for p in range(phrases):
                (d / f"p{p}.csv").write_text("{}\n")
                rels.add(f"40.{r:02d}/-74.{c:02d}/p{p}.csv")
    return rels


def test_walk_visits_every_task_once_spread_and_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rels = _pending_tree(tmp_path)
    seen = list(walk.walk_pending(str(tmp_path), "host:1:0"))
    assert sorted(seen) == sorted(rels)
    firsts = {next(walk.walk_pending(str(tmp_path), f"host:1:{i}")) for i in range(8)}
    assert len(firsts) >= 6  # 8 workers start (nearly) everywhere different, not all on one task
    assert len({f.split("/")[0] for f in firsts}) >= 3  # ... and in different rows
    calls: list[str] = []
    real = os.scandir

    def counting(path: str) -> object:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(walk.os, "scandir", counting)
    next(walk.walk_pending(str(tmp_path), "host:1:0"))
    assert len(calls) == 3  # root, one row, one tile: the first claim never lists the mission
