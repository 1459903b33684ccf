"""Claims through the FUSE handlers: claim, the lost race, release, renew, expiry."""

from __future__ import annotations

import errno
import stat

import pyfuse3

from tests.engine.driver import LEASE, EngineNode, FakeClock

REL = "10.1/20.1/coffee shop.csv"
OTHER = "10.1/20.1/plumber.csv"


def test_claim_moves_the_task_from_pending_to_claimed(node: EngineNode, clock: FakeClock) -> None:
    assert node.claim(REL) == 0
    assert node.ls("pending/10.1/20.1") == ["plumber.csv"]
    assert node.ls("claimed") == ["10.1"]
    assert node.ls("claimed/10.1") == ["20.1"]
    assert node.ls("claimed/10.1/20.1") == ["coffee shop.csv"]
    e = node.stat(f"claimed/{REL}")
    assert stat.S_IMODE(e.mode) == 0o644 and e.mtime_ns == clock.time_ns()
    assert node.read(f"claimed/{REL}") == node.read(f"claimed/{REL}")  # the descriptor
    assert b'"rel": "10.1/20.1/coffee shop.csv"' in node.read(f"claimed/{REL}")
    assert node.status()["counts"]["claimed"] == 1


def test_second_claim_is_refused(node: EngineNode) -> None:
    assert node.claim(REL) == 0
    assert node.claim(REL) == errno.ENOENT


def test_claim_race_lost_after_both_looked_the_name_up(node: EngineNode) -> None:
    """Two workers resolved pending/REL (the kernel caches the name); the second rename reaches
    the daemon after the first and must fail, not claim twice."""

    async def race() -> list[int]:
        tile = await node.resolve("pending/10.1/20.1")
        claimed = await node.resolve("claimed/10.1/20.1")
        name = b"coffee shop.csv"
        for _ in range(2):
            await node.ops.lookup(tile, name, node.ctx)
        codes = []
        for _ in range(2):
            try:
                await node.ops.rename(tile, name, claimed, name, 0, node.ctx)
                codes.append(0)
            except pyfuse3.FUSEError as e:
                codes.append(e.errno)
        return codes

    assert node.run(race) == [0, errno.ENOENT]
    assert node.ls("claimed/10.1/20.1") == ["coffee shop.csv"]


def test_release_returns_the_task_by_rm_or_mv(node: EngineNode) -> None:
    assert node.claim(REL) == 0
    assert node.claim(OTHER) == 0
    assert node.release(REL) == 0
    assert node.ls("pending/10.1/20.1") == ["coffee shop.csv"]
    assert node.release(OTHER, by_mv=True) == 0
    assert node.ls("pending/10.1/20.1") == ["coffee shop.csv", "plumber.csv"]
    assert node.ls("claimed") == []
    assert node.release(REL) == errno.ENOENT


def test_renew_extends_the_lease(node: EngineNode, clock: FakeClock) -> None:
    assert node.claim(REL) == 0
    clock.advance(LEASE - 1)
    assert node.renew(REL) == 0
    assert node.stat(f"claimed/{REL}").mtime_ns == clock.time_ns()  # ls -l shows the renewal
    clock.advance(LEASE - 1)
    assert node.expire() == []
    assert node.ls("claimed/10.1/20.1") == ["coffee shop.csv"]
    assert node.renew(OTHER) == errno.ENOENT  # not claimed


def test_expired_claim_returns_to_pending(node: EngineNode, clock: FakeClock) -> None:
    assert node.claim(REL) == 0
    clock.advance(LEASE - 0.5)
    assert node.expire() == []
    clock.advance(0.5)
    assert node.expire() == [REL]
    assert node.ls("claimed") == []
    assert node.ls("pending/10.1/20.1") == ["coffee shop.csv", "plumber.csv"]
    assert node.renew(REL) == errno.ENOENT
    assert node.status()["counts"]["claimed"] == 0


def test_claims_of_unplanned_or_done_tasks_are_refused(node: EngineNode) -> None:
    assert node.claim("10.0/20.1/plumber.csv") == errno.ENOENT  # a hole in the plan
    assert node.claim("10.2/20.2/plumber.csv") == errno.ENOENT  # a tile not planned
    assert node.direct_write(REL, b"name\nx\n") == 0
    assert node.claim(REL) == errno.ENOENT


def test_descriptors_are_read_only(node: EngineNode) -> None:
    assert node.claim(REL) == 0

    async def write_open() -> int:
        try:
            await node.ops.open(await node.resolve(f"claimed/{REL}"), 1, node.ctx)
        except pyfuse3.FUSEError as e:
            return e.errno
        return 0

    assert node.run(write_open) == errno.EPERM
    assert node.unlink(f"pending/{OTHER}") == errno.EPERM  # claim it with mv


def test_mkdir_of_a_plan_dir_takes_no_kernel_reference(node: EngineNode) -> None:
    """`mkdir -p done/LAT/LON` answers EEXIST: the kernel gets no entry from that answer and will
    never forget one, so the daemon must not count the directory as held by the kernel (a held
    name costs an invalidation on every later change)."""
    from fusefs.fuse import inodes

    async def mkdir() -> tuple[int, int]:
        parent = await node.resolve("done/10.1")
        try:
            await node.ops.mkdir(parent, b"20.1", 0o755, node.ctx)
        except pyfuse3.FUSEError as e:
            return e.errno, parent
        return 0, parent

    code, parent = node.run(mkdir)
    assert code == errno.EEXIST
    tile = node.run(node.ops._lookup, parent, b"20.1").st_ino
    assert not node.ops.kcache.held(tile)
    assert inodes.split(tile)[0] is inodes.Kind.TILE
