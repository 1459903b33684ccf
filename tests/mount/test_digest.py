"""Merkle digest of the Fact tree: pure functions, the CLI on state dirs, live daemons with S3."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusefs.cli import main
from fusefs.model.merkle import DigestTree, build_tree, fold, tile_digest
from fusefs.model.mission import load_mission
from tests.mount.test_s3 import commit, rels, s3_mission, s3_mount, sync
from tests.support.mounts import Mount, new_bucket, wait_for, write_mission
from tests.support.s3_servers import MotoServer, SeaweedServer, s3_env


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (a subprocess costs a second of imports per call)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def digest_json(
    mission: Path, state: Path, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    res = run(
        "digest", str(mission), "--state", str(state), "--depth", "tile", "--json", *extra, env=env
    )
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


# -- pure functions ------------------------------------------------------------------------------
def test_tile_digest_is_the_documented_hash_and_ignores_input_order() -> None:
    files = {"plumber.csv": sha("b"), "coffee shop.csv": sha("a")}
    expected = hashlib.sha256(
        f"coffee shop.csv\0{sha('a')}\nplumber.csv\0{sha('b')}\n".encode()
    ).hexdigest()
    assert tile_digest(files) == expected
    assert tile_digest(dict(reversed(list(files.items())))) == expected
    assert tile_digest({"plumber.csv": sha("c"), "coffee shop.csv": sha("a")}) != expected


def test_tree_is_incremental_order_independent_and_matches_a_fresh_build(tmp_path: Path) -> None:
    space = load_mission(write_mission(tmp_path / "m.toml")).space
    rng = random.Random(8)
    content: dict[int, str] = {}
    tree = DigestTree(space)
    for step in range(400):  # random commits, content changes and removals, applied one by one
        task = rng.randrange(space.size)
        if task in content and rng.random() < 0.3:
            del content[task]
        else:
            content[task] = sha(f"{task}-{step}")
        tile = task // space.nphr
        files = {
            space.phrase_names[t % space.nphr]: s
            for t, s in content.items()
            if t // space.nphr == tile
        }
        tree.set_tile(tile, tile_digest(files) if files else None)
    fresh = build_tree(space, dict(sorted(content.items(), reverse=True)))
    assert tree.root() == fresh.root()
    assert tree.to_json("tile") == fresh.to_json("tile")
    assert len(tree.root()) == 64 and int(tree.root(), 16) >= 0
    for tile in {t // space.nphr for t in content}:
        tree.set_tile(tile, None)
    assert tree.root() == fold("mission", 0, 0) == DigestTree(space).root()


def test_one_change_moves_the_root_its_row_and_its_tile_only(tmp_path: Path) -> None:
    space = load_mission(write_mission(tmp_path / "m.toml")).space
    content = {t: sha(str(t)) for t in range(0, space.size, 3)}
    before = build_tree(space, content)
    task = 7 * 3
    content[task] = sha("changed")
    after = build_tree(space, content)
    assert after.root() != before.root()
    row, tile = task // space.row_size, task // space.nphr
    rb, ra = before.rows(), after.rows()
    assert [lat for lat in ra if ra[lat] != rb[lat]] == [space.lat.name(row)]
    changed = [lon for lon, d in after.tiles(row).items() if d != before.tiles(row)[lon]]
    assert changed == [space.lon.name(tile % space.lon.n)]


# -- the CLI on state dirs (no mount) ------------------------------------------------------------
def _witness(state: Path, rel: str, body: str) -> None:
    p = state / "scraped-tiles" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(body)


def test_digest_and_diff_of_state_dirs(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml")
    todo = rels(mission)
    a, b = tmp_path / "a", tmp_path / "b"
    for rel in todo[:6]:
        _witness(a, rel, f"h\n{rel}\n")
        _witness(b, rel, f"h\n{rel}\n")
    da, db = digest_json(mission, a), digest_json(mission, b)
    assert da == db and da["facts"] == 6
    res = run("digest", str(mission), "--state", str(a))
    assert res.stdout.split() == [da["root"], "."]
    assert run("diff", str(a), str(b), "--mission", str(mission)).returncode == 0
    res = run("diff", str(a), str(b))  # made by hand, never mounted: no mission recorded
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot tell the mission" in res.stderr and "--mission" in res.stderr
    _witness(a, todo[1], "h\nother, longer content\n")  # changed on disk: the cache notices
    _witness(b, todo[9], "h\nnew\n")
    res = run("diff", str(a), str(b), "--mission", str(mission))
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines() == sorted(
        [f"differs    {todo[1]}", f"only-in-b  {todo[9]}"], key=lambda line: line.split()[1]
    )
    assert digest_json(mission, a)["root"] != da["root"]


def test_status_of_a_local_mount_shows_the_current_root(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    mission = write_mission(tmp_path / "m.toml")
    m = make_mount(mission)
    for rel in rels(mission)[:4]:
        commit(m, rel, f"h\n{rel}\n")
    wait_for(
        lambda: (
            m.status()["digest"].get("state") == "current" and m.status()["digest"]["facts"] == 4
        ),
        what="digest current",
    )
    assert m.status()["digest"]["root"] == digest_json(mission, m.state)["root"]


# -- three daemons sharing one bucket ------------------------------------------------------------
def _current(m: Mount, facts: int) -> Callable[[], bool]:
    def ok() -> bool:
        d = m.status()["digest"]
        return bool(d.get("state") == "current" and d["facts"] == facts)

    return ok


def test_three_daemons_agree_and_one_commit_changes_only_its_path(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    all_rels = rels(mission)
    # No periodic refresh: the nodes learn each other's facts only through `missionfs sync`.
    mounts = [s3_mount(make_mount, mission, moto, f"w{i}", "--refresh", "3600") for i in range(3)]
    for i, m in enumerate(mounts):
        for rel in all_rels[i * 3 : (i + 1) * 3]:
            commit(m, rel, f"name,worker\n{rel},w{i}\n")
    for m in mounts:
        sync(m)  # push ours, then...
    for m in mounts:
        sync(m)  # ...pull everyone's: 3 local witnesses and 6 remote-only facts each
    for m in mounts:
        wait_for(_current(m, 9), timeout=30, what=f"digest of {m.state.name}")
    roots = {m.status()["digest"]["root"] for m in mounts}
    assert len(roots) == 1
    env = s3_env()
    ep = ("--endpoint-url", moto.endpoint)
    trees = [digest_json(mission, m.state, *ep, env=env) for m in mounts]
    assert {t["root"] for t in trees} == roots  # the CLI computes what the daemon keeps

    extra = all_rels[20]  # a row and tile of its own: not among the first nine tasks
    commit(mounts[0], extra, "name,worker\nlast,w0\n")
    wait_for(_current(mounts[0], 10), timeout=30, what="digest after the commit")
    assert mounts[0].status()["digest"]["root"] not in roots
    assert {m.status()["digest"]["root"] for m in mounts[1:]} == roots
    new = digest_json(mission, mounts[0].state, *ep, env=env)
    old = trees[1]
    lat, lon, _ = extra.split("/")
    changed_rows = [r for r in new["rows"] if new["rows"][r] != old["rows"].get(r)]
    assert changed_rows == [lat]
    assert [r for r in old["rows"] if r not in new["rows"]] == []
    new_tiles, old_tiles = new["rows"][lat]["tiles"], old["rows"].get(lat, {}).get("tiles", {})
    assert [t for t in new_tiles if new_tiles[t] != old_tiles.get(t)] == [lon]
    assert [t for t in old_tiles if t not in new_tiles] == []

    # No --mission: the mounts recorded their mission file in their state dirs.
    res = run("diff", str(mounts[0].state), str(mounts[1].state), *ep, env=env)
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines() == [f"only-in-a  {extra}"]
    res = run(
        "diff", str(mounts[1].state), str(mounts[2].state), "--mission", str(mission), *ep, env=env
    )
    assert (res.returncode, res.stdout) == (0, ""), res.stderr
    sync(mounts[0])  # the bucket now holds the tenth witness too
    heads = mounts[1].status()["digest"]["remote_heads"]
    sync(mounts[1])  # learns it from mounts[0]'s manifest, which carries its hash: no HEAD
    wait_for(_current(mounts[1], 10), timeout=30, what="digest after the pull")
    assert mounts[1].status()["digest"]["root"] == mounts[0].status()["digest"]["root"]
    assert mounts[1].status()["digest"]["remote_heads"] == heads
    res = run(
        "diff",
        str(mounts[0].state),
        "s3",
        "--mission",
        str(mission),
        *ep,
        "--json",
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["equal"]


def test_a_lost_race_moves_the_losers_root_to_the_winners_content(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """The loser of a race keeps the hashes of its tile in memory since its commits; the winner's
    witness replacing its own must still reach its digest (the state's notify drops the hash)."""
    bucket = new_bucket(seaweed)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    raced, other = rels(mission)[:2]
    assert raced.rsplit("/", 1)[0] == other.rsplit("/", 1)[0]  # one tile
    a = s3_mount(make_mount, mission, seaweed, "a", "--refresh", "3600")
    b = s3_mount(make_mount, mission, seaweed, "b", "--refresh", "3600")
    for m in (a, b):
        commit(m, other, f"name\nother {m.state.name}\n")
        commit(m, raced, f"name\nraced {m.state.name}\n")
    wait_for(
        lambda: a.status()["sync"]["conflicts"] + b.status()["sync"]["conflicts"] == 2,
        timeout=60,
        what="both races resolved",
    )
    env, ep = s3_env(), ("--endpoint-url", seaweed.endpoint)
    for m in (a, b):
        wait_for(_current(m, 2), timeout=30, what=f"digest of {m.state.name}")
        assert m.status()["digest"]["root"] == digest_json(mission, m.state, *ep, env=env)["root"]
    # The same two witnesses (the winners') on both nodes now: the same root.
    assert a.status()["digest"]["root"] == b.status()["digest"]["root"]
