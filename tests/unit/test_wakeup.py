"""fusefs/engine/wakeup.py: a parked loop wakes for every poke made after its check, from the
trio thread or from a worker thread, and a journal rotated away is fsync'd by the next sync."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

import fusefs.statedir.journal as journal_mod
from fusefs.engine.wakeup import Wakeup
from fusefs.statedir.journal import Journal


def _woken_after(poke_from_thread: bool) -> float:
    """Virtual seconds a loop parks when a poke lands between its check and its park."""

    async def main() -> float:
        w = Wakeup()
        w.bind()
        if poke_from_thread:  # a worker thread pokes while the loop is between check and park
            t = threading.Thread(target=w.poke)
            t.start()
            t.join()
        start = trio.current_time()
        await w.wait(60.0)
        return trio.current_time() - start

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_poke_from_a_thread_before_the_park_still_wakes_the_loop() -> None:
    # Before: a poke from a thread that found no loop parked was dropped: 60 s asleep.
    assert _woken_after(poke_from_thread=True) == 0.0


def test_a_loop_with_no_poke_sleeps_its_timeout() -> None:
    assert _woken_after(poke_from_thread=False) == 60.0


def test_a_poke_on_the_trio_thread_wakes_every_parked_loop() -> None:
    async def main() -> list[float]:
        w = Wakeup()
        w.bind()
        woke: list[float] = []

        async def loop() -> None:
            await w.wait(60.0)
            woke.append(trio.current_time())

        async with trio.open_nursery() as n:
            n.start_soon(loop)
            n.start_soon(loop)
            await trio.sleep(5)
            w.poke()
        return woke

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == [5.0, 5.0]


def test_a_rotated_journal_is_fsynced_by_the_next_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "ROTATE_BYTES", 200)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(journal_mod.os, "fsync", fsync)
    j = Journal(tmp_path / "journal", "w")
    j.append("note", "a/b/c.csv", pad="x" * 200)  # fills the first file
    first = j._file
    assert first is not None
    first_fd = first.fileno()
    j.append("note", "a/b/d.csv")  # rotates: the first file's lines are not fsync'd yet
    assert len(list((tmp_path / "journal").glob("journal-*.jsonl"))) == 2
    assert not first.closed  # kept open for the fsync (the appending thread never waits)
    j.sync()
    assert first_fd in synced and first.closed  # before: closed at rotation, never fsync'd
    j.close()
