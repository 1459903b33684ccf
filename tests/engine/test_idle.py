"""An idle mount sleeps: the daemon's housekeeping loops (lease expiry, journal fsync, index
snapshots, batched directory fsyncs) park while they have nothing to do instead of waking every
second, and still do their work on time once there is some (fusefs/engine/wakeup.py).

Virtual time (trio's MockClock, autojump): an hour of idling passes at once, and every task
step of the loops is counted by a trio instrument."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from fusefs.fuse.daemon import IDLE_SECONDS, SNAPSHOT_EVERY_SECONDS
from tests.engine.driver import LEASE, EngineNode

REL = "10.1/20.0/coffee shop.csv"
BODY = b"name,n\nespresso,1\n"


class Steps(trio.abc.Instrument):
    """Task steps of the daemon's loops, by loop (a step is one wake-up of the task)."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def total(self) -> int:
        return sum(self.steps.values())


def run_with_loops(
    node: EngineNode,
    body: Callable[[Steps], Awaitable[None]],
    *,
    batched: bool = False,
    jump_after: float = 0.0,
) -> Steps:
    """`body(steps)` beside the daemon's housekeeping loops, in virtual time. `jump_after`:
    real seconds of quiet before the clock jumps (the loops' fsyncs run in worker threads,
    which a jump at once would not wait for)."""
    steps = Steps()
    node.daemon.committer.batched = batched

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node.daemon.housekeeping(nursery)
            await body(steps)
            nursery.cancel_scope.cancel()

    clock = trio.testing.MockClock(autojump_threshold=jump_after)
    trio.run(main, clock=clock, instruments=[steps])
    return steps


async def claim(node: EngineNode, rel: str) -> None:
    sp, name = await node._parent(f"pending/{rel}")
    await node._lookup(sp, name)
    dp, _ = await node._parent(f"claimed/{rel}")
    await node.ops.rename(sp, os.fsencode(name), dp, os.fsencode(name), 0, node.ctx)


async def commit(node: EngineNode, rel: str, body: bytes) -> None:
    assert await node._create("tmp/w1", body) == 0
    sp, dp_rel = await node._parent("tmp/w1"), await node._parent(f"done/{rel}")
    await node.ops.rename(sp[0], b"w1", dp_rel[0], os.fsencode(dp_rel[1]), 0, node.ctx)


def test_an_idle_hour_wakes_the_loops_a_few_times_not_every_second(node: EngineNode) -> None:
    async def idle(steps: Steps) -> None:
        await trio.sleep(3600)

    steps = run_with_loops(node, idle, batched=True)
    # Before: expiry, journal and snapshot loops each woke every second (10,800 steps in the
    # hour, plus 14,400 of the batched directory fsync loop); now each wakes once a minute.
    per_loop = 3600 / IDLE_SECONDS + 2
    assert steps.total() <= 4 * 2 * per_loop, steps.steps


def test_a_claim_wakes_the_expiry_loop_and_its_lease_still_ends_on_time(
    node: EngineNode,
) -> None:
    seen: dict[str, Any] = {}

    async def work(steps: Steps) -> None:
        await trio.sleep(600)  # idle: the expiry loop is parked
        await claim(node, REL)
        task = node.state.space.parse_rel(REL)
        assert task in node.state.claimed and node.ws.committer.journal.dirty
        await trio.sleep(1.5)
        seen["journal_dirty"] = node.ws.committer.journal.dirty  # the claim's line fsync'd
        node.clock.advance(LEASE + 1)  # the lease (on the wall clock of leases) is over
        await trio.sleep(2)  # parked for IDLE_SECONDS, it would miss this
        seen["claimed"] = set(node.state.claimed)

    run_with_loops(node, work, jump_after=0.1)
    assert seen["claimed"] == set(), "the lease did not end within 2 s of its expiry"
    assert seen["journal_dirty"] is False, "the claim's journal line was not fsync'd in 2 s"


def test_a_commit_after_idling_is_snapshotted_and_its_directory_synced(
    node: EngineNode,
) -> None:
    seen: dict[str, Any] = {}

    async def work(steps: Steps) -> None:
        await trio.sleep(10 * SNAPSHOT_EVERY_SECONDS)  # idle, and no snapshot for that long
        await claim(node, REL)
        await commit(node, REL, BODY)
        seen["appended"] = node.ws.index.appended
        seen["dirty_dirs_before"] = set(node.ws.store.dirty_dirs)
        await trio.sleep(1)  # the batched directory fsync: within DIR_SYNC_SECONDS
        seen["dirty_dirs"] = set(node.ws.store.dirty_dirs)
        # The last snapshot (none) is older than SNAPSHOT_EVERY_SECONDS: a woken loop takes
        # one at once; a loop left parked would wait for its timeout.
        await trio.sleep(2)
        seen["appended_later"] = node.ws.index.appended

    run_with_loops(node, work, batched=True, jump_after=0.1)
    assert seen["appended"] >= 1  # the commit's index line
    assert seen["dirty_dirs"] == set(), "the commit's directory was not fsync'd within 1 s"
    assert seen["appended_later"] == 0, "no index snapshot within 3 s of the commit"


def test_a_journal_line_alone_wakes_the_fsync_loop_from_any_thread(node: EngineNode) -> None:
    """A journal line with no state change (a note of the sync engine, a segment's lines
    written by a worker thread) is fsync'd about a second later, not at the loop's timeout."""
    journal = node.ws.committer.journal
    seen: dict[str, Any] = {}

    async def work(steps: Steps) -> None:
        await trio.sleep(600)
        assert not journal.dirty
        journal.append("note", REL, why="trio thread")
        await trio.sleep(2)
        seen["trio"] = journal.dirty
        await trio.sleep(600)
        await trio.to_thread.run_sync(lambda: journal.append_many("remote", [REL]))
        await trio.sleep(2)
        seen["thread"] = journal.dirty

    run_with_loops(node, work, jump_after=0.1)
    assert seen == {"trio": False, "thread": False}, seen
