"""`missionfs fsck` and the checkpoints (protocol v2): the full listing is the oracle. Witnesses
come from a real mount (and one from another node, straight to the bucket), the server is moto;
damaged checkpoints are reported one line each, --repair writes a fresh one from the listing,
a second run is clean and a fresh node's CheckpointBook.latest() knows every witness."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model.checkpoint import Checkpoint
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.mission import load_mission
from fusefs.objects.s3store import S3Store, checkpoint_name
from tests.mount.test_fsck import all_rels, commit, fsck, reported
from tests.mount.test_s3 import MISSION, s3_mission, s3_mount, sync
from tests.support.mounts import new_bucket, wait_for
from tests.support.s3_servers import MotoServer, s3_env

W = 1  # seconds per window, so that windows pass during the test


def test_fsck_reports_and_rebuilds_damaged_checkpoints(
    moto: MotoServer, make_mount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    space = load_mission(mission).space
    rels = all_rels(mission)[:7]
    m = s3_mount(make_mount, mission, moto, "a")
    for i, rel in enumerate(rels[:6]):
        commit(m, rel, f"name,n\n{rel},{i}\n")
    assert sync(m)["sync"]["queue"] == 0
    m.umount()
    c, root = moto.client(), f"runs/{MISSION}"
    c.put_object(Bucket=bucket, Key=f"{root}/scraped-tiles/{rels[6]}", Body=b"name,n\nb,1\n")
    c.put_object(
        Bucket=bucket,
        Key=f"{root}/.missionfs/protocol.json",
        Body=b'{"version": 2, "window": %d}' % W,
    )
    written = time.time()
    wait_for(lambda: time.time() > written + 6 * W, timeout=30, what="six windows to pass")

    # Checkpoints as compactors would have left them, then damaged.
    s3 = S3Store(f"s3://{bucket}/runs", MISSION, moto.endpoint)
    book = CheckpointBook(s3, space)
    # A request first: the server's clock comes with its answer. The mount's own checkpoints
    # (its bootstrap's, protocol v2) go: the test lays out its own.
    s3.delete_checkpoints(book.windows())
    assert book.windows() == []
    now = int(s3.server_time() // W)
    tasks = BitMap(space.parse_rel(r) for r in rels)
    first_two = BitMap(space.parse_rel(r) for r in rels[:2])
    assert book.write(Checkpoint(now - 3, first_two))  # valid, but behind the listing
    assert book.write(Checkpoint(now - 2, tasks))  # will be deleted
    assert book.write(Checkpoint(now - 1, tasks))  # the newest: will be corrupted
    other = TaskSpace(Axis(0, 1, 3, 2), Axis(0, 1, 3, 2), ("x",))
    assert CheckpointBook(s3, other).write(Checkpoint(now - 5, BitMap([1])))  # another space
    ckpts = f"{root}/checkpoints"
    newest = c.get_object(Bucket=bucket, Key=f"{ckpts}/{checkpoint_name(now - 1)}")["Body"].read()
    c.put_object(Bucket=bucket, Key=f"{ckpts}/{checkpoint_name(now - 1)}", Body=newest[:-3])
    c.delete_object(Bucket=bucket, Key=f"{ckpts}/{checkpoint_name(now - 2)}")

    env, ep = s3_env(), ("--endpoint-url", moto.endpoint)
    res = fsck(mission, m.state, *ep, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert {
        ("checkpoint-corrupt", f"checkpoints/{checkpoint_name(now - 1)}"),
        ("checkpoint-foreign", f"checkpoints/{checkpoint_name(now - 5)}"),
        ("checkpoint-behind", f"checkpoints/{checkpoint_name(now - 3)}"),
    } == {r for r in reported(res) if r[0].startswith("checkpoint")}, res.stdout
    assert "5 witness(es) written before its window are not in it" in res.stdout

    res = fsck(mission, m.state, "--repair", *ep, env=env)
    assert res.returncode == 0 and "all repaired" in res.stdout, res.stdout + res.stderr
    again = fsck(mission, m.state, *ep, env=env)
    assert again.returncode == 0 and "fsck: clean" in again.stdout, again.stdout + again.stderr

    fresh = CheckpointBook(S3Store(f"s3://{bucket}/runs", MISSION, moto.endpoint), space)
    cp = fresh.latest()
    assert cp is not None and cp.facts == tasks and not fresh.skipped
    assert fresh.s3.requests == {"LIST": 1, "GET": 1}  # a new node's whole learning cost
    sizes = {space.rel(t): s for t, s in cp.sizes.items()}
    assert sizes[rels[6]] == len(b"name,n\nb,1\n")
    assert len(cp.digests) == len(
        {t // space.tile_size for t in tasks - BitMap([space.parse_rel(rels[6])])}
    )
    protocol = json.loads(
        c.get_object(Bucket=bucket, Key=f"{root}/.missionfs/protocol.json")["Body"].read()
    )
    assert protocol["window"] == W
