"""Stale names still go on a real mount when invalidations are batched (fuse/notifier.py).

Four Python workers claim by `mv` and commit by `mv tmp/NAME done/REL` at full speed, so the
commits' invalidations come under load and share hand-offs: each worker's claimed/REL (the name
the kernel moved at the claim; its attributes would answer for 60 s) must stop resolving within
a deadline, and the unmount must be clean right after the burst."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import Mount, wait_for

WORKER = """
import os, sys
mnt, wid = sys.argv[1], sys.argv[2]
for rel in sys.argv[3:]:
    os.stat(f"{mnt}/pending/{rel}")
    os.rename(f"{mnt}/pending/{rel}", f"{mnt}/claimed/{rel}")
    tmp = f"{mnt}/tmp/w{wid}"
    with open(tmp, "w") as f:
        f.write("name,address\\nJoe's,1 Main St\\n")
    os.rename(tmp, f"{mnt}/done/{rel}")
"""


def pending_rels(m: Mount) -> list[str]:
    out = subprocess.run(
        ["find", "pending", "-type", "f"], cwd=m.mnt, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return sorted(line[len("pending/") :] for line in out if line)


def gone(path: Path) -> Callable[[], bool]:
    return lambda: not os.path.lexists(path)


def test_claimed_names_go_after_a_burst_of_commits(mount: Mount) -> None:
    rels = pending_rels(mount)
    assert len(rels) == 24
    shares = [rels[i::4] for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(mount.mnt), str(i), *share])
        for i, share in enumerate(shares)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert pending_rels(mount) == []
    for rel in rels:
        assert mount.p(f"done/{rel}").stat().st_size > 0
        wait_for(gone(mount.p(f"claimed/{rel}")), 10, f"claimed/{rel} gone")
    assert mount.status()["counts"]["claimed"] == 0
    mount.umount()  # the notifier's thread stops with the mount: exit status 0, no hang


def test_a_single_commit_drops_its_claimed_name(mount: Mount) -> None:
    """A quiet mount: the one commit's invalidation is handed over at once."""
    rel = pending_rels(mount)[0]
    os.rename(mount.p(f"pending/{rel}"), mount.p(f"claimed/{rel}"))
    assert os.path.exists(mount.p(f"claimed/{rel}"))
    mount.p("tmp/r").write_text("a,b\n")
    os.rename(mount.p("tmp/r"), mount.p(f"done/{rel}"))
    wait_for(lambda: not os.path.exists(mount.p(f"claimed/{rel}")), 10, "claimed/ name gone")


def test_a_committed_claims_name_is_dead_on_use_at_once(mount: Mount) -> None:
    """A claim ended by its commit leaves its claimed/ name to the kernel (no invalidation per
    task, kcache.py `lingering`): the name must already be refused on use and absent from
    listings when the commit returns, and stop answering `stat` within the attribute bound."""
    rel = pending_rels(mount)[0]
    tile = rel.rpartition("/")[0]
    os.rename(mount.p(f"pending/{rel}"), mount.p(f"claimed/{rel}"))
    shown = subprocess.run(["cat", str(mount.p(f"claimed/{rel}"))], capture_output=True)
    assert shown.returncode == 0 and shown.stdout  # the descriptor, through the kept name
    mount.p("tmp/r").write_text("a,b\n")
    os.rename(mount.p("tmp/r"), mount.p(f"done/{rel}"))
    again = subprocess.run(["cat", str(mount.p(f"claimed/{rel}"))], capture_output=True)
    assert again.returncode != 0 and b"No such file" in again.stderr
    listed = subprocess.run(["ls", str(mount.p(f"claimed/{tile}"))], capture_output=True)
    assert rel.rpartition("/")[2] not in listed.stdout.decode()
    touched = subprocess.run(["touch", str(mount.p(f"claimed/{rel}"))], capture_output=True)
    assert touched.returncode != 0  # no renewal of a claim that ended
    wait_for(lambda: not os.path.exists(mount.p(f"claimed/{rel}")), 10, "stat says ENOENT")
    assert mount.p(f"done/{rel}").read_text() == "a,b\n"
    assert mount.status()["counts"]["claimed"] == 0
