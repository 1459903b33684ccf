"""Fleet claims across mounts: lease objects in one bucket on SeaweedFS (atomic conditional writes)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.mount.test_s3 import MISSION, key_names, keys, listed, rels
from tests.support.mounts import Mount, new_bucket, wait_for, write_mission
from tests.support.s3_servers import SeaweedServer, s3_env

# A worker in plain shell: pick a random pending task, claim it with mv, write, commit with mv.
WORKER = r"""
cd "$1" || exit 1
log="$2"
idle=0
while [ "$idle" -lt 40 ]; do
    rel="$(find pending -type f 2>/dev/null | shuf -n 1 | cut -d/ -f2-)"
    if [ -z "$rel" ]; then idle=$((idle + 1)); sleep 0.05; continue; fi
    idle=0
    if mv "pending/$rel" "claimed/$rel" 2>/dev/null; then
        printf 'name,worker\n%s,%s\n' "$rel" "$$" > "tmp/w$$"
        if mv "tmp/w$$" "done/$rel"; then echo "$rel" >> "$log"; else rm -f "tmp/w$$"; fi
    fi
done
"""


def fleet_mission(path: Path, bucket: str, claims: str = "strict") -> Path:
    return write_mission(
        path,
        name=MISSION,
        north="40.80",
        east="-73.92",
        phrases=("coffee shop", "plumber"),
        extra=f'[store]\ns3 = "s3://{bucket}/runs"\nclaims = "{claims}"\n',
    )


def fleet_mount(
    make_mount: Callable[..., Mount], mission: Path, server: SeaweedServer, name: str, *extra: str
) -> Mount:
    m = make_mount(
        mission,
        name=name,
        env=s3_env(),
        args=("--endpoint-url", server.endpoint, "--refresh", "0.5", "--worker", name, *extra),
    )
    wait_for(lambda: m.status()["sync"]["online"], timeout=60, what="online")
    return m


def test_two_mounts_sixteen_workers_each_task_done_once(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket)
    todo = rels(mission)
    assert len(todo) == 200
    mounts = [fleet_mount(make_mount, mission, seaweed, n) for n in ("a", "b")]
    script = tmp_path / "worker.sh"
    script.write_text(WORKER)
    logs = [tmp_path / f"log{i}" for i in range(16)]
    procs = [
        subprocess.Popen(
            ["bash", str(script), str(mounts[i % 2].mnt), str(logs[i])], start_new_session=True
        )
        for i in range(16)
    ]
    try:
        for p in procs:
            assert p.wait(timeout=600) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    wait_for(
        lambda: all(m.status()["sync"]["queue"] == 0 for m in mounts), timeout=120, what="uploads"
    )
    done = Counter(line for log in logs if log.exists() for line in log.read_text().splitlines())
    assert set(done) == set(todo)
    assert max(done.values()) == 1, [r for r, n in done.items() if n > 1]  # no duplicate work
    assert set(keys(seaweed, bucket, "scraped-tiles")) == set(todo)
    assert keys(seaweed, bucket, "conflicts") == {}
    # Finished tasks' leases stay as tombstones for two refresh intervals, then go in batches.
    wait_for(lambda: not key_names(seaweed, bucket, "claims"), timeout=60, what="leases retired")
    # Each mount ends up knowing every witness (its own and, from S3, the other's).
    wait_for(
        lambda: all(m.status()["counts"]["done"] == 200 for m in mounts),
        timeout=60,
        what="both mounts know all 200",
    )


def test_lease_of_a_killed_worker_expires_and_another_mount_does_the_task(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket)
    a = fleet_mount(make_mount, mission, seaweed, "a", "--lease", "2")
    b = fleet_mount(make_mount, mission, seaweed, "b", "--lease", "2")
    rel = rels(mission)[7]
    # A worker claims through a, then dies without completing or releasing.
    p = subprocess.Popen(
        ["bash", "-c", f"mv 'pending/{rel}' 'claimed/{rel}' && sleep 600"],
        cwd=a.mnt,
        start_new_session=True,
    )
    wait_for(lambda: (a.mnt / "claimed" / rel).exists(), what="claim")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    wait_for(lambda: not (b.mnt / "pending" / rel).exists(), timeout=30, what="b sees the lease")
    # After the lease (2 s + grace) it comes back, and b's worker completes it.
    wait_for(lambda: (b.mnt / "pending" / rel).exists(), timeout=60, what="lease expiry")
    subprocess.run(
        [
            "bash",
            "-c",
            f"mv 'pending/{rel}' 'claimed/{rel}' && printf 'h\\nb\\n' > "
            f"tmp/x && mv tmp/x 'done/{rel}'",
        ],
        cwd=b.mnt,
        check=True,
        timeout=60,
    )
    wait_for(lambda: b.status()["sync"]["queue"] == 0, what="upload")
    assert keys(seaweed, bucket, "scraped-tiles") == {rel: b"h\nb\n"}
    wait_for(
        lambda: (
            rel in {str(q.relative_to(a.mnt / "done")) for q in (a.mnt / "done").rglob("*.csv")}
        ),
        timeout=30,
        what="a learns it",
    )


def test_daemon_killed_while_holding_a_lease_no_double_completion(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket)
    a = fleet_mount(make_mount, mission, seaweed, "a")
    b = fleet_mount(make_mount, mission, seaweed, "b")
    rel = rels(mission)[3]
    os.rename(a.mnt / "pending" / rel, a.mnt / "claimed" / rel)
    a.kill9()
    wait_for(lambda: not (b.mnt / "pending" / rel).exists(), timeout=30, what="b sees a's lease")
    a.start()  # a adopts its own lease again; the worker can still complete through it
    wait_for(lambda: (a.mnt / "claimed" / rel).exists(), timeout=30, what="lease adopted")
    res = subprocess.run(
        ["mv", f"pending/{rel}", f"claimed/{rel}"], cwd=b.mnt, capture_output=True, text=True
    )
    assert res.returncode != 0  # b cannot take it while a's lease lives
    (a.mnt / "tmp" / "r").write_text("h\na\n")
    os.rename(a.mnt / "tmp" / "r", a.mnt / "done" / rel)
    wait_for(lambda: a.status()["sync"]["queue"] == 0, what="upload")
    assert keys(seaweed, bucket, "scraped-tiles") == {rel: b"h\na\n"}
    assert keys(seaweed, bucket, "conflicts") == {}
    wait_for(lambda: not key_names(seaweed, bucket, "claims"), timeout=60, what="lease retired")


def test_a_stale_view_cannot_redo_a_task_just_finished(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """b's view is older than a's completion: the lease a keeps as a tombstone for two refresh
    intervals makes b's claim fail, so the task is not done twice (no HEAD per claim)."""
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket)
    a = fleet_mount(make_mount, mission, seaweed, "a", "--refresh", "2")
    b = fleet_mount(make_mount, mission, seaweed, "b", "--refresh", "3600")
    rel = rels(mission)[5]
    os.rename(a.mnt / "pending" / rel, a.mnt / "claimed" / rel)
    (a.mnt / "tmp" / "r").write_text("h\na\n")
    os.rename(a.mnt / "tmp" / "r", a.mnt / "done" / rel)
    wait_for(lambda: a.status()["sync"]["queue"] == 0, what="upload")
    assert (b.mnt / "pending" / rel).exists()  # b has not refreshed since
    res = subprocess.run(
        ["mv", f"pending/{rel}", f"claimed/{rel}"], cwd=b.mnt, capture_output=True, text=True
    )
    assert res.returncode != 0 and "No such file" in res.stderr
    assert not (b.mnt / "pending" / rel).exists()  # now known to be another worker's
    assert keys(seaweed, bucket, "scraped-tiles") == {rel: b"h\na\n"}
    assert b.status()["sync"]["requests"].get("HEAD", 0) <= 1  # the start-up self-test only
    wait_for(lambda: not key_names(seaweed, bucket, "claims"), timeout=60, what="lease retired")


