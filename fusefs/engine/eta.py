# layer: engine
"""The mission's pace and ETA from the tail of the journal: tasks finished in the last minutes.

Finished means a `commit` here or a `remote` fact learned from the bucket (other workers'
results), so on a fleet node the rate is the fleet's as this node sees it. The facts of a
checkpoint loaded at start (one `checkpoint` line) are history, not pace: not counted. The first look reads the
journal's last WINDOW seconds backwards from its end, later ones only what was appended since,
so the cost follows the activity, not the journal's size. A node that just learned a backlog from a full listing sees a burst; the
window smooths the usual case, not that one.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusefs.statedir.journal import journal_files

WINDOW = 600.0
BLOCK = 1 << 16
FINISHED = ("commit", "remote")


class _Tail:
    """The finish times of the last WINDOW seconds of one journal, kept up to date by reading
    only what was appended since the last look (a mount's status file may be read often, on
    the FUSE thread)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0  # just after the last complete line read
        self.times: deque[float] = deque()

    def update(self, journal_dir: Path, since: float) -> int:
        files = journal_files(journal_dir)
        last = files[-1] if files else None
        if last is None:
            self.path, self.offset, self.times = None, 0, deque()
            return 0
        size = last.stat().st_size
        if last != self.path or size < self.offset:  # first look, or the journal rotated
            self.path, self.offset = last, _end_of_last_line(last, size)
            self.times = deque(sorted(_finished_since(files, since, self.offset)))
        elif size > self.offset:
            with open(last, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.splitlines():
                t = _finish_time(line)
                if t is not None:
                    self.times.append(t)
        while self.times and self.times[0] < since:
            self.times.popleft()
        return len(self.times)


_tails: dict[Path, _Tail] = {}


def _finish_time(line: bytes) -> float | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None  # a torn line
    if e.get("ev") in FINISHED and not e.get("recovered"):
        return float(e.get("t", 0))
    return None


def _end_of_last_line(path: Path, size: int) -> int:
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(BLOCK, pos)
            f.seek(pos - step)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i + 1
            pos -= step
    return 0


def _lines_backwards(path: Path, end: int) -> Iterator[bytes]:
    """The lines of a file before byte `end`, from the last to the first, in 64 KiB blocks."""
    with open(path, "rb") as f:
        pos = end
        rest = b""
        while pos > 0:
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            lines = (f.read(step) + rest).split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line
        if rest:
            yield rest


def _finished_since(files: list[Path], since: float, end: int) -> list[float]:
    """Finish times at or after `since`, reading the journal backwards from `end` of the last
    file: the cost follows the recent activity, not the journal's size."""
    out: list[float] = []
    for i, path in enumerate(reversed(files)):
        stop = end if i == 0 else path.stat().st_size
        for line in _lines_backwards(path, stop):
            try:
                t = float(json.loads(line).get("t", 0))
            except (ValueError, AttributeError, TypeError):
                continue
            if t < since:
                return out
            ft = _finish_time(line)
            if ft is not None:
                out.append(ft)
    return out


def finished_since(journal_dir: Path, since: float) -> int:
    """How many tasks the journal says were finished at or after `since` (epoch seconds)."""
    tail = _tails.setdefault(journal_dir, _Tail())
    return tail.update(journal_dir, since)


def pace(journal_dir: Path, counts: dict[str, int], now: float | None = None) -> dict[str, Any]:
    """{"rate_per_minute", "window_seconds", "eta_seconds" (None: no recent progress)}."""
    now = time.time() if now is None else now
    try:
        done = finished_since(journal_dir, now - WINDOW)
    except OSError:
        done = 0
    rate = done / WINDOW
    left = max(0, counts.get("intent", 0) - counts.get("done", 0))
    eta = round(left / rate) if rate > 0 and left else (0 if not left else None)
    return {
        "rate_per_minute": round(rate * 60, 2),
        "window_seconds": WINDOW,
        "finished_in_window": done,
        "eta_seconds": eta,
    }


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no progress in the last 10 min)"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
