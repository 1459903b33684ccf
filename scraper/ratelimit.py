"""A thread-safe request spacer: one limit per process, shared by all its workers.

Politeness is per client, not per worker: 16 threads of one process together send at most
`rate` requests per second, and a 429 pauses all of them, not just the thread that saw it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .source import wait_or_stop


class RateLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError(f"rate {rate}: must be >= 0 (0 = unlimited)")
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0  # earliest start of the next request slot
        self._paused_until = 0.0

    def acquire(self, stop: threading.Event) -> None:
        """Block until this caller may send one request (slots are handed out in call order)."""
        while True:
            with self._lock:
                now = self._clock()
                slot = max(now, self._next, self._paused_until)
                self._next = slot + self.interval
            wait_or_stop(stop, slot - self._clock())
            with self._lock:
                if self._clock() >= self._paused_until:  # not paused while we waited
                    return

    def pause(self, seconds: float) -> None:
        """No request from this process for `seconds` (the server said we are over quota)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
