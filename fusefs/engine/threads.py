"""Blocking calls off the trio thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import trio

from fusefs.model.errors import S3ConfigError, S3Unavailable

T = TypeVar("T")
R = TypeVar("R")

S3_THREADS = 64  # S3 calls have threads of their own: a hung S3 never starves the commit path
_s3_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("s3_limiter")


def s3_limiter() -> trio.CapacityLimiter:
    """This trio run's limiter for S3 threads (the default one, 40 threads, serves fsyncs and
    links: requests waiting on a silent S3 must not take all its threads)."""
    try:
        return _s3_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(S3_THREADS)
        _s3_limiter.set(limiter)
        return limiter


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking S3 call in a worker thread; on shutdown it is abandoned, not awaited (every
    S3 effect here is idempotent: an upload whose result is lost is redone at next start)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=s3_limiter())


async def blocking_each(
    fn: Callable[[T], R], items: Iterable[T], limit: int, done: Callable[[T, R], None]
) -> list[Exception]:
    """`fn(item)` for every item in worker threads, `limit` at a time; `done(item, result)` on
    the trio thread as each answers. Returns the S3 errors of those that failed, never an
    exception group (the loops catch S3 errors by class): the caller raises or logs them."""
    limiter = trio.CapacityLimiter(limit)
    errors: list[Exception] = []

    async def one(item: T) -> None:
        try:
            async with limiter:
                result = await blocking(fn, item)
        except (S3Unavailable, S3ConfigError) as e:
            errors.append(e)
            return
        done(item, result)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    return errors
