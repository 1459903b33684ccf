"""`missionfs fleet` on a real bucket with three real nodes, the ETA in `status`, and
`status --watch` in a real pseudo-terminal and in a pipe."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.mount.test_s3 import commit, rels, s3_mission, s3_mount
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for
from tests.support.s3_servers import MotoServer, s3_env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIONFS, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


def fleet(mission: Path, moto: MotoServer, state: Path, *extra: str) -> dict[str, Any]:
    res = run(
        "fleet", str(mission), "--endpoint-url", moto.endpoint, "--state", str(state), "--json",
        *extra, env=s3_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def witness_writers(moto: MotoServer, bucket: str) -> dict[str, str]:
    """rel -> worker that created the witness, from the objects' own metadata (the truth)."""
    c = moto.client()
    root = "runs/s3-mission/scraped-tiles/"
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
        for obj in page.get("Contents", []):
            meta = c.head_object(Bucket=bucket, Key=obj["Key"])["Metadata"]
            out[obj["Key"][len(root) :]] = meta["worker"]
    return out


def test_fleet_counts_each_worker(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    all_rels = rels(mission)
    w0, w1, w2 = (s3_mount(make_mount, mission, moto, f"w{i}") for i in range(3))
    race = all_rels[10]
    commit(w0, race, "name\nfrom w0\n")  # both commit the same task: one wins, one conflict
    commit(w1, race, "name\nfrom w1\n")
    for rel in all_rels[:3]:
        commit(w0, rel, f"name\n{rel}\n")
    for rel in all_rels[3:5]:
        commit(w1, rel, f"name\n{rel}\n")
    claimed = all_rels[20]
    os.rename(w2.mnt / "pending" / claimed, w2.mnt / "claimed" / claimed)  # w2: a lease only
    wait_for(
        lambda: all(m.status()["sync"]["queue"] == 0 for m in (w0, w1)),
        timeout=60,
        what="uploads done",
    )
    writers = witness_writers(moto, bucket)
    assert len(writers) == 6
    expected = {w: sum(1 for v in writers.values() if v == w) for w in ("w0", "w1")}
    viewer = tmp_path / "viewer"
    viewer.mkdir()

    def counted() -> bool:
        got = {w["worker"]: w["done"] for w in fleet(mission, moto, viewer)["workers"]}
        return got == {**expected, "w2": 0}

    wait_for(counted, timeout=60, what="every upload merged into a segment and counted")
    view = fleet(mission, moto, viewer)
    by = {w["worker"]: w for w in view["workers"]}
    for name, n in expected.items():
        assert by[name]["done_recent"] == n and by[name]["live_leases"] == 0
        assert by[name]["rate_per_minute"] == round(n / 10, 2)
        assert by[name]["share"] == round(n / 6, 4)
        assert not by[name]["silent"]
    assert by["w2"]["live_leases"] == 1 and by["w2"]["done"] == 0
    assert view["done"] == 6 and view["live_leases"] == 1
    # Cost: one LIST of segments/ and one of the leases; a GET of protocol.json, of each
    # segment written since the last look (one per window: the nodes keep compacting, --refresh
    # 0.5) and of each lease body; segments counted before are not read again
    # (STATE/fleet-manifests.json); no manifest and no witness is ever read or listed.
    assert view["requests"].get("LIST") == 2, view["requests"]
    assert view["segments_read"] < view["segments_listed"]
    assert view["requests"].get("GET", 0) <= 1 + view["segments_read"] + 3
    # Segments are pruned from the bucket after a while: the counts stay, from the sums kept
    # in STATE/fleet-manifests.json, and that file keeps no entry per pruned segment.
    c = moto.client()
    listing = c.list_objects_v2(Bucket=bucket, Prefix="runs/s3-mission/segments/")
    assert listing.get("Contents")
    pruned = {obj["Key"] for obj in listing["Contents"]}
    for key in pruned:
        c.delete_object(Bucket=bucket, Key=key)
    after = fleet(mission, moto, viewer)
    assert {w["worker"]: w["done"] for w in after["workers"]} == {**expected, "w2": 0}
    cache = json.loads((viewer / "fleet-manifests.json").read_text())
    assert not pruned & set(cache["segments"]) and set(cache["pruned"]) == set(expected)
    # The text table says the same, one line per worker.
    text = run(
        "fleet", str(mission), "--endpoint-url", moto.endpoint, "--state", str(viewer),
        env=s3_env(),
    ).stdout  # fmt: skip
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:-1]}
    assert set(rows) == {"w0", "w1", "w2"} and rows["w2"][-3] == "1"  # w2's live lease
    # Nobody writes anything for a while: everyone becomes silent.
    wait_for(
        lambda: all(w["silent"] for w in fleet(mission, moto, viewer, "--silent", "1")["workers"]),
        timeout=30,
        what="silent workers",
    )
    # The race's loser keeps its result under STATE/conflicts/: its map shows the conflict.
    loser = w1 if writers[race] == "w0" else w0
    out = tmp_path / "loser.svg"
    res = run("map", str(mission), "--state", str(loser.state), "-o", str(out), env=s3_env())
    assert res.returncode == 0, res.stderr
    tile = race.rsplit("/", 1)[0]
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text or "" for t in ET.parse(out).getroot().iter(f"{ns}title")]
    assert next(t for t in titles if t.startswith(tile + ":")).startswith(f"{tile}: conflict")


