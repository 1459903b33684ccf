"""The sync engine's background loops outlive an error nobody expected: it is logged and the
loop starts again (SyncEngine._supervised). Before, such an error ended the engine's nursery
and the daemon with it (the simulator at N = 1,000 found one: an ExceptionGroup)."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from tests.engine.driver import EngineNode, RecordingStore


def test_a_loop_that_fails_unexpectedly_is_restarted(
    make_node: Callable[..., EngineNode], bucket: RecordingStore
) -> None:
    node = make_node(bucket=bucket)
    sync = node.sync
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ExceptionGroup("from a nursery", [KeyError("a bug")])
        await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(60):
            await sync._supervised(flaky)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) == 3
    assert sync.counters.errors == 2 and "from a nursery" in sync.counters.last_error
