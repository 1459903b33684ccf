"""Everything a real mount (with S3), `sync`, `digest`, `fleet`, a refused write and `fsck`
leave in a state dir is named by statedir/layout.py."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

from fusefs.statedir.layout import StateLayout
from tests.mount.test_s3 import commit, rels, run, s3_mission, s3_mount
from tests.support.mounts import Mount, new_bucket, wait_for
from tests.support.s3_servers import MotoServer

INDEX_SET = re.compile(r"(facts|remote|synced)(\.roaring|-\d+\.(log|sizes))(\.tmp)?")


def names_not_in_layout(state: Path) -> list[str]:
    """Top-level names the layout does not define, and index/ files that are neither a
    FactIndex set (index.py names its own files) nor a layout path."""
    layout = StateLayout(state)
    known_in_index = {p.name for p in (layout.hash_cache, layout.intent_cache, layout.fact_log)}
    extra = [n for n in sorted(p.name for p in state.iterdir()) if n not in layout.names()]
    for p in sorted(layout.index.iterdir()):
        base = re.sub(r"(-wal|-shm|-journal|\.tmp)$", "", p.name)
        if base not in known_in_index and not INDEX_SET.fullmatch(p.name):
            extra.append(f"index/{p.name}")
    return extra


def test_a_mount_creates_only_what_the_layout_names(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    a = s3_mount(make_mount, mission, moto, "a")
    b = s3_mount(make_mount, mission, moto, "b")
    done, fetched, refused = rels(mission)[:3]
    commit(a, done, "h\n1\n")
    commit(b, fetched, "h\n2\n")
    wait_for(lambda: (a.mnt / "done" / fetched).exists(), timeout=30, what="remote fact")
    assert (a.mnt / "done" / fetched).read_text() == "h\n2\n"  # fetched into a's store
    try:
        (a.mnt / "done" / refused).write_bytes(b"no newline")  # refused at close: rejected/
    except OSError as e:
        assert e.errno == errno.EBADMSG
    res = run("sync", str(mission), "--state", str(a.state))  # through the daemon
    assert res.returncode == 0, res.stderr
    res = run("digest", str(mission), "--state", str(a.state))
    assert res.returncode == 0, res.stderr
    res = run("fleet", str(mission), "--state", str(a.state), "--endpoint-url", moto.endpoint)
    assert res.returncode == 0, res.stderr
    a.umount()
    res = run("fsck", str(mission), "--state", str(a.state), "--repair", "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    layout = StateLayout(a.state)
    for path in (
        layout.journal,
        layout.claims_log,
        layout.worker_id,
        layout.s3_options,
        layout.mission_name,
        layout.sync_result,
        layout.hash_cache,
        layout.fact_log,
        layout.lock,
        layout.fleet_cache,
    ):
        assert path.exists(), path
    assert list(layout.rejected.iterdir())  # the refused write, kept
    assert names_not_in_layout(a.state) == []
    assert names_not_in_layout(b.state) == []


def test_the_check_sees_a_stray_name(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.index.mkdir()
    (tmp_path / "daemon.lock").touch()
    (layout.index / "facts-3.log").touch()
    (layout.index / "hashes.sqlite-wal").touch()
    assert names_not_in_layout(tmp_path) == []
    (tmp_path / "stray.json").touch()
    (layout.index / "cursor.json").touch()
    assert names_not_in_layout(tmp_path) == ["stray.json", "index/cursor.json"]
