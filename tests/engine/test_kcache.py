"""Which kernel names each change of a task invalidates (fuse/kcache.py), counted per change.

Every invalidation is a write to /dev/fuse from the notifier's thread and a dentry dropped in
the kernel; a worker's task (claim by mv, commit by mv) paid 4.3 of them. Only names the kernel
may hold stale are dropped: a claim or a release by `mv` is a name the kernel moves itself, a
done/ miss stays right while the task is not a fact, and a claimed task has no pending/ name.
The handlers run in process (no kernel): what reaches the notifier (`Notifier.add`) is recorded.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import pyfuse3
import pytest
from pyroaring import BitMap

from fusefs.fuse import inodes
from tests.engine.driver import EngineNode

TILE = "10.1/20.1"
REL = f"{TILE}/coffee shop.csv"  # the tile keeps OTHER pending: no tile name is dropped
OTHER = f"{TILE}/plumber.csv"
CSV = b"name,address\nJoe's,1 Main St\n"

Names = list[tuple[str, str]]


@pytest.fixture
def dropped(node: EngineNode, monkeypatch: pytest.MonkeyPatch) -> Names:
    """The (view, name) of every invalidation the node sends from now on."""
    got: Names = []

    def record(parent: int, name: bytes) -> None:
        _, view, _ = inodes.split(parent)
        got.append((view.value if view is not None else str(parent), name.decode()))

    monkeypatch.setattr(node.ops.kcache.notifier, "add", record)
    node.ops.kcache.enabled = True  # the driver has no kernel: invalidation is off by default
    return got


def after(dropped: Names, change: Callable[[], object]) -> Names:
    dropped.clear()
    change()
    return list(dropped)


def test_a_claim_by_mv_then_a_commit_by_mv_drops_no_name(node: EngineNode, dropped: Names) -> None:
    assert sorted(node.ls(f"pending/{TILE}")) == ["coffee shop.csv", "plumber.csv"]  # held
    # The kernel moves pending/REL to claimed/REL itself; done/REL was and stays a miss.
    assert after(dropped, lambda: node.claim(REL)) == []  # before: done, pending, claimed, done
    assert node.read(f"claimed/{REL}")  # the descriptor
    kept = node.run(node.resolve, f"claimed/{REL}")  # the inode the kernel's name holds
    # The commit's rename turns done/REL positive in the kernel; claimed/REL is left to the
    # kernel (`lingering`): every use of that name is answered ENOENT.
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == []
    assert node.exists(f"done/{REL}") and not node.exists(f"claimed/{REL}")
    assert _errno_of(node, node.ops.getattr, kept, node.ctx) == errno.ENOENT  # stat
    assert _errno_of(node, node.ops.open, kept, 0, node.ctx) == errno.ENOENT  # cat
    assert "coffee shop.csv" not in node.ls(f"claimed/{TILE}")


def test_the_claimed_names_of_a_finished_tile_go_in_one_invalidation(
    node: EngineNode, dropped: Names
) -> None:
    node.ls(f"pending/{TILE}")
    node.ls(f"claimed/{TILE}")  # the kernel holds claimed/LAT/LON
    for rel in (REL, OTHER):
        assert node.claim(rel) == 0
        assert node.read(f"claimed/{rel}")
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == []
    # The tile's last task: its pending/ and claimed/ tile names go (each once).
    assert sorted(after(dropped, lambda: node.commit_tmp("s", CSV, OTHER))) == [
        ("claimed", "20.1"),
        ("pending", "20.1"),
    ]
    assert not node.ops.kcache.lingering


def _errno_of(node: EngineNode, fn: Callable[..., Awaitable[object]], *args: object) -> int:
    async def call() -> int:
        try:
            await fn(*args)
        except pyfuse3.FUSEError as e:
            return e.errno
        return 0

    return node.run(call)


def test_a_release_by_mv_drops_nothing_and_an_expiry_only_the_claimed_name(
    node: EngineNode, dropped: Names
) -> None:
    node.ls(f"pending/{TILE}")
    assert node.claim(REL) == 0
    assert after(dropped, lambda: node.release(REL, by_mv=True)) == []  # the kernel moved it
    assert node.exists(f"pending/{REL}") and not node.exists(f"claimed/{REL}")
    assert node.claim(REL) == 0
    node.clock.advance(node.lease + 1)
    assert after(dropped, node.expire) == [("claimed", "coffee shop.csv")]
    assert node.exists(f"pending/{REL}")


def test_a_commit_without_a_claim_drops_the_pending_name(node: EngineNode, dropped: Names) -> None:
    node.ls(f"pending/{TILE}")
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == [
        ("pending", "coffee shop.csv")
    ]


def test_a_task_nobody_listed_costs_no_invalidation(node: EngineNode, dropped: Names) -> None:
    """No kernel reference, no name: only the done/ miss of a fact not committed by rename."""
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == []
    assert after(dropped, lambda: node.direct_write(OTHER, CSV)) == [("done", "plumber.csv")]


def test_a_commit_refused_because_the_witness_exists_drops_the_done_miss(
    node: EngineNode, dropped: Names
) -> None:
    """`mv tmp/X done/REL` finds a witness the index did not know: the task becomes a fact
    and the rename fails, so the kernel keeps its cached miss of done/REL unless dropped
    (before, nothing was dropped when the kernel held no other name of the task)."""
    witness = node.state_dir / "scraped-tiles" / REL
    witness.parent.mkdir(parents=True, exist_ok=True)
    witness.write_bytes(CSV)
    dropped.clear()
    assert node.commit_tmp("r", CSV, REL) == errno.EEXIST
    assert ("done", "coffee shop.csv") in dropped
    assert node.exists(f"done/{REL}")


def test_a_fact_that_goes_drops_its_done_name(node: EngineNode, dropped: Names) -> None:
    """A commit by mv leaves done/REL positive in the kernel (on the tmp file's inode, which no
    reference tracks), a lookup holds done/OTHER: when the files turn out gone, both go."""
    assert node.commit_tmp("r", CSV, REL) == 0
    assert node.direct_write(OTHER, CSV) == 0
    assert node.exists(f"done/{OTHER}")  # a lookup: the kernel holds the done inode
    sp = node.mission.space
    gone = BitMap([sp.parse_rel(REL), sp.parse_rel(OTHER)])
    facts = node.ws.facts
    after(dropped, lambda: facts.reconcile(facts.local - gone, facts.local.copy()))
    assert ("done", "coffee shop.csv") in dropped and ("done", "plumber.csv") in dropped
    assert not node.exists(f"done/{REL}")


def test_a_tile_name_goes_when_its_last_claim_ends_not_at_its_last_claim(
    node: EngineNode, dropped: Names
) -> None:
    """pending/LAT/LON resolves while our claims remain in it (for `mv claimed/REL
    pending/REL`): claiming its last pending task leaves the name right (before, it was
    dropped, and looked up again at once); the last commit drops it."""
    node.ls(f"pending/{TILE}")
    assert after(dropped, lambda: node.claim(REL)) == []
    assert after(dropped, lambda: node.claim(OTHER)) == []  # before: the tile's name
    assert node.exists(f"pending/{TILE}") and node.ls(f"pending/{TILE}") == []
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == []  # claimed/: lingering
    assert after(dropped, lambda: node.commit_tmp("s", CSV, OTHER)) == [
        ("claimed", "20.1"),  # the finished tile's claimed/ names, at once
        ("pending", "20.1"),
    ]
    assert not node.exists(f"pending/{TILE}")


def test_a_forget_that_crosses_a_new_lookup_keeps_the_name_held(
    node: EngineNode, dropped: Names
) -> None:
    """The kernel dropped an inode and sent its FORGET, then looked the same name up again
    (a new inode, the same number); the daemon handles the LOOKUP first (requests run
    concurrently). The FORGET counts only the old lookups, so the kernel still holds the name,
    and a commit must drop it. Tracked as membership, the late FORGET ended the reference, and
    the stale pending/ name stayed cached for the entry timeout."""
    ino = node.run(node.resolve, f"pending/{REL}")  # the kernel's first lookup
    node.stat(f"pending/{REL}")  # the new lookup, handled before the FORGET of the first
    node.run(node.ops.forget, [(ino, 1)])
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == [
        ("pending", "coffee shop.csv")
    ]
    node.run(node.ops.forget, [(ino, 1)])  # the kernel's last reference
    assert not node.ops.kcache.held(ino)


def test_a_lingering_claimed_name_goes_when_its_witness_goes(
    node: EngineNode, dropped: Names
) -> None:
    """A done task is pending again only if its witness goes (found missing at a reconcile):
    its claimed/ name, left to the kernel at the commit, must go before `mv pending/REL
    claimed/REL` could find it (source and target the same inode: the kernel would not even
    ask the mount)."""
    node.ls(f"pending/{TILE}")
    assert node.claim(REL) == 0
    assert after(dropped, lambda: node.commit_tmp("r", CSV, REL)) == []
    task = node.ws.state.space.parse_rel(REL)
    assert task in node.ops.kcache.lingering
    facts = node.ws.facts
    found = facts.local - BitMap([task])
    assert ("claimed", "coffee shop.csv") in after(
        dropped, lambda: facts.reconcile(found, facts.local.copy())
    )
    assert task not in node.ops.kcache.lingering
    assert "coffee shop.csv" in node.ls(f"pending/{TILE}")


def test_a_kept_claimed_name_with_an_open_descriptor_stays_dead_to_others(
    node: EngineNode, dropped: Names
) -> None:
    """A descriptor opened while the task was claimed may still fstat it after the commit,
    but those attributes last 5 ms (not the 60 s of a pending descriptor's, which would let
    the kernel answer `stat claimed/REL` for a minute), a new open is refused, and so is a
    touch (setattr: ENOENT, not EPERM)."""
    from fusefs.fuse.attrs import CLAIM_ATTR_TIMEOUT
    from tests.engine.driver import FakeSetattrFields

    node.ls(f"pending/{TILE}")
    assert node.claim(REL) == 0
    kept = node.run(node.resolve, f"claimed/{REL}")

    async def hold() -> int:
        return (await node.ops.open(kept, os.O_RDONLY, node.ctx)).fh

    fh = node.run(hold)
    assert node.commit_tmp("r", CSV, REL) == 0
    attr = node.run(node.ops.getattr, kept, node.ctx)
    assert attr.attr_timeout == CLAIM_ATTR_TIMEOUT
    assert _errno_of(node, node.ops.open, kept, os.O_RDONLY, node.ctx) == errno.ENOENT
    fields = FakeSetattrFields(update_atime=True, update_mtime=True)
    assert _errno_of(node, node.ops.setattr, kept, attr, fields, None, node.ctx) == errno.ENOENT

    async def release() -> None:
        await node.ops.release(fh)

    node.run(release)
    assert _errno_of(node, node.ops.getattr, kept, node.ctx) == errno.ENOENT
