"""The mount, driven by real processes: ls, find, cat, mv, touch, rm, shell redirection, Python."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs.model.mission import load_mission
from tests.support.mounts import Mount, wait_for, write_mission

REL = "40.71/-74.00/coffee shop.csv"
CSV = "name,address\nJoe's,1 Main St\n"


def sh(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, f"{cmd!r}: {res.stderr}"
    return res


def all_rels(mission: Path) -> set[str]:
    m = load_mission(mission)
    return {m.space.rel(t) for t in m.intent}


def listed(m: Mount, view: str) -> set[str]:
    out = sh(f"find {view} -type f", m.mnt).stdout.split("\n")
    return {line[len(view) + 1 :] for line in out if line}


def commit_via_tmp(m: Mount, rel: str, body: str = CSV, name: str = "result") -> None:
    sh(f"printf %b {json.dumps(body)} > tmp/{name} && mv tmp/{name} 'done/{rel}'", m.mnt)


def test_layout_and_pending_listing(mount: Mount, mission: Path) -> None:
    assert sorted(os.listdir(mount.mnt)) == ["claimed", "done", "pending", "status", "tmp"]
    assert listed(mount, "pending") == all_rels(mission)
    assert listed(mount, "done") == set() and listed(mount, "claimed") == set()
    assert sh("ls pending", mount.mnt).stdout.split() == ["40.70", "40.71", "40.72"]
    s = mount.status()
    assert s["counts"]["pending"] == 24 and s["counts"]["done"] == 0 and s["store"] == "local"


def test_descriptor(mount: Mount) -> None:
    out = sh(f"cat 'pending/{REL}'", mount.mnt).stdout
    d = json.loads(out)
    assert out.count("\n") == 1
    assert (d["lat"], d["lon"], d["phrase"]) == (40.71, -74.0, "coffee shop")
    assert (d["north"], d["east"]) == (40.72, -73.99)
    assert d["done"] == f"done/{REL}"
    assert os.stat(mount.p(f"pending/{REL}")).st_size == len(out.encode())
    assert '"lon": -74.00,' in out  # exact decimals, as in the path


def test_claim_commit_cycle_is_visible_when_each_call_returns(mount: Mount) -> None:
    sh(f"mv 'pending/{REL}' 'claimed/{REL}'", mount.mnt)
    assert REL not in listed(mount, "pending")
    assert listed(mount, "claimed") == {REL}
    assert not mount.p(f"pending/{REL}").exists()
    commit_via_tmp(mount, REL)
    assert REL not in listed(mount, "pending")
    assert listed(mount, "claimed") == set()
    assert listed(mount, "done") == {REL}
    assert mount.p(f"done/{REL}").read_text() == CSV
    assert (mount.state / "scraped-tiles" / REL).read_text() == CSV
    assert os.listdir(mount.p("tmp")) == []
    s = mount.status()["counts"]
    assert (s["done"], s["pending"], s["claimed"]) == (1, 23, 0)


def test_release_by_mv_of_the_last_pending_task_of_a_tile(mount: Mount) -> None:
    """Once a tile's last pending task is claimed, `ls pending/LAT/` no longer lists the tile,
    but `mv claimed/REL pending/REL` (the documented release) must still resolve it."""
    tile = REL.rsplit("/", 1)[0]
    names = sorted(os.listdir(mount.p(f"pending/{tile}")))
    for name in names:
        sh(f"mv 'pending/{tile}/{name}' 'claimed/{tile}/{name}'", mount.mnt)
    lat, lon = tile.split("/")
    assert lon not in os.listdir(mount.p(f"pending/{lat}"))  # listed nowhere: nothing pending
    for name in names:
        sh(f"mv 'claimed/{tile}/{name}' 'pending/{tile}/{name}'", mount.mnt)
    assert sorted(os.listdir(mount.p(f"pending/{tile}"))) == names
    assert mount.status()["counts"]["claimed"] == 0


def test_names_the_kernel_cached_are_dropped_when_tasks_change(mount: Mount) -> None:
    """Positive names held by the kernel (looked up, listed, moved by a claim) and cached
    misses in done/ must all be stale-free after commits that empty a whole tile."""
    tile = "40.70/-74.02"
    names = sorted(os.listdir(mount.p(f"pending/{tile}")))  # listed: the kernel holds them
    assert len(names) > 1
    for n in names:
        os.stat(mount.p(f"pending/{tile}/{n}"))
        assert not mount.p(f"done/{tile}/{n}").exists()  # a cached miss in done/
    claimed = f"{tile}/{names[0]}"
    sh(f"mv 'pending/{claimed}' 'claimed/{claimed}'", mount.mnt)
    os.stat(mount.p(f"claimed/{claimed}"))
    for i, n in enumerate(names):
        if i % 2:
            commit_via_tmp(mount, f"{tile}/{n}")
        else:
            sh(f"echo 'a,b' > 'done/{tile}/{n}'", mount.mnt)
    for n in names:
        assert os.stat(mount.p(f"done/{tile}/{n}")).st_size > 0  # the kernel made them positive
    assert "-74.02" not in os.listdir(mount.p("pending/40.70"))  # listings are exact at once
    # The names the commits made stale are dropped a moment after (batched: SEMANTICS.md).
    stale = [*(f"pending/{tile}/{n}" for n in names), f"claimed/{claimed}", f"pending/{tile}"]
    wait_for(lambda: not any(mount.p(p).exists() for p in stale), 10, "stale names dropped")


def test_a_claim_by_mv_keeps_the_name_the_kernel_moved_right(mount: Mount) -> None:
    """A claim or release by `mv` invalidates nothing (kcache.kernel_rename): the kernel moves
    its cached name itself, still on the inode it was looked up as. Through that name the task
    must read as what it is now: a claim (rw-r--r--, mtime = the claim), the descriptor, and
    after a release by mv, a pending descriptor (r--r--r--) again; the commit drops it."""
    tile = "40.72/-74.00"
    names = sorted(os.listdir(mount.p(f"pending/{tile}")))  # listed: the kernel holds them
    rel = f"{tile}/{names[0]}"
    descriptor = mount.p(f"pending/{rel}").read_bytes()
    pending = os.stat(mount.p(f"pending/{rel}"))
    assert stat.S_IMODE(pending.st_mode) == 0o444
    for _ in range(2):
        t0 = time.time()
        os.rename(mount.p(f"pending/{rel}"), mount.p(f"claimed/{rel}"))
        st = os.stat(mount.p(f"claimed/{rel}"))
        assert stat.S_IMODE(st.st_mode) == 0o644
        assert t0 - 1 <= st.st_mtime <= time.time() + 1  # the claim's time, not the mount's
        assert st.st_mtime_ns != pending.st_mtime_ns
        assert mount.p(f"claimed/{rel}").read_bytes() == descriptor
        assert not mount.p(f"pending/{rel}").exists()
        assert names[0] not in os.listdir(mount.p(f"pending/{tile}"))
        with pytest.raises(PermissionError):
            mount.p(f"claimed/{rel}").write_text("x")
        os.rename(mount.p(f"claimed/{rel}"), mount.p(f"pending/{rel}"))  # release by mv
        assert stat.S_IMODE(os.stat(mount.p(f"pending/{rel}")).st_mode) == 0o444
        assert not mount.p(f"claimed/{rel}").exists()
        assert mount.status()["counts"]["claimed"] == 0
    os.rename(mount.p(f"pending/{rel}"), mount.p(f"claimed/{rel}"))
    assert mount.p(f"claimed/{rel}").exists()
    commit_via_tmp(mount, rel)
    assert mount.p(f"done/{rel}").read_text() == CSV
    assert not mount.p(f"pending/{rel}").exists()
    # The commit drops claimed/REL from the notifier's thread, a moment after it returns.
    wait_for(lambda: not mount.p(f"claimed/{rel}").exists(), timeout=10, what="claimed/ name")


def test_commit_without_claim_and_python_open(mount: Mount) -> None:
    rel = "40.70/-74.02/plumber.csv"
    with open(mount.p(f"done/{rel}"), "w") as f:
        f.write(CSV)
    # The close above was the commit: the very next listing must reflect it.
    assert rel not in listed(mount, "pending")
    assert mount.p(f"done/{rel}").read_text() == CSV
    assert (mount.state / "scraped-tiles" / rel).read_text() == CSV


def test_direct_write_by_shell_redirection(mount: Mount) -> None:
    rel = "40.72/-73.99/plumber.csv"
    sh(f"{{ echo 'a,b'; echo '1,2'; }} > 'done/{rel}'", mount.mnt)
    assert rel not in listed(mount, "pending")
    assert mount.p(f"done/{rel}").read_text() == "a,b\n1,2\n"


def test_sixteen_racers_one_winner(mount: Mount) -> None:
    rel = "40.72/-74.01/coffee shop.csv"
    script = f"cd {mount.mnt} && mv 'pending/{rel}' 'claimed/{rel}'"
    procs = [
        subprocess.Popen(["bash", "-c", script], stderr=subprocess.PIPE, text=True)
        for _ in range(16)
    ]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    winners = [r for r in results if r[0] == 0]
    assert len(winners) == 1, results
    for code, err in results:
        if code != 0:
            assert "No such file or directory" in err or "same file" in err, err
    assert listed(mount, "claimed") == {rel}
    assert mount.status()["counts"]["claimed"] == 1


def test_sixteen_python_racers_get_enoent(mount: Mount) -> None:
    rel = "40.70/-73.99/plumber.csv"
    code = (
        f"import os,sys\ntry:\n os.rename({str(mount.p('pending/' + rel))!r}, "
        f"{str(mount.p('claimed/' + rel))!r}); print('won')\n"
        "except OSError as e: print(e.errno)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(16)
    ]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs.count("won") == 1
    assert set(outs) - {"won"} <= {str(errno.ENOENT)}


def test_empty_and_truncated_direct_writes_are_refused(mount: Mount) -> None:
    rel = "40.70/-74.00/plumber.csv"
    sh(f": > 'done/{rel}'", mount.mnt)
    sh(f"printf 'a,b\\n1,2' > 'done/{rel}'", mount.mnt)  # no final newline: truncated
    sh(f"printf 'a,b\\n1,2,3\\n' > 'done/{rel}'", mount.mnt)  # a field too many
    with pytest.raises(OSError) as e, open(mount.p(f"done/{rel}"), "w") as f:
        f.write("a,b\n1")
    assert e.value.errno == errno.EBADMSG
    assert rel in listed(mount, "pending")
    assert not (mount.state / "scraped-tiles" / rel).exists()
    assert not mount.p(f"done/{rel}").exists()
    kept = sorted(
        p.name for p in (mount.state / "rejected").iterdir() if not p.name.endswith(".why")
    )
    assert len(kept) == 4  # every refused byte is kept, nothing dropped
    s = mount.status()
    assert s["refused"] >= 4 and any("truncated" in e["error"] for e in s["errors"])


def test_writer_killed_mid_write_leaves_no_witness(mount: Mount) -> None:
    rel = "40.71/-73.99/coffee shop.csv"
    # The partial content is even a well-formed CSV: only the kill tells it is not finished.
    code = (
        f"import os,signal\nf=open({str(mount.p('done/' + rel))!r},'w')\n"
        "f.write('a,b\\n1,2\\n'); f.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert p.returncode == -signal.SIGKILL
    wait_for(lambda: mount.status()["refused"] >= 1, what="refusal of the killed write")
    assert rel in listed(mount, "pending")
    assert not (mount.state / "scraped-tiles" / rel).exists()


def test_writer_killed_before_rename_leaves_no_witness(mount: Mount) -> None:
    rel = "40.71/-73.99/plumber.csv"
    p = subprocess.Popen(
        ["bash", "-c", f"cd {mount.mnt}; printf 'a,b\\n' > tmp/w; sleep 60; mv tmp/w 'done/{rel}'"],
        start_new_session=True,
    )
    wait_for(lambda: mount.p("tmp/w").exists(), what="tmp file")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert rel in listed(mount, "pending")
    assert not (mount.state / "scraped-tiles" / rel).exists()


def test_witness_is_immutable(mount: Mount) -> None:
    commit_via_tmp(mount, REL)
    before = (mount.state / "scraped-tiles" / REL).read_bytes()
    res = sh(f"echo x > 'done/{REL}'", mount.mnt, check=False)
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    res = sh(f"echo x >> 'done/{REL}'", mount.mnt, check=False)
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    res = sh(f"rm 'done/{REL}'", mount.mnt, check=False)
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    res = sh(f"truncate -s 0 'done/{REL}'", mount.mnt, check=False)
    assert res.returncode != 0
    sh("printf 'a,b\\n' > tmp/again", mount.mnt)
    with pytest.raises(FileExistsError):
        os.rename(mount.p("tmp/again"), mount.p(f"done/{REL}"))
    with pytest.raises(PermissionError):
        os.rename(mount.p(f"done/{REL}"), mount.p("tmp/stolen"))
    assert (mount.state / "scraped-tiles" / REL).read_bytes() == before
    assert mount.p(f"done/{REL}").read_bytes() == before
    assert mount.p("tmp/again").exists()  # the refused result is still the user's


def test_out_of_plan_paths_are_refused(mount: Mount) -> None:
    res = sh("echo 'a' > 'done/40.71/-74.00/tea.csv'", mount.mnt, check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = sh("mkdir -p done/41.00/-74.00", mount.mnt, check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = sh("mkdir -p done/40.705", mount.mnt, check=False)
    assert res.returncode != 0
    sh("printf 'a\\n' > tmp/x", mount.mnt)
    with pytest.raises(PermissionError):
        os.rename(mount.p("tmp/x"), mount.p("done/40.71/-74.00/tea.csv"))
    assert not mount.p("done/41.00").exists()
    assert not mount.p("pending/40.71/-74.00/tea.csv").exists()
    assert any("not a task of the mission plan" in e["error"] for e in mount.status()["errors"])
    assert not list((mount.state / "scraped-tiles").rglob("tea.csv"))


def test_plan_directories_exist_in_done_and_claimed(mount: Mount) -> None:
    sh("mkdir -p done/40.72/-73.99 claimed/40.72/-73.99", mount.mnt)
    assert mount.p("done/40.72/-73.99").is_dir()
    assert sh("ls done", mount.mnt).stdout == ""  # listed only once they hold something
    res = sh("touch 'pending/40.72/-73.99/plumber.csv'", mount.mnt, check=False)
    assert res.returncode != 0


def test_lease_touch_renews_and_rm_releases(mount: Mount) -> None:
    sh(f"mv 'pending/{REL}' 'claimed/{REL}'", mount.mnt)
    m1 = os.stat(mount.p(f"claimed/{REL}")).st_mtime
    sh(f"touch 'claimed/{REL}'", mount.mnt)
    m2 = os.stat(mount.p(f"claimed/{REL}")).st_mtime
    assert m2 > m1
    sh(f"rm 'claimed/{REL}'", mount.mnt)
    assert REL in listed(mount, "pending")
    assert listed(mount, "claimed") == set()


def test_lease_expiry_returns_the_task(make_mount: Callable[..., Mount], mission: Path) -> None:
    m = make_mount(mission, args=("--lease", "1"))
    sh(f"mv 'pending/{REL}' 'claimed/{REL}'", m.mnt)
    assert REL not in listed(m, "pending")
    wait_for(lambda: REL in listed(m, "pending"), timeout=15, what="lease expiry")
    assert listed(m, "claimed") == set()
    assert m.status()["expired_leases"] == 1


def test_kill9_then_remount_keeps_every_witness(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    m = make_mount(mission)
    rels = sorted(all_rels(mission))[:10]
    for i, rel in enumerate(rels):
        commit_via_tmp(m, rel, body=f"n\n{i}\n", name=f"r{i}")
    m.kill9()
    # The dead mount is released by the next mount; the witnesses are the truth.
    m.start()
    assert listed(m, "done") == set(rels)
    assert listed(m, "pending") == all_rels(mission) - set(rels)
    for i, rel in enumerate(rels):
        assert m.p(f"done/{rel}").read_text() == f"n\n{i}\n"
    wait_for(lambda: m.status()["reconcile"] == "done", what="reconcile")
    m.umount()


def test_claims_survive_kill9_and_a_clean_restart(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    """A worker holding claimed/REL keeps it across daemon restarts, with its lease end."""
    m = make_mount(mission, args=("--lease", "4"))
    held, done, kept, released = sorted(all_rels(mission))[:4]
    for rel in (held, done, kept, released):
        sh(f"mv '{'pending/' + rel}' '{'claimed/' + rel}'", m.mnt)
    commit_via_tmp(m, done)
    sh(f"rm 'claimed/{released}'", m.mnt)
    m.kill9()
    m.start()
    assert listed(m, "claimed") == {held, kept}
    assert listed(m, "pending") == all_rels(mission) - {held, kept, done}
    sh(f"touch 'claimed/{kept}'", m.mnt)  # renewed after the restart, recorded again
    m.umount()
    m.start()  # a clean restart too
    assert listed(m, "claimed") == {held, kept}
    commit_via_tmp(m, kept)  # the worker finishes through the restored claim
    # The lease end carries over: the abandoned claim returns to pending without a renewal.
    wait_for(lambda: held in listed(m, "pending"), timeout=30, what="restored lease expiry")
    assert listed(m, "claimed") == set()


def test_witness_added_offline_is_found(make_mount: Callable[..., Mount], mission: Path) -> None:
    m = make_mount(mission)
    m.umount()
    rel = "40.70/-74.02/coffee shop.csv"
    (m.state / "scraped-tiles" / "40.70" / "-74.02").mkdir(parents=True)
    (m.state / "scraped-tiles" / rel).write_text("a\n")
    m.start()
    wait_for(lambda: m.status()["reconcile"] == "done", what="reconcile")
    assert rel in listed(m, "done")
    assert rel not in listed(m, "pending")


def test_sigterm_unmounts_cleanly(make_mount: Callable[..., Mount], mission: Path) -> None:
    m = make_mount(mission)
    commit_via_tmp(m, REL)
    assert m.proc is not None
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=30) == 0
    assert not os.path.ismount(m.mnt)
    assert (m.state / "index" / "facts.roaring").exists()


def test_tmp_is_a_scratch_directory(mount: Mount) -> None:
    sh("echo one > tmp/a && mv tmp/a tmp/b && echo two > tmp/c && rm tmp/c", mount.mnt)
    assert sorted(os.listdir(mount.p("tmp"))) == ["b"]
    assert mount.p("tmp/b").read_text() == "one\n"
    with open(mount.p("tmp/b"), "r+") as f:
        f.seek(0, 2)
        f.write("more\n")
        f.flush()
        os.fsync(f.fileno())
    assert mount.p("tmp/b").read_text() == "one\nmore\n"
    res = sh("mkdir tmp/sub", mount.mnt, check=False)
    assert res.returncode != 0


def test_large_directory_listing_pages_correctly(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    phrases = tuple(f"phrase number {i:04d} with a long name to fill pages" for i in range(1500))
    mission = write_mission(
        tmp_path / "big.toml",
        south="1.0",
        west="2.0",
        north="1.1",
        east="2.1",
        step="0.1",
        phrases=phrases,
    )
    m = make_mount(mission)
    names = os.listdir(m.p("pending/1.0/2.0"))
    assert len(names) == 1500 == len(set(names))
    sh(f"mv 'pending/1.0/2.0/{phrases[700]}.csv' 'claimed/1.0/2.0/{phrases[700]}.csv'", m.mnt)
    assert len(os.listdir(m.p("pending/1.0/2.0"))) == 1499


def test_batched_durability_commits_the_same_way(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    m = make_mount(mission, args=("--durability", "batched"))
    assert m.status()["durability"] == "batched"
    rels = sorted(all_rels(mission))[:5]
    for i, rel in enumerate(rels):
        commit_via_tmp(m, rel, body=f"n\n{i}\n", name=f"b{i}")
    assert set(rels) <= listed(m, "done") and not set(rels) & listed(m, "pending")
    m.kill9()  # a killed daemon loses nothing in batched mode either (the page cache survives)
    m.start()
    assert listed(m, "done") == set(rels)
    assert all(m.p(f"done/{rel}").read_text() == f"n\n{i}\n" for i, rel in enumerate(rels))
