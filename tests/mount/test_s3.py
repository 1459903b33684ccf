"""S3 sync against real servers: moto for the quick cases, SeaweedFS for races and outages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fusefs.model.mission import load_mission
from fusefs.objects.s3store import S3Store
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for, write_mission
from tests.support.s3_servers import (
    ACCESS_KEY,
    MotoServer,
    SeaweedServer,
    Server,
    free_port,
    s3_env,
)

MISSION = "s3-mission"


def s3_mission(path: Path, bucket: str, prefix: str = "runs") -> Path:
    return write_mission(path, name=MISSION, extra=f'[store]\ns3 = "s3://{bucket}/{prefix}"\n')


def keys(server: Server, bucket: str, area: str) -> dict[str, bytes]:
    c = server.client()
    root = f"runs/{MISSION}/{area}/"
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
        for obj in page.get("Contents", []):
            body = c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(root) :]] = body
    return out


def key_names(server: Server, bucket: str, area: str) -> set[str]:
    """Names only (objects that come and go, like leases, may vanish between LIST and GET)."""
    c = server.client()
    root = f"runs/{MISSION}/{area}/"
    pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
    return {o["Key"][len(root) :] for page in pages for o in page.get("Contents", [])}


def lease_names(server: Server, bucket: str) -> set[str]:
    """Rels of the lease objects: `claims/{chunk}/{rel}` without the chunk."""
    return {name.partition("/")[2] for name in key_names(server, bucket, "claims")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIONFS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env or s3_env(),
    )


def s3_mount(
    make_mount: Callable[..., Mount], mission: Path, server: Server, name: str, *extra: str
) -> Mount:
    return make_mount(
        mission,
        name=name,
        env=s3_env(),
        args=("--endpoint-url", server.endpoint, "--refresh", "0.5", "--worker", name, *extra),
    )


def commit(m: Mount, rel: str, body: str) -> None:
    tmp = m.mnt / "tmp" / f"w-{abs(hash(rel))}"
    tmp.write_text(body)
    os.rename(tmp, m.mnt / "done" / rel)


def sync(m: Mount) -> dict[str, Any]:
    res = run("sync", str(m.mission), "--state", str(m.state))
    assert res.returncode == 0, res.stdout + res.stderr
    return m.status()


def listed(m: Mount, view: str) -> set[str]:
    root = m.mnt / view
    return {str(p.relative_to(root)) for p in root.rglob("*.csv")}


def rels(mission: Path) -> list[str]:
    mi = load_mission(mission)
    return sorted(mi.space.rel(t) for t in mi.intent)


def test_three_daemons_share_one_bucket(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    all_rels = rels(mission)
    mounts = [s3_mount(make_mount, mission, moto, f"w{i}") for i in range(3)]
    for i, m in enumerate(mounts):
        for rel in all_rels[i * 3 : (i + 1) * 3]:
            commit(m, rel, f"name,worker\n{rel},w{i}\n")
    for m in mounts:
        sync(m)  # push ours, then...
    done = set(all_rels[:9])
    for m in mounts:
        st = sync(m)  # ...pull everyone's
        assert st["sync"]["queue"] == 0 and st["sync"]["online"]
        assert listed(m, "done") == done
        assert listed(m, "pending") == set(all_rels) - done
    in_s3 = keys(moto, bucket, "scraped-tiles")
    assert set(in_s3) == done
    for m in mounts:
        for rel in done:  # remote-only witnesses are fetched on first read: byte-identical
            assert (m.mnt / "done" / rel).read_bytes() == in_s3[rel]
    assert {m.status()["sync"]["worker"] for m in mounts} == {"w0", "w1", "w2"}


def test_remote_facts_leave_pending_after_a_refresh(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    a = s3_mount(make_mount, mission, moto, "a")
    b = s3_mount(make_mount, mission, moto, "b")
    rel = rels(mission)[5]
    assert (a.mnt / "pending" / rel).exists()
    commit(b, rel, "h\n1\n")
    # No explicit sync: b uploads in the background, a learns it from b's manifest.
    wait_for(lambda: not (a.mnt / "pending" / rel).exists(), timeout=30, what="remote fact")
    assert rel in listed(a, "done")
    assert (a.mnt / "done" / rel).read_text() == "h\n1\n"
    st = a.status()["sync"]
    assert st["learned_remote"] >= 1 and st["fetched"] == 1


def test_intent_from_the_bucket(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    c = moto.client()
    c.put_object(Bucket=bucket, Key=f"runs/{MISSION}/intent/40.80/-74.02/tea room.csv", Body=b"")
    mission = s3_mission(tmp_path / "m.toml", bucket)
    m = s3_mount(make_mount, mission, moto, "a")
    assert (m.mnt / "pending" / "40.80" / "-74.02" / "tea room.csv").exists()
    assert m.status()["counts"]["intent"] == 25


def test_claims_while_s3_is_unreachable(make_mount: Callable[..., Mount], tmp_path: Path) -> None:
    """Strict claims fail with EAGAIN (the daemon stays up, the task stays pending); optimistic
    claims are taken locally and become lease objects once S3 answers."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"  # nothing listens yet
    args = ("--endpoint-url", endpoint, "--refresh", "0.5")
    strict = s3_mission(tmp_path / "s.toml", "offline-bucket")
    rel = rels(strict)[0]
    s = make_mount(strict, name="s", env=s3_env(), args=(*args, "--worker", "s"))
    wait_for(lambda: "unreachable" in s.status()["sync"]["state"], timeout=60, what="offline")
    res = subprocess.run(
        ["mv", f"pending/{rel}", f"claimed/{rel}"], cwd=s.mnt, capture_output=True, text=True
    )
    assert res.returncode != 0 and "Resource temporarily unavailable" in res.stderr, res.stderr
    assert (s.mnt / "pending" / rel).exists() and s.status()["counts"]["claimed"] == 0
    s.umount()

    optimistic = write_mission(
        tmp_path / "o.toml",
        name=MISSION,
        extra='[store]\ns3 = "s3://offline-bucket/runs"\nclaims = "optimistic"\n',
    )
    o = make_mount(optimistic, name="o", env=s3_env(), args=(*args, "--worker", "o"))
    wait_for(lambda: "unreachable" in o.status()["sync"]["state"], timeout=60, what="offline")
    os.rename(o.mnt / "pending" / rel, o.mnt / "claimed" / rel)  # granted locally
    server = MotoServer(tmp_path / "moto.log", port=port).start()
    try:
        server.bucket("offline-bucket")
        wait_for(
            lambda: rel in lease_names(server, "offline-bucket"),
            timeout=90,
            what="the offline claim confirmed as a lease",
        )
        (body,) = [b for k, b in keys(server, "offline-bucket", "claims").items() if rel in k]
        lease = json.loads(body)
        assert lease["worker"] == "o"
        assert (o.mnt / "claimed" / rel).exists()
    finally:
        server.stop()


