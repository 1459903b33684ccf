"""fusefs/fuse/notifier.py: the names queued in one trio tick cost one wake-up of the sending
thread, under load a hand-off waits at most LINGER_SECONDS for later names, an error sending
one name is logged and the others still go, and the unmount never waits on a stuck thread.

`pyfuse3.invalidate_entry` (the blocking write to /dev/fuse) is replaced by a recorder: no
kernel here. Before this module, every name was a `queue.put` for pyfuse3's notify thread,
which woke up (and took the GIL) once per name.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pyfuse3
import pytest
import trio
import trio.testing

from fusefs.fuse.notifier import LINGER_SECONDS, Notifier
from tests.support.mounts import wait_for

Sent = list[tuple[int, bytes, str]]  # (parent, name, the sending thread's name)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    got: Sent = []

    def record(parent: int, name: bytes, deleted: int = 0) -> None:
        got.append((parent, name, threading.current_thread().name))

    monkeypatch.setattr(pyfuse3, "invalidate_entry", record)
    return got


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    n = Notifier()
    yield n
    n.close(timeout=5.0)


def run_with(n: Notifier, body: Callable[[trio.testing.MockClock], Awaitable[None]]) -> None:
    """Run `n.run` in a trio loop on a mock clock (moved only by the test) around `body`."""

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n.run)
            await trio.testing.wait_all_tasks_blocked()  # `run` parked: nothing to hand over
            await body(clock)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock())


def test_names_queued_in_one_tick_cost_one_wakeup(notifier: Notifier, sent: Sent) -> None:
    names = [f"task {i}.csv".encode() for i in range(50)]

    async def body(clock: trio.testing.MockClock) -> None:
        for name in names:  # one request's worth of changes, or many in one tick
            notifier.add(7, name)
        await trio.testing.wait_all_tasks_blocked()
        wait_for(lambda: notifier.sent == len(names), 10, "the names sent")

    run_with(notifier, body)
    assert [(p, name) for p, name, _ in sent] == [(7, name) for name in names]
    assert {thread for _, _, thread in sent} == {"missionfs-invalidate"}  # never the trio one
    assert notifier.handoffs == 1 and notifier.wakeups == 1


def test_under_load_a_hand_off_waits_for_the_linger_then_takes_every_name(
    notifier: Notifier, sent: Sent
) -> None:
    """A name after a quiet spell goes at once; the names that follow within LINGER_SECONDS of
    that hand-off wait for its end and go together; then quiet again: at once."""

    async def body(clock: trio.testing.MockClock) -> None:
        notifier.add(1, b"a")
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.handoffs == 1  # the mount was quiet: no wait
        wait_for(lambda: notifier.sent == 1, 10, "a sent")
        notifier.add(1, b"b")
        clock.jump(LINGER_SECONDS / 2)
        notifier.add(1, b"c")
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.handoffs == 1 and notifier.sent == 1  # b and c wait: under load
        clock.jump(LINGER_SECONDS / 2)
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.handoffs == 2  # the bound: LINGER_SECONDS after the last hand-off
        wait_for(lambda: notifier.sent == 3, 10, "b and c sent")
        clock.jump(1.0)
        notifier.add(1, b"d")
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.handoffs == 3
        wait_for(lambda: notifier.sent == 4, 10, "d sent")

    run_with(notifier, body)
    assert [name for _, name, _ in sent] == [b"a", b"b", b"c", b"d"]
    assert notifier.wakeups == 3


def test_names_lingering_at_cancellation_are_still_handed_over(
    notifier: Notifier, sent: Sent
) -> None:
    async def body(clock: trio.testing.MockClock) -> None:
        notifier.add(1, b"a")
        await trio.testing.wait_all_tasks_blocked()
        notifier.add(1, b"b")  # lingers until the cancellation below
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.handoffs == 1

    run_with(notifier, body)
    wait_for(lambda: notifier.sent == 2, 10, "b sent")
    assert [name for _, name, _ in sent] == [b"a", b"b"]


def test_an_error_is_logged_and_the_next_names_still_go(
    notifier: Notifier, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside the mount's trio loop (no `run`: a thread, a test) a name is handed over at
    once. ENOENT (the kernel held no such name) is not an error; anything else is logged."""
    got: list[bytes] = []

    def flaky(parent: int, name: bytes, deleted: int = 0) -> None:
        if name == b"gone":
            raise FileNotFoundError(errno.ENOENT, "no such entry")
        if name == b"bad":
            raise OSError(errno.EIO, "write to /dev/fuse failed")
        if name == b"bug":
            raise RuntimeError("a bug")
        got.append(name)

    monkeypatch.setattr(pyfuse3, "invalidate_entry", flaky)
    with caplog.at_level(logging.ERROR, logger="missionfs"):
        for name in (b"a", b"gone", b"bad", b"b", b"bug", b"c"):
            notifier.add(3, name)
        wait_for(lambda: notifier.sent == 6, 10, "every name tried")
    assert got == [b"a", b"b", b"c"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "b'bad'" in errors[0] and "b'bug'" in errors[1]


def test_the_unmount_does_not_wait_for_a_thread_stuck_in_the_kernel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel may keep an invalidation waiting while a request holds the directory's lock:
    `close` gives up on the thread after its timeout (a daemon thread: the exit goes on), and
    nothing is sent after it (pyfuse3's session is destroyed next)."""
    entered, release = threading.Event(), threading.Event()
    got: list[bytes] = []

    def stuck(parent: int, name: bytes, deleted: int = 0) -> None:
        if name == b"stuck":
            entered.set()
            release.wait(30)
        got.append(name)

    monkeypatch.setattr(pyfuse3, "invalidate_entry", stuck)
    n = Notifier()
    n.add(1, b"stuck")
    n.add(1, b"after")  # handed over while the first waits
    assert entered.wait(10)
    thread = n._thread
    assert thread is not None and thread.daemon
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="missionfs"):
        n.close(timeout=0.2)
    assert time.monotonic() - t0 < 5.0
    assert any("stuck" in r.getMessage() for r in caplog.records)
    n.add(1, b"late")  # after the unmount: dropped, never sent
    release.set()
    wait_for(lambda: not thread.is_alive(), 10, "the thread to end")
    assert got == [b"stuck"]
