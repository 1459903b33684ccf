"""`missionfs fsck`: each kind of damage is reported (and only it), repaired without deleting a
byte, and a second run is clean. State dirs come from real mounts; S3 cases use moto."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fusefs.model import checkpoint as ckpt
from fusefs.model.mission import load_mission
from fusefs.objects.s3store import CHUNK_BITS, chunk_name
from tests.mount.test_s3 import MISSION, keys, s3_mission, s3_mount, sync
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for, write_mission
from tests.support.s3_servers import MotoServer, s3_env

TILES = "scraped-tiles"
Damage = Callable[[Path, list[str]], tuple[set[tuple[str, str]], list[bytes]]]


def fsck(mission: Path, state: Path, *extra: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [*MISSIONFS, "fsck", str(mission), "--state", str(state), "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def reported(res: subprocess.CompletedProcess[str]) -> set[tuple[str, str]]:
    return set(re.findall(r"^  \[([a-z0-9-]+)\] (.+?): ", res.stdout, re.M))


def commit(m: Mount, rel: str, body: str) -> None:
    tmp = m.mnt / "tmp" / f"w-{abs(hash(rel))}"
    tmp.write_text(body)
    os.rename(tmp, m.mnt / "done" / rel)


def all_rels(mission: Path) -> list[str]:
    mi = load_mission(mission)
    return sorted(mi.space.rel(t) for t in mi.intent)


def kept_bytes(state: Path) -> list[bytes]:
    """Every byte fsck may have moved aside: quarantine/ and rejected/."""
    out = []
    for area in ("quarantine", "rejected"):
        out += [p.read_bytes() for p in (state / area).rglob("*") if p.is_file()]
    return out


# -- damages (each returns what fsck must report and the bytes that must survive) -------------
def truncated(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    w = state / TILES / rels[0]
    w.write_bytes(w.read_bytes()[:-3])
    return {("truncated", f"{TILES}/{rels[0]}")}, [w.read_bytes()]


def empty(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    (state / TILES / rels[1]).write_bytes(b"")
    return {("empty", f"{TILES}/{rels[1]}")}, [b""]


def stray(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    tile = rels[0].rsplit("/", 1)[0]
    (state / TILES / tile / "notes.txt").write_bytes(b"my notes\n")
    return {("outside-plan", f"{TILES}/{tile}/notes.txt")}, [b"my notes\n"]


def staging(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    (state / "staging" / "direct.4242").write_bytes(b"name,rows\npartial,wri")
    return {("staging-leftover", "staging/direct.4242")}, [b"name,rows\npartial,wri"]


def no_index(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    (state / "index" / "facts.roaring").unlink()
    return {("index-missing", "index/facts.roaring")}, []


def changed(state: Path, rels: list[str]) -> tuple[set[tuple[str, str]], list[bytes]]:
    body = b"name,worker\nforged,someone\n"  # well-formed, but not what was committed
    (state / TILES / rels[2]).write_bytes(body)
    return {("changed", f"{TILES}/{rels[2]}")}, [body]


LOCAL_DAMAGES = [truncated, empty, stray, staging, no_index, changed]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[str]]]:
    """A state dir made by a real mount: six witnesses committed, cleanly unmounted."""
    root = tmp_path_factory.mktemp("fsck-base")
    mission = write_mission(root / "mission.toml")
    m = Mount(mission, root / "m.mnt", root / "m.state")
    try:
        m.start()
        rels = all_rels(mission)[:6]
        for i, rel in enumerate(rels):
            commit(m, rel, f"name,n\n{rel},{i}\n")
        res = fsck(mission, m.state)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert f"mounted by missionfs pid {m.proc.pid if m.proc else ''}" in res.stderr
        assert "unmount it first" in res.stderr
        m.umount()
    finally:
        m.cleanup()
    yield mission, m.state, rels


def copy_state(base: tuple[Path, Path, list[str]], tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(base[1], state, symlinks=True)
    return state


def test_an_undamaged_state_dir_is_clean(base, tmp_path: Path) -> None:
    state = copy_state(base, tmp_path)
    res = fsck(base[0], state)
    assert res.returncode == 0 and res.stdout.strip() == "fsck: clean", res.stdout + res.stderr


@pytest.mark.parametrize("damage", LOCAL_DAMAGES, ids=lambda d: d.__name__)
def test_each_local_damage_is_found_and_repaired(base, tmp_path: Path, damage: Damage) -> None:
    mission, _, rels = base
    state = copy_state(base, tmp_path)
    expected, survivors = damage(state, rels)
    check_repair_clean(mission, state, expected, survivors)


def newest_checkpoint_naming(
    client: Any, bucket: str, root: str, mission: Path, rel: str
) -> set[tuple[str, str]]:
    """{("checkpoint-extra", its key)} if the bucket's newest checkpoint holds `rel`'s fact."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/checkpoints/")
    names = sorted(o["Key"][len(root) + 1 :] for o in listed.get("Contents", []))
    if not names:
        return set()
    body = client.get_object(Bucket=bucket, Key=f"{root}/{names[-1]}")["Body"].read()
    space = load_mission(mission).space
    facts = ckpt.decode(body, ckpt.fingerprint(space)).facts
    return {("checkpoint-extra", names[-1])} if space.parse_rel(rel) in facts else set()


