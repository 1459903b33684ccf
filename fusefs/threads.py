"""Blocking calls off the trio thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking S3 call in a worker thread; on shutdown it is abandoned, not awaited (every
    S3 effect here is idempotent: an upload whose result is lost is redone at next start)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
