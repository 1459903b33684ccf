"""Repeated identical events said once, then counted: bounded logs under a retry loop.

A worker that retries a refused commit as fast as it can made 198,000 refusals in 6 minutes,
one journal line and one log line each (95 MB of journal, 32 MB of log). Now the first of a
run of identical events (same key: path and reason, or the log message) is written at once;
repeats within WINDOW seconds are only counted; the count is written as one line ("... repeated
N times in S s") when the window has passed: at the next repeat, at the daemon's once-a-second
flush, or when the state dir is closed. A sustained flood thus costs one line per key a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

WINDOW = 60.0  # seconds a run of repeats is counted before its count is written
MAX_KEYS = 4096  # distinct keys kept; beyond that every count is written and forgotten


@dataclass
class _Run:
    start: float
    repeats: int = 0


class Coalescer(Generic[K]):
    """`seen(key)` says whether to write the event now; `summary(key, repeats, seconds)` is
    called for the repeats that were only counted."""

    def __init__(
        self,
        summary: Callable[[K, int, float], None],
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.summary = summary
        self.window = window
        self.clock = clock
        self._runs: dict[K, _Run] = {}
        self._lock = threading.Lock()  # log calls may come from worker threads

    def seen(self, key: K) -> bool:
        """True: the first of a run, write it. False: counted (a summary line follows)."""
        now = self.clock()
        due: list[tuple[K, int, float]] = []
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                if len(self._runs) >= MAX_KEYS:
                    due = self._take(now, everything=True)
                self._runs[key] = _Run(now)
                first = True
            elif now - run.start >= self.window:
                # The window passed: its count is written now; a lone event starts afresh.
                first = run.repeats == 0
                if not first:
                    due.append((key, run.repeats + 1, now - run.start))
                self._runs[key] = _Run(now)
            else:
                run.repeats += 1
                first = False
        for k, n, secs in due:
            self.summary(k, n, secs)
        return first

    def flush(self, everything: bool = False) -> None:
        """Write the counts of the runs whose window has passed (all of them at close)."""
        with self._lock:
            due = self._take(self.clock(), everything)
        for k, n, secs in due:
            self.summary(k, n, secs)

    def _take(self, now: float, everything: bool) -> list[tuple[K, int, float]]:
        due = []
        for key, run in list(self._runs.items()):
            if everything or now - run.start >= self.window:
                del self._runs[key]
                if run.repeats:
                    due.append((key, run.repeats, now - run.start))
        return due


def _log_summary(key: tuple[logging.Logger, int, str], repeats: int, seconds: float) -> None:
    logger, level, message = key
    logger.log(level, "%s: repeated %s times in %.0f s", message, f"{repeats:,}", seconds)


LOG_REPEATS: Coalescer[tuple[logging.Logger, int, str]] = Coalescer(_log_summary)


def log_coalesced(logger: logging.Logger, level: int, message: str) -> None:
    """logger.log(level, message), except for repeats of the same message (see above)."""
    if LOG_REPEATS.seen((logger, level, message)):
        logger.log(level, "%s", message)
