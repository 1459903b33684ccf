"""Workers in any language over one mount: the reference worker (Python threads), the bash
example and the Node.js example race over one 300-task mission."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs.model.mission import load_mission
from tests.mount.test_s3 import s3_mission
from tests.support.mounts import ROOT, Mount, wait_for, write_mission
from tests.support.s3_servers import MotoServer, free_port, s3_env
from tests.support.scraper_util import (
    EXAMPLES,
    SCRAPER,
    check_witness,
    finish,
    processes,
    start,
    tree_files,
)

SOURCES = {"synthetic", "node-synthetic"}
BASH = ["bash", str(EXAMPLES / "worker.sh")]
NODE = ["node", str(EXAMPLES / "worker.mjs")]
SYNTHETIC = [sys.executable, "-m", "scraper.synthetic"]

needs_node = pytest.mark.skipif(
    shutil.which("node") is None, reason="node not installed (scripts/setup.sh installs nodejs)"
)


def rels_of(mission: Path) -> set[str]:
    m = load_mission(mission)
    return {m.space.rel(t) for t in m.intent}


def done_lines(out: str) -> list[str]:
    return [line.removeprefix("done ") for line in out.splitlines() if line.startswith("done ")]


def assert_mission_complete(m: Mount, rels: set[str]) -> None:
    assert tree_files(m.state / "scraped-tiles") == rels == tree_files(m.p("done"))
    for rel in rels:
        check_witness((m.state / "scraped-tiles" / rel).read_bytes(), rel, SOURCES)
    assert tree_files(m.p("claimed")) == set() and tree_files(m.p("pending")) == set()
    assert sorted(m.p("tmp").iterdir()) == []
    st = m.status()
    assert st["counts"]["claimed"] == 0 and st["counts"]["done"] == len(rels)
    assert st["refused"] == 0  # no commit was ever refused: nobody finished a task twice


def test_examples_are_short() -> None:
    for name in ("worker.sh", "worker.mjs"):
        assert len((EXAMPLES / name).read_text().splitlines()) < 60, name


@needs_node
def test_python_bash_and_node_workers_share_a_300_task_mission(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    mission = write_mission(
        tmp_path / "m300.toml", south="40.70", north="40.80", west="-74.00", east="-73.85"
    )
    rels = rels_of(mission)
    assert len(rels) == 300
    m = make_mount(mission)
    ref = [*SCRAPER, str(m.mnt), "--source", "synthetic", "--workers", "4", "--quiet", "--json"]
    with processes() as procs:
        # The slower starters first, so every kind of worker gets its share of the race.
        py = [start(procs, ref) for _ in range(2)]  # 2 processes x 4 threads = 8 workers
        sh = [start(procs, [*BASH, str(m.mnt), *SYNTHETIC]) for _ in range(2)]
        js = [start(procs, [*NODE, str(m.mnt)]) for _ in range(2)]
        results = {id(p): finish(p, timeout=240) for p in py + sh + js}
    for p in py + sh + js:
        rc, _, err = results[id(p)]
        assert rc == 0, (p.args, err)
    by_python = [json.loads(results[id(p)][1])["committed"] for p in py]
    by_bash = [done_lines(results[id(p)][1]) for p in sh]
    by_node = [done_lines(results[id(p)][1]) for p in js]
    shell_and_node = [rel for lines in by_bash + by_node for rel in lines]
    assert len(shell_and_node) == len(set(shell_and_node))  # nobody reports a task twice
    assert sum(by_python) + len(shell_and_node) == 300  # every task committed exactly once
    assert all(n > 0 for n in by_python) and all(by_bash) and all(by_node), (
        by_python,
        [len(x) for x in by_bash],
        [len(x) for x in by_node],
    )
    assert_mission_complete(m, rels)
    node_rels = {rel for lines in by_node for rel in lines}
    for rel in rels:  # the witness says who wrote it: the Node example marks its rows
        rows = check_witness((m.state / "scraped-tiles" / rel).read_bytes(), rel, SOURCES)
        if rel in node_rels:
            assert [r["source"] for r in rows] == ["node-synthetic"]
        else:
            assert {r["source"] for r in rows} <= {"synthetic"}


@needs_node
def test_node_worker_alone(mount: Mount, mission: Path) -> None:
    with processes() as procs:
        rc, out, err = finish(start(procs, [*NODE, str(mount.mnt)]))
    assert rc == 0, err
    assert sorted(done_lines(out)) == sorted(rels_of(mission))
    assert_mission_complete(mount, rels_of(mission))


def test_bash_worker_gives_back_what_its_generator_fails(mount: Mount, mission: Path) -> None:
    with processes() as procs:
        rc, out, err = finish(start(procs, [*BASH, str(mount.mnt), "false"]))
    assert rc == 0 and done_lines(out) == []
    assert err.count("failed; claim released") == 24
    assert tree_files(mount.p("pending")) == rels_of(mission)  # all given back at once
    assert tree_files(mount.p("claimed")) == set() and sorted(mount.p("tmp").iterdir()) == []
    with processes() as procs:
        rc, out, err = finish(start(procs, [*BASH, str(mount.mnt), *SYNTHETIC]))
    assert rc == 0, err
    assert sorted(done_lines(out)) == sorted(rels_of(mission))
    for rel in rels_of(mission):
        check_witness(mount.p(f"done/{rel}").read_bytes(), rel, {"synthetic"})


OUTAGE = 15.0  # seconds S3 stays unreachable once the worker has met its first refusal


@pytest.mark.parametrize("lang", ["python", "bash", pytest.param("node", marks=needs_node)])
def test_workers_back_off_while_s3_is_unreachable_then_finish(
    make_mount: Callable[..., Mount], tmp_path: Path, lang: str
) -> None:
    """Strict claims get EAGAIN while nothing listens at the S3 endpoint: each worker says so
    once, keeps going without spinning (a bounded number of claim tries over the outage), and
    finishes the whole mission once S3 is back."""
    port = free_port()
    mission = s3_mission(tmp_path / "m.toml", "late-bucket")
    m = make_mount(
        mission,
        env=s3_env(),
        args=("--endpoint-url", f"http://127.0.0.1:{port}", "--refresh", "0.5", "--worker", "w"),
    )
    wait_for(lambda: "unreachable" in m.status()["sync"]["state"], timeout=60, what="offline")
    tries = tmp_path / "claims.log"  # every claim `mv` of the bash worker, through a shim
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "mv").write_text(
        f'#!/bin/sh\ncase "$1" in pending/*) echo "$1" >> {tries};; esac\n'
        f'exec {shutil.which("mv")} "$@"\n'
    )
    (shim / "mv").chmod(0o755)
    cmd = {
        "python": [*SCRAPER, str(m.mnt), "--source", "synthetic", "--workers", "3", "--quiet"],
        "bash": [*BASH, str(m.mnt), *SYNTHETIC],
        "node": [*NODE, str(m.mnt)],
    }[lang]
    err_path, out_path = tmp_path / "worker.err", tmp_path / "worker.out"
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
    server = MotoServer(tmp_path / "moto.log", port=port)
    with processes() as procs, open(err_path, "w") as err, open(out_path, "w") as out:
        p = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=err, text=True, env=env, start_new_session=True
        )
        procs.append(p)
        refused = m.state / "missionfs.log"  # the daemon logs a refused claim (once)
        wait_for(lambda: "refused claim" in refused.read_text(), 60, "the first refusal")
        cpu0, tries0 = _cpu_seconds(p.pid), _lines(tries)
        time.sleep(OUTAGE)  # the outage itself (what is measured), not a synchronisation
        assert p.poll() is None, err_path.read_text()  # alive, still waiting for S3
        cpu, claims = _cpu_seconds(p.pid) - cpu0, _lines(tries) - tries0
        try:
            server.start()
            server.bucket("late-bucket")
            assert p.wait(timeout=120) == 0, err_path.read_text()
        finally:
            server.stop()
    assert cpu < 0.25 * OUTAGE, f"{cpu:.2f} s of CPU over a {OUTAGE} s outage"
    if lang == "bash":
        assert 1 <= claims <= 10, f"{claims} claim tries in {OUTAGE} s: spinning"
    errors = err_path.read_text()
    assert errors.count("claims refused") == 1, errors  # once per outage, not once per try
    assert m.status()["counts"]["done"] == len(rels_of(mission)) == 24


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")