def check_repair_clean(
    mission: Path,
    state: Path,
    expected: set[tuple[str, str]],
    survivors: list[bytes],
    env: dict[str, str] | None = None,
    *extra: str,
) -> str:
    res = fsck(mission, state, *extra, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert reported(res) == expected, res.stdout
    assert "--repair" in res.stdout
    res = fsck(mission, state, "--repair", *extra, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert reported(res) == expected, res.stdout
    assert res.stdout.count("[repaired: ") == len(expected), res.stdout
    kept = kept_bytes(state)
    for body in survivors:
        assert body in kept, f"{body!r} was lost"
    again = fsck(mission, state, *extra, env=env)
    assert again.returncode == 0 and "fsck: clean" in again.stdout, again.stdout + again.stderr
    return res.stdout


def test_all_local_damages_at_once_then_the_mount_works(base, tmp_path: Path) -> None:
    mission, _, rels = base
    state = copy_state(base, tmp_path)
    expected: set[tuple[str, str]] = set()
    survivors: list[bytes] = []
    for damage in LOCAL_DAMAGES:
        e, s = damage(state, rels)
        expected |= e
        survivors += s
    check_repair_clean(mission, state, expected, survivors)
    notes = list((state / "quarantine").rglob("*.why")) + list((state / "rejected").glob("*.why"))
    assert len(notes) == 5 and all(n.read_text().strip() for n in notes)
    m = Mount(mission, tmp_path / "again.mnt", state)
    try:
        m.start()
        pending = {str(p.relative_to(m.mnt / "pending")) for p in m.p("pending").rglob("*.csv")}
        assert set(rels[:3]) <= pending  # quarantined witnesses: their tasks are to do again
        done = {str(p.relative_to(m.mnt / "done")) for p in m.p("done").rglob("*.csv")}
        assert done == set(rels[3:])
        assert m.status().get("witnesses_outside_plan", 0) == 0
    finally:
        m.cleanup()


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_a_git_repository_in_the_witness_tree_is_left_alone(base, tmp_path: Path) -> None:
    """A git repo in scraped-tiles/ (with .gitignore, .gitattributes and a hidden file in a tile):
    fsck reports nothing, --repair moves nothing, the repository stays valid, and the walks of
    `status` and of a mount count no witness outside the plan."""
    mission, _, rels = base
    state = copy_state(base, tmp_path)
    tiles = state / TILES
    git(tiles, "init", "-q")
    (tiles / ".gitignore").write_text("*.swp\n")
    (tiles / ".gitattributes").write_text("*.csv text eol=lf\n")
    git(tiles, "add", "-A")
    git(tiles, "commit", "-q", "-m", "first")
    (tiles / rels[0].rsplit("/", 1)[0] / ".notes.swp").write_bytes(b"editor state")
    git(tiles, "tag", "v1")
    git(tiles, "commit", "-q", "--allow-empty", "-m", "second")
    head = git(tiles, "rev-parse", "HEAD").stdout
    for extra in ((), ("--repair",)):
        res = fsck(mission, state, *extra)
        assert res.returncode == 0 and res.stdout.strip() == "fsck: clean", res.stdout + res.stderr
    assert not (state / "quarantine").exists() or not any((state / "quarantine").rglob("*"))
    git(tiles, "fsck", "--strict")
    assert git(tiles, "rev-parse", "HEAD").stdout == head
    assert git(tiles, "status", "--porcelain").stdout == ""  # every witness still tracked
    (state / "index" / "facts.roaring").unlink()  # `status` must walk the tree itself
    res = subprocess.run(
        [*MISSIONFS, "status", str(mission), "--state", str(state), "--json", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["witnesses_outside_plan"] == 0 and info["counts"]["done"] == len(rels)
    m = Mount(mission, tmp_path / "git.mnt", state)
    try:
        m.start()
        wait_for(lambda: m.status()["reconcile"] == "done", 30, "the start-up walk")
        assert m.status()["witnesses_outside_plan"] == 0
        assert {p.name for p in m.p("done").iterdir()} == {r.split("/")[0] for r in rels}
    finally:
        m.cleanup()


def test_refuses_what_is_not_a_state_dir(base, tmp_path: Path) -> None:
    res = fsck(base[0], tmp_path / "nothing-here")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "not a missionfs state dir" in res.stderr


# -- S3 ------------------------------------------------------------------------------------
def test_bucket_damage_is_found_and_repaired(moto: MotoServer, make_mount, tmp_path: Path) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    rels = all_rels(mission)[:4]
    m = s3_mount(make_mount, mission, moto, "a")
    for i, rel in enumerate(rels):
        commit(m, rel, f"name,n\n{rel},{i}\n")
    assert sync(m)["sync"]["queue"] == 0
    m.umount()
    env = s3_env()
    ep = ("--endpoint-url", moto.endpoint)
    assert fsck(mission, m.state, *ep, env=env).returncode == 0

    c, root = moto.client(), f"runs/{MISSION}"
    c.delete_object(Bucket=bucket, Key=f"{root}/{TILES}/{rels[0]}")  # the upload is "lost"
    altered = b"name,n\nvandal,0\n"
    original = (m.state / TILES / rels[1]).read_bytes()
    c.put_object(Bucket=bucket, Key=f"{root}/{TILES}/{rels[1]}", Body=altered)
    forged = b"name,n\nforged,9\n"
    (m.state / TILES / rels[2]).write_bytes(forged)  # local bytes changed after commit
    lease = json.dumps({"worker": "a", "lease": 900, "nonce": "x"}).encode()
    task = load_mission(mission).space.parse_rel(rels[3])
    claim = f"claims/{chunk_name(task >> CHUNK_BITS)}/{rels[3]}"  # a lease by chunk
    c.put_object(Bucket=bucket, Key=f"{root}/{claim}", Body=lease)
    c.put_object(Bucket=bucket, Key=f"{root}/claims/{rels[2]}", Body=lease)  # v1: ignored

    expected = {
        ("upload-lost", rels[0]),
        ("altered-in-bucket", rels[1]),
        ("changed", f"{TILES}/{rels[2]}"),
        ("stale-claim", claim),
    }
    # A compactor's checkpoint taken after the first upload (when a checkpoint window ended
    # during the mount: timing) names the deleted witness: fsck says so too.
    expected |= newest_checkpoint_naming(c, bucket, root, mission, rels[0])
    check_repair_clean(mission, m.state, expected, [forged], env, *ep)
    in_s3 = keys(moto, bucket, TILES)
    assert in_s3[rels[1]] == original  # our committed witness is back...
    assert altered in keys(moto, bucket, "conflicts").values()  # ...the altered bytes kept
    assert rels[0] not in in_s3 and set(keys(moto, bucket, "claims")) == {rels[2]}
    res = subprocess.run(
        [*MISSIONFS, "sync", str(mission), "--state", str(m.state), *ep, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert keys(moto, bucket, TILES)[rels[0]] == (m.state / TILES / rels[0]).read_bytes()
