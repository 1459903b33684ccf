"""A proof that a node's heavy work leaves the trio thread free, without sleeps or timing.

The test hooks a blocking function of that work (run in a worker thread) to call `hold()`,
which waits until another trio task, a user of the mount, has run TURNS more times. That
task also acts once meanwhile (`meanwhile`: a commit, the daemon's periodic save...), and
every `facts.add_remote` records its thread: the state must change on the trio thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from pyroaring import BitMap

from tests.engine.driver import EngineNode

TURNS = 100  # turns the other task must run while the worker thread is held


class LoopProbe:
    def __init__(self, node: EngineNode, meanwhile: Callable[[], Awaitable[object]]) -> None:
        self.node = node
        self.meanwhile = meanwhile
        self.turns = 0
        self.active = False  # inside the step wrapped by `timed`
        self.during: list[int] = []  # turns of the other task while that step ran
        self.held_at: list[int] = []  # its turn count when the worker thread was held
        self.held: list[tuple[bool, bool]] = []  # (from a worker thread, the loop ran meanwhile)
        self.changed_from: set[str] = set()  # threads that called facts.add_remote
        self.acted: list[object] = []  # what `meanwhile` returned
        self._go_on = threading.Event()

    def hold(self) -> None:
        """Called by the hooked blocking function: wait (in a worker thread only: on the trio
        thread it would wait for ever) until the other task has run TURNS more times."""
        if threading.current_thread() is threading.main_thread():
            self.held.append((False, False))
            return
        self.held_at.append(self.turns)
        self.held.append((True, self._go_on.wait(timeout=60)))  # set by the other task

    def timed(self, step: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`step`, counting the other task's turns while it runs (and marking it `active`)."""

        async def wrapped(*args: Any) -> Any:
            self.active, before = True, self.turns
            try:
                return await step(*args)
            finally:
                self.active = False
                self.during.append(self.turns - before)

        return wrapped

    def watch_changes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        facts = self.node.sync.facts
        real_add = facts.add_remote

        def add_remote(tasks: BitMap) -> None:
            self.changed_from.add(threading.current_thread().name)
            real_add(tasks)

        monkeypatch.setattr(facts, "add_remote", add_remote)

    async def _other_task(self) -> None:
        while True:
            await trio.lowlevel.checkpoint()
            self.turns += 1
            if self.held_at and not self.acted:
                self.acted.append(await self.meanwhile())
            if self.held_at and self.turns - self.held_at[0] >= TURNS:
                self._go_on.set()

    def run(self, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work` on the node's trio loop beside the other task."""

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._other_task)
                await work()
                nursery.cancel_scope.cancel()

        self.node.run(main)

    def assert_loop_ran(self) -> None:
        assert self.held == [(True, True)], self.held
        assert self.during and self.during[0] >= TURNS
        assert self.changed_from == {threading.main_thread().name}