def test_air_gapped_worker_syncs_in_one_batch(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"  # nothing listens yet: the worker is offline
    mission = s3_mission(tmp_path / "m.toml", "offline-bucket")
    m = make_mount(mission, env=s3_env(), args=("--endpoint-url", endpoint, "--worker", "gap"))
    todo = rels(mission)[:12]
    for rel in todo:
        commit(m, rel, f"h\n{rel}\n")
    wait_for(lambda: "unreachable" in m.status()["sync"]["state"], timeout=60, what="offline")
    st = m.status()["sync"]
    assert not st["online"] and st["queue"] == 12
    m.umount()
    res = run("sync", str(mission), "--state", str(m.state), "--endpoint-url", endpoint)
    assert res.returncode == 1 and "S3 unreachable" in res.stderr  # still offline: not done
    server = MotoServer(tmp_path / "moto.log", port=port).start()
    try:
        server.bucket("offline-bucket")
        res = run("sync", str(mission), "--state", str(m.state), "--endpoint-url", endpoint)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "uploaded 12" in res.stdout and "left to upload 0" in res.stdout
        assert set(keys(server, "offline-bucket", "scraped-tiles")) == set(todo)
        manifests = keys(server, "offline-bucket", "log")  # protocol v2's node manifests
        lines = [ln.split("\t") for ln in b"".join(manifests.values()).decode().splitlines()]
        assert sorted(rel for rel, _, _ in lines) == sorted(todo)  # hints for the other workers
        for rel, sha, size in lines:  # with the hash the digest of another node needs
            assert sha == hashlib.sha256(f"h\n{rel}\n".encode()).hexdigest()
            assert int(size) == len(f"h\n{rel}\n".encode())  # and the size its `stat` shows
    finally:
        server.stop()


def test_bad_s3_settings_give_one_clear_line(
    moto: MotoServer, seaweed: SeaweedServer, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mission = s3_mission(tmp_path / "m.toml", "no-such-bucket-here")
    res = run(
        "mount",
        str(mission),
        str(mnt),
        "--state",
        str(tmp_path / "s1"),
        "--endpoint-url",
        moto.endpoint,
    )
    assert res.returncode == 2 and not os.path.ismount(mnt)
    assert res.stderr.count("\n") == 1 and "no such bucket" in res.stderr
    bucket = new_bucket(seaweed)
    mission = s3_mission(tmp_path / "m2.toml", bucket)
    bad = s3_env({"AWS_SECRET_ACCESS_KEY": "wrong"})
    res = run(
        "sync",
        str(mission),
        "--state",
        str(tmp_path / "s2"),
        "--endpoint-url",
        seaweed.endpoint,
        env=bad,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "access denied" in res.stderr and "credentials" in res.stderr
    assert "wrong" not in res.stderr and ACCESS_KEY not in res.stderr  # never leak credentials
    res = run(
        "sync",
        str(mission),
        "--state",
        str(tmp_path / "s3"),
        "--endpoint-url",
        f"http://127.0.0.1:{free_port()}",
    )
    assert res.returncode == 1 and "S3 unreachable" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("missionfs: ")


def test_two_daemons_same_task_one_witness_one_conflict(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(seaweed)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    a = s3_mount(make_mount, mission, seaweed, "a", "--refresh", "3600")
    b = s3_mount(make_mount, mission, seaweed, "b", "--refresh", "3600")
    rel = rels(mission)[0]
    commit(a, rel, "name\nfrom a\n")
    commit(b, rel, "name\nfrom b\n")
    wait_for(
        lambda: a.status()["sync"]["queue"] == 0 and b.status()["sync"]["queue"] == 0,
        timeout=60,
        what="both uploads settled",
    )
    witnesses = keys(seaweed, bucket, "scraped-tiles")
    conflicts = keys(seaweed, bucket, "conflicts")
    assert list(witnesses) == [rel]
    winner = witnesses[rel]
    assert winner in (b"name\nfrom a\n", b"name\nfrom b\n")
    loser_name = "b" if winner == b"name\nfrom a\n" else "a"
    stem = rel.removesuffix(".csv")
    assert conflicts == {f"{stem}.{loser_name}.csv": b"name\nfrom " + loser_name.encode() + b"\n"}
    for m in (a, b):  # the winner's witness became the local one everywhere
        assert (m.mnt / "done" / rel).read_bytes() == winner
        assert (m.state / "scraped-tiles" / rel).read_bytes() == winner
    loser = a if loser_name == "a" else b
    assert loser.status()["sync"]["conflicts"] == 1
    kept = loser.state / "conflicts" / f"{stem}.{loser_name}.csv"
    assert kept.read_bytes() == b"name\nfrom " + loser_name.encode() + b"\n"  # nothing dropped


@pytest.mark.parametrize("kill_daemon", [False, True])
def test_outage_loses_nothing(
    make_mount: Callable[..., Mount], tmp_path: Path, kill_daemon: bool
) -> None:
    server = SeaweedServer(tmp_path / "weed").start()
    try:
        bucket = new_bucket(server)
        mission = write_mission(
            tmp_path / "m.toml",
            name=MISSION,
            north="40.80",
            east="-73.92",
            extra=f'[store]\ns3 = "s3://{bucket}/runs"\n',
        )
        todo = rels(mission)[:200]
        m = s3_mount(make_mount, mission, server, "w")
        wait_for(lambda: m.status()["sync"]["online"], what="online")
        server.stop()  # the S3 server goes away while the worker keeps committing
        for rel in todo:
            commit(m, rel, f"name\n{rel}\n")
        wait_for(lambda: not m.status()["sync"]["online"], timeout=60, what="outage noticed")
        assert m.status()["counts"]["done"] == 200
        if kill_daemon:
            m.kill9()
            m.start()  # still offline: the queue is rebuilt from the witness files
            assert m.status()["sync"]["queue"] == 200
        server.start()
        wait_for(lambda: m.status()["sync"]["queue"] == 0, timeout=180, what="queue drained")
        in_s3 = keys(server, bucket, "scraped-tiles")
        assert set(in_s3) == set(todo)
        assert all(in_s3[r] == f"name\n{r}\n".encode() for r in todo)
        assert keys(server, bucket, "conflicts") == {}
    finally:
        server.cleanup()


def test_status_json_never_shows_credentials(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    m = s3_mount(make_mount, s3_mission(tmp_path / "m.toml", bucket), moto, "a")
    wait_for(lambda: m.status()["sync"]["online"], what="online")
    text = (m.mnt / "status").read_text()
    st = json.loads(text)
    assert st["store"] == "s3" and st["sync"]["conditional_writes"] is not None
    assert ACCESS_KEY not in text and "secret" not in text.lower()


def test_the_commit_hash_travels_with_the_upload(
    seaweed: SeaweedServer, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the server verifies x-amz-checksum-sha256, a body that does not match the SHA-256
    recorded at commit is refused; elsewhere the hash still travels as metadata."""
    from fusefs.model.errors import S3ConfigError
    from fusefs.objects.s3store import S3Store, sha256_hex

    for k, v in s3_env().items():
        monkeypatch.setenv(k, v)
    store = S3Store(f"s3://{new_bucket(seaweed)}/runs", MISSION, seaweed.endpoint)
    store.check()
    assert store.checksums
    with pytest.raises(S3ConfigError):  # a corrupted body: the server refuses it
        store._put(
            store.key("scraped-tiles", "1/2/x.csv"),
            b"corrupted\n",
            metadata={"sha256": sha256_hex(b"what was committed\n")},
        )
    assert store.head(store.key("scraped-tiles", "1/2/x.csv")) is None
    assert store.create("1/2/x.csv", b"h\n1\n")
    meta = store.head(store.key("scraped-tiles", "1/2/x.csv"))
    assert meta is not None and meta["sha256"] == sha256_hex(b"h\n1\n")
    plain = S3Store(f"s3://{new_bucket(moto)}/runs", MISSION, moto.endpoint)
    plain.check()  # moto accepts a wrong checksum: metadata only, checked at fetch
    assert not plain.checksums


def test_old_manifests_are_pruned_and_nothing_else(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = new_bucket(moto)
    c = moto.client()
    root = f"runs/{MISSION}/"
    names = [f"{ms:013d}-w{i}-00000001.txt" for i, ms in enumerate((1000, 2000, 3000, 4000))]
    for name in [*names, "notes.txt"]:
        c.put_object(Bucket=bucket, Key=f"{root}manifests/{name}", Body=b"40.70/-74.02/a.csv\n")
    c.put_object(Bucket=bucket, Key=f"{root}scraped-tiles/40.70/-74.02/a.csv", Body=b"h\n")
    s3 = S3Store(f"s3://{bucket}/runs", MISSION, endpoint_url=moto.endpoint)
    assert s3.prune_manifests(3000) == 2
    assert key_names(moto, bucket, "manifests") == {names[2], names[3], "notes.txt"}
    assert key_names(moto, bucket, "scraped-tiles") == {"40.70/-74.02/a.csv"}
    assert s3.requests.get("POST") == 1  # one DeleteObjects for all of them
    assert s3.prune_manifests(3000) == 0