def test_released_claims_stay_released(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """A lease listing older than a release must not bring the lease (and the claim) back."""
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket)
    m = fleet_mount(make_mount, mission, seaweed, "a", "--refresh", "0.1")
    todo = rels(mission)[:20]
    for rel in todo:
        os.rename(m.mnt / "pending" / rel, m.mnt / "claimed" / rel)
        os.unlink(m.mnt / "claimed" / rel)
    refreshes = m.status()["sync"]["last_refresh"]
    wait_for(lambda: m.status()["sync"]["last_refresh"] > refreshes + 0.5, what="refreshes")
    assert all((m.mnt / "pending" / rel).exists() for rel in todo)
    assert m.status()["counts"]["claimed"] == 0
    assert m.status()["sync"]["leases_held"] == 0
    wait_for(lambda: keys(seaweed, bucket, "claims") == {}, what="leases deleted")


def test_optimistic_mounts_list_disjoint_shares(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """Work affinity: once two optimistic mounts have seen each other at work (a lease each),
    their pending/ listings are disjoint shares that together cover every pending task, while
    `status` still counts the whole difference."""
    bucket = new_bucket(seaweed)
    mission = fleet_mission(tmp_path / "m.toml", bucket, claims="optimistic")
    a = fleet_mount(make_mount, mission, seaweed, "a")
    b = fleet_mount(make_mount, mission, seaweed, "b")
    todo = rels(mission)
    assert len(todo) < 2 * 256  # every share fits in one listing window
    ra, rb = todo[0], todo[-1]
    os.rename(a.mnt / "pending" / ra, a.mnt / "claimed" / ra)
    os.rename(b.mnt / "pending" / rb, b.mnt / "claimed" / rb)

    def disjoint() -> bool:
        try:
            pa, pb = listed(a, "pending"), listed(b, "pending")
        except FileNotFoundError:  # a listing walked while the shares were being set
            return False
        return bool(pa) and bool(pb) and not pa & pb and len(pa | pb) == len(todo) - 2

    wait_for(disjoint, timeout=30, what="disjoint shares")
    assert listed(a, "pending") | listed(b, "pending") == set(todo) - {ra, rb}
    assert a.status()["counts"]["pending"] == len(todo) - 2  # global: b's claim is foreign
    share_b = sorted(listed(b, "pending"))
    # Any pending task can still be claimed by name, in the other's share too.
    os.rename(a.mnt / "pending" / share_b[0], a.mnt / "claimed" / share_b[0])
    assert (a.mnt / "claimed" / share_b[0]).exists()
