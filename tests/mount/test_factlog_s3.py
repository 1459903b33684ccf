"""Protocol v2's fact log with real mounts on real S3 servers (docs/protocol.md): node manifests,
segments and checkpoints in the bucket, a node killed, and a node whose clock is 2 minutes off.
The engine tier (tests/engine/test_factlog.py) covers each failure case step by step."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fusefs.model import segment as sg
from tests.mount.test_s3 import commit, key_names, keys, listed, rels, s3_mission, s3_mount
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for
from tests.support.s3_servers import MotoServer, SeaweedServer, Server, s3_env

MISSION_ROOT = "runs/s3-mission"


def body(rel: str, who: str) -> str:
    return f"name,worker\n{rel},{who}\n"


def everyone_knows(mounts: list[Mount], expected: set[str]) -> Callable[[], bool]:
    return lambda: all(expected <= listed(m, "done") for m in mounts)


def test_three_nodes_learn_through_segments_and_survive_a_killed_node(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """Three daemons: each one's results reach the others through one segment per window (the
    bucket holds node manifests under log/, segments, a checkpoint, and no v1 manifest); one
    daemon is killed with -9, whoever was compacting: the two others still learn each other's
    new results (the fallback compactor), then it comes back and learns them too."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    all_rels = rels(mission)
    mounts = [s3_mount(make_mount, mission, moto, f"w{i}") for i in range(3)]
    first = set(all_rels[:6])
    who = {rel: f"w{i % 3}" for i, rel in enumerate(sorted(first))}
    for i, rel in enumerate(sorted(first)):
        commit(mounts[i % 3], rel, body(rel, who[rel]))
    wait_for(everyone_knows(mounts, first), timeout=60, what="everyone learns everyone's")
    protocol = json.loads(keys(moto, bucket, ".missionfs")["protocol.json"])
    assert protocol == {"version": 2, "window": 0.5}
    assert not key_names(moto, bucket, "manifests")  # protocol v1's: gone
    assert key_names(moto, bucket, "checkpoints")  # the bootstrap's, at least
    segments = keys(moto, bucket, "segments")
    merged = {}
    for name, data in segments.items():
        seg = sg.decode(data, int(name.removesuffix(".seg")))
        merged.update({f.rel: f for f in seg.facts})
    assert first <= set(merged)
    for rel in first:  # each line with the witness's hash and size
        data = body(rel, who[rel]).encode()
        assert merged[rel] == sg.Fact(rel, hashlib.sha256(data).hexdigest(), len(data))
    manifests = key_names(moto, bucket, "log")
    assert {name.rsplit("/", 1)[1].rsplit("-", 1)[0] for name in manifests} <= {"w0", "w1", "w2"}
    dead, a, b = mounts
    dead.kill9()
    second = set(all_rels[6:10])
    for i, rel in enumerate(sorted(second)):
        commit((a, b)[i % 2], rel, body(rel, "after"))
    wait_for(everyone_knows([a, b], first | second), timeout=60, what="the two alive learn")
    dead.start()  # back, with its cursor: reads the segments written while it was away
    wait_for(everyone_knows([dead], first | second), timeout=60, what="the returned node")
    assert dead.status()["sync"]["facts"]["cursor"] is not None


def skewed_env(tmp_path: Path, seconds: float) -> dict[str, str]:
    """The environment of a daemon whose wall clock is `seconds` ahead (a sitecustomize that
    shifts time.time for the whole process: what a node with a wrong clock sees)."""
    site = tmp_path / "skew"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "_time, _time_ns = time.time, time.time_ns\n"
        f"time.time = lambda: _time() + {seconds}\n"
        f"time.time_ns = lambda: _time_ns() + {int(seconds * 1e9)}\n"
    )
    return s3_env({"PYTHONPATH": str(site)})