def test_fleet_refuses_bad_input(tmp_path: Path, mission: Path) -> None:
    res = run("fleet", str(mission))
    assert res.returncode == 2 and "has no [store] s3" in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("missionfs: ")
    res = run("fleet", str(tmp_path / "none.toml"))
    assert res.returncode == 2 and "no such mission file" in res.stderr
    res = run("fleet", str(mission), "--silent", "0")
    assert res.returncode == 2 and res.stderr.startswith("missionfs: --silent")


def test_status_eta_from_the_last_ten_minutes(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    m = make_mount(mission, start=False)
    old = m.state / "journal"
    old.mkdir(parents=True)
    t_old = time.time() - 3600
    with open(old / "journal-000000.jsonl", "w") as f:  # an hour ago: outside the window
        for i in range(5):
            f.write(json.dumps({"t": t_old + i, "ev": "commit", "rel": f"x{i}"}) + "\n")
    m.start()
    for rel in ("40.70/-74.02/plumber.csv", "40.71/-74.02/plumber.csv", "40.72/-74.02/plumber.csv"):
        tmp = m.mnt / "tmp" / "w"
        tmp.write_text("a\n1\n")
        os.rename(tmp, m.mnt / "done" / rel)
    wait_for(lambda: m.status()["pace"]["finished_in_window"] == 3, what="pace counted")
    pace = m.status()["pace"]
    assert pace["rate_per_minute"] == 0.3
    assert pace["eta_seconds"] == round(21 / (3 / 600))
    text = run("status", str(m.mnt)).stdout
    assert "ETA 1 h 10 min" in text and "rate 0.3/min" in text
    st = json.loads(run("status", str(mission), "--state", str(m.state), "--json").stdout)
    assert st["pace"]["eta_seconds"] == 4200  # the same from the state dir, beside the mount


def test_pace_reads_only_what_the_journal_appended(tmp_path: Path) -> None:
    from fusefs.engine.eta import finished_since

    j = tmp_path / "journal"
    j.mkdir()
    now = time.time()
    path = j / "journal-000000.jsonl"

    def line(t: float, ev: str = "commit", **extra: Any) -> bytes:
        return (json.dumps({"t": t, "ev": ev, **extra}) + "\n").encode()

    path.write_bytes(
        line(now - 900) + line(now - 100) + line(now - 50, "claim") + line(now - 40, "remote")
    )
    assert finished_since(j, now - 600) == 2
    with open(path, "ab") as f:  # a commit, a recovered one, and half of a line being written
        f.write(line(now - 5) + line(now - 4, recovered=True) + line(now - 3)[:10])
    assert finished_since(j, now - 600) == 3
    with open(path, "ab") as f:
        f.write(line(now - 3)[10:])
    assert finished_since(j, now - 600) == 4
    assert finished_since(j, now - 60) == 3  # the window moves: older ones drop out
    (j / "journal-000001.jsonl").write_bytes(line(now - 1))  # rotated: read afresh, both files
    assert finished_since(j, now - 60) == 4


def _read_until(fd: int, needle: bytes, buf: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen in {bytes(buf)[-800:]!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break


def test_watch_redraws_in_a_terminal(mount: Mount) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*MISSIONFS, "status", str(mount.mnt), "--watch", "--interval", "0.2"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    buf = bytearray()
    try:
        _read_until(master, b"0/24 done", buf)
        _read_until(master, b"\x1b[", buf)  # the cursor moved up to redraw the block
        tmp = mount.mnt / "tmp" / "w"
        tmp.write_text("a\n1\n")
        os.rename(tmp, mount.mnt / "done" / "40.70/-74.02/plumber.csv")
        _read_until(master, b"1/24 done", buf)
        frames = bytes(buf).split(b"F\x1b[J")
        assert len(frames) >= 2  # redrawn in place, not scrolled
        assert b"ETA" in buf and b"no recent errors" in buf and b"rate" in buf
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
        _read_until(master, b"\x1b[?25h", buf, timeout=5)  # the cursor is shown again
        os.close(master)
    assert rc == 0


def test_watch_prints_plain_lines_into_a_pipe(mount: Mount) -> None:
    proc = subprocess.Popen(
        [*MISSIONFS, "status", str(mount.mission), "--state", str(mount.state), "--watch",
         "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(2)]
    for line in lines:
        assert b"\x1b" not in line and b"done=0/24 pending=24" in line, line
    proc.stdout.close()  # the reader goes away (`| head -2`)
    rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read() if proc.stderr else ""


def test_watch_refuses_bad_input(mount: Mount) -> None:
    for extra, needle in ((("--interval", "0"), "--interval"), (("--json",), "--watch")):
        res = run("status", str(mount.mnt), "--watch", *extra)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("missionfs: ") and needle in res.stderr
