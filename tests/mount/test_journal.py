"""The journal (every state change, one JSON line) and `missionfs log`."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from fusefs.statedir.journal import read_journal
from tests.mount.test_mount import all_rels, commit_via_tmp, sh
from tests.mount.test_s3 import commit, keys, rels, s3_mission, s3_mount
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for
from tests.support.s3_servers import MotoServer, s3_env

REL = "40.71/-74.00/coffee shop.csv"


def log(
    mission: Path, state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIONFS, "log", str(mission), *args, "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def events(state: Path, rel: str | None = None) -> list[str]:
    return [e["ev"] for e in read_journal(state / "journal") if rel is None or e.get("rel") == rel]


def test_every_change_of_a_task_is_journalled(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    m = make_mount(mission, args=("--lease", "1"))
    sh(f"mv 'pending/{REL}' 'claimed/{REL}' && touch 'claimed/{REL}' && rm 'claimed/{REL}'", m.mnt)
    sh(f"mv 'pending/{REL}' 'claimed/{REL}'", m.mnt)
    wait_for(lambda: "expire" in events(m.state, REL), timeout=15, what="expiry journalled")
    sh(f"printf 'a,b\\n1' > 'done/{REL}'", m.mnt, check=False)  # truncated: refused
    commit_via_tmp(m, REL, body="a,b\n1,2\n")
    history = ["claim", "renew", "release", "claim", "expire", "refused", "commit"]
    assert events(m.state, REL) == history
    entries = [e for e in read_journal(m.state / "journal") if e.get("rel") == REL]
    c = entries[-1]
    assert c["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert (c["size"], c["rows"], c["source"]) == (8, 1, "rename")
    assert all(e["worker"] and e["host"] for e in entries)
    assert "truncated" in entries[-2]["reason"]
    res = log(mission, m.state, REL)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split()[1] for ln in lines] == history
    as_json = [json.loads(x) for x in log(mission, m.state, "40.71", "--json").stdout.splitlines()]
    assert {e["rel"] for e in as_json} == {REL}  # the row filter
    assert log(mission, m.state, "--since", "1h").stdout.count("\n") >= 7
    assert log(mission, m.state, "--since", "2099-01-01").stdout == ""
    bad = log(mission, m.state, "--since", "yesterday-ish")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr


def test_after_kill9_every_witness_has_its_commit_line_and_no_line_lacks_a_witness(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    m = make_mount(mission)
    todo = sorted(all_rels(mission))[:8]
    for i, rel in enumerate(todo):
        commit_via_tmp(m, rel, body=f"n\n{i}\n", name=f"k{i}")
    m.kill9()
    # A witness that the daemon never journalled (e.g. its line was lost with a power cut):
    extra = sorted(all_rels(mission))[20]
    (m.state / "scraped-tiles" / extra).parent.mkdir(parents=True, exist_ok=True)
    (m.state / "scraped-tiles" / extra).write_text("n\nx\n")
    m.start()
    wait_for(lambda: m.status()["reconcile"] == "done", what="reconcile")
    committed = {e["rel"] for e in read_journal(m.state / "journal") if e["ev"] == "commit"}
    on_disk = {
        str(p.relative_to(m.state / "scraped-tiles"))
        for p in (m.state / "scraped-tiles").rglob("*.csv")
    }
    assert committed == on_disk == set(todo) | {extra}
    recovered = [e for e in read_journal(m.state / "journal") if e.get("recovered")]
    assert [e["rel"] for e in recovered] == [extra]


def test_log_of_a_raced_task_shows_both_writers_and_the_loser(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    moto.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    mission = s3_mission(tmp_path / "m.toml", bucket)
    slow = ("--refresh", "3600", "--full-refresh", "3600")  # b will not learn a's result
    a = s3_mount(make_mount, mission, moto, "a", *slow)
    b = s3_mount(make_mount, mission, moto, "b", *slow)
    wait_for(lambda: a.status()["sync"]["online"] and b.status()["sync"]["online"], what="online")
    rel = rels(mission)[0]
    commit(a, rel, "name\nfrom a\n")
    wait_for(lambda: a.status()["sync"]["queue"] == 0, what="a uploaded")
    commit(b, rel, "name\nfrom b\n")  # b still sees the task pending: it loses in S3
    wait_for(lambda: b.status()["sync"]["conflicts"] == 1, what="b's conflict")
    res = log(mission, b.state, rel, "--endpoint-url", moto.endpoint, env=s3_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    kinds = [ln.split()[1] for ln in lines]
    assert kinds.count("commit") == 1 and kinds.count("conflict") == 1
    assert any(" conflict " in ln and "loser=b" in ln for ln in lines)
    witness = [ln for ln in lines if " s3:scraped-tiles " in ln]
    assert len(witness) == 1 and " a@s3://" in witness[0]  # the winner, from object metadata
    lost = [ln for ln in lines if " s3:conflicts " in ln]
    assert len(lost) == 1 and " b@s3://" in lost[0]  # the loser's result, kept in the bucket
    assert keys(moto, bucket, "conflicts")
    unversioned = new_bucket(moto)
    plain = s3_mission(tmp_path / "p.toml", unversioned)
    res = log(plain, b.state, rel, "--endpoint-url", moto.endpoint, env=s3_env())
    assert res.returncode == 0 and "versioning is off" in res.stderr