def test_a_node_whose_clock_is_two_minutes_off_names_windows_by_the_server(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """Windows come from the S3 server's clock (Date headers), not the node's: with 1-second
    windows, a node 2 minutes ahead would otherwise publish 120 windows into the future, where
    nobody would merge it for 2 minutes; here its results reach the other node at once, and
    the other's reach it."""
    bucket = new_bucket(seaweed)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    all_rels = rels(mission)
    ok = _mount(make_mount, mission, seaweed, "ok", s3_env())
    ahead = _mount(make_mount, mission, seaweed, "ahead", skewed_env(tmp_path, 120.0))
    commit(ok, all_rels[0], body(all_rels[0], "ok"))
    commit(ahead, all_rels[1], body(all_rels[1], "ahead"))
    assert _journal_clock(ahead) - time.time() > 100  # the skew is real in that daemon
    expected = set(all_rels[:2])
    wait_for(everyone_knows([ok, ahead], expected), timeout=30, what="both learn both")
    windows = {int(n.split("/")[0]) for n in key_names(seaweed, bucket, "log")}
    assert max(windows) - min(windows) < 60, windows  # nobody wrote into the future


def _mount(
    make_mount: Callable[..., Mount], mission: Path, server: Server, name: str, env: dict[str, str]
) -> Mount:
    args = ("--endpoint-url", server.endpoint, "--refresh", "1", "--worker", name)
    return make_mount(mission, name=name, env=env, args=args)


def _journal_clock(m: Mount) -> float:
    """The daemon's own wall clock: the newest time in its journal (its commit's)."""
    times = [
        json.loads(line)["t"]
        for path in (m.state / "journal").iterdir()
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    return max(times)


def test_sync_verify_on_a_mounted_node_lists_the_bucket_and_publishes_what_it_finds(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """A witness that no manifest names (put by hand) stays unknown to a plain `missionfs
    sync`, which reads the fact log only; `missionfs sync --verify` lists every shard, learns
    it, and publishes it in a node manifest, through which another node learns it too."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    rel = rels(mission)[3]
    a, b = (s3_mount(make_mount, mission, moto, n) for n in ("a", "b"))
    data = body(rel, "by hand").encode()
    meta = {"sha256": hashlib.sha256(data).hexdigest()}
    moto.client().put_object(
        Bucket=bucket, Key=f"{MISSION_ROOT}/scraped-tiles/{rel}", Body=data, Metadata=meta
    )
    sync = [*MISSIONFS, "sync", str(mission), "--state", str(a.state), "--quiet"]
    res = subprocess.run(sync, capture_output=True, text=True, timeout=120, cwd=ROOT, env=s3_env())
    assert res.returncode == 0, res.stderr
    assert rel not in listed(a, "done")  # the fact log does not name it
    res = subprocess.run(
        [*sync, "--verify"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=s3_env()
    )
    assert res.returncode == 0, res.stderr
    assert rel in listed(a, "done")
    wait_for(lambda: rel in listed(b, "done"), timeout=30, what="b learns it from a's manifest")
    lines = b"".join(keys(moto, bucket, "log").values()).decode()
    assert f"{rel}\t\t{len(data)}" in lines.splitlines()  # published by a, without a hash


def test_a_new_node_starts_from_the_checkpoint_without_listing_the_witnesses(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """The first node lists the bucket once (no checkpoint yet) and its compactions write a
    checkpoint every C windows; a node mounted later learns every fact from the newest one and
    the segments after it, and never lists `scraped-tiles/`."""
    bucket = new_bucket(seaweed)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    done = set(rels(mission)[:5])
    a = s3_mount(make_mount, mission, seaweed, "a")
    for rel in sorted(done):
        commit(a, rel, body(rel, "a"))
    wait_for(lambda: a.status()["sync"]["queue"] == 0, timeout=60, what="a uploads")
    written = a.status()["sync"]["facts"]["checkpoints_written"]
    wait_for(
        lambda: a.status()["sync"]["facts"]["checkpoints_written"] > written,
        timeout=60,
        what="a checkpoint after the uploads",
    )
    assert "listed it once" in a.daemon_log()
    b = s3_mount(make_mount, mission, seaweed, "b")
    wait_for(everyone_knows([b], done), timeout=30, what="b learns every fact")
    assert b.status()["sync"]["facts"]["checkpoint_loaded"] is not None
    assert "loaded checkpoint" in b.daemon_log() and "listed it once" not in b.daemon_log()


def test_a_corrupt_segment_is_rebuilt_by_the_node_that_reads_it(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """B is away for a few seconds (fewer than C windows: it comes back to its cursor, not to
    a checkpoint); meanwhile A's result is merged into a segment that then gets damaged. B
    finds the segment corrupt, rebuilds it from the node manifests (If-Match on the damaged
    object) and learns the result: nothing hidden."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    rel = rels(mission)[4]
    a = _mount(make_mount, mission, moto, "a", s3_env())
    b = _mount(make_mount, mission, moto, "b", s3_env())
    wait_for(lambda: b.status()["sync"]["facts"]["cursor"] is not None, timeout=30, what="b")
    b.umount()
    commit(a, rel, body(rel, "a"))

    def merged() -> str | None:
        for name, data in keys(moto, bucket, "segments").items():
            if rel.encode() in data:
                return name
        return None

    wait_for(lambda: merged() is not None, timeout=30, what="a's result merged")
    name = merged()
    key = f"{MISSION_ROOT}/segments/{name}"
    c = moto.client()
    data = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    c.put_object(Bucket=bucket, Key=key, Body=data.replace(b"csv", b"cs_", 1))
    b.start()
    wait_for(lambda: rel in listed(b, "done"), timeout=30, what="b learns it anyway")
    assert "is corrupt" in b.daemon_log()
    fixed = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    seg = sg.decode(fixed, int(str(name).removesuffix(".seg")))
    assert rel in {f.rel for f in seg.facts}
