"""The small interface every source implements, and the errors a worker acts on."""

from __future__ import annotations

import threading
from typing import Protocol

from .schema import Place, TaskInfo


class SourceError(Exception):
    """The source could not produce the rows of a task (after its own retries); one line."""


class Stopped(Exception):
    """The worker was asked to stop while the source was waiting (rate limit or backoff)."""


class Source(Protocol):
    """Rows for one task. Implementations are shared by all worker threads of a process."""

    name: str
    attribution: str | None  # printed with the summary, e.g. the ODbL notice for OSM data

    def fetch(self, task: TaskInfo, stop: threading.Event) -> list[Place]:
        """All rows of the task, or raise SourceError (never partial data: a witness is final)."""
        ...


def wait_or_stop(stop: threading.Event, seconds: float) -> None:
    """Sleep that ends early, with Stopped, when the worker is told to stop."""
    if seconds > 0 and stop.wait(seconds):
        raise Stopped()
    if stop.is_set():
        raise Stopped()
