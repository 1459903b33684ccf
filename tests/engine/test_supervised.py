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


def test_a_reconnection_asks_for_the_bucket_only(
    make_node: Callable[..., EngineNode], bucket: RecordingStore
) -> None:
    """The self-test (bucket, conditional create, checksum: six requests) runs once; after a
    503 SlowDown or an outage a reconnection is one HEAD of the bucket. In the simulator at
    N = 1,000 the self-test at every SlowDown was 17 of 90 requests per task."""
    node = make_node(bucket=bucket)
    node.refresh()
    sync = node.sync
    assert sync.conditional is not None
    sync.went_offline("503 SlowDown")
    mark = len(bucket.log)
    assert node.run(sync.connect)
    assert [kind for kind, _ in bucket.since(mark)] == ["HEAD"]
    assert sync.online
