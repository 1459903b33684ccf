# layer: engine
"""The mission's pace and ETA from the tail of the journal: tasks finished in the last minutes.

Finished means a `commit` here or a `remote` fact learned from the bucket (other workers'
results), so on a fleet node the rate is the fleet's as this node sees it. Only the journal's
last WINDOW seconds are read, backwards from its end, so the cost follows the recent activity,
not the journal's size. A node that just learned a backlog from a full listing sees a burst; the
window smooths the usual case, not that one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .journal import journal_files

WINDOW = 600.0
BLOCK = 1 << 16
FINISHED = ("commit", "remote")
CACHE_SECONDS = 2.0  # a mount's status file may be read often: count at most this often
_cache: dict[Path, tuple[float, int]] = {}


def _lines_backwards(path: Path) -> Any:
    """Yield the lines of a file from the last to the first, reading 64 KiB blocks."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
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


def finished_since(journal_dir: Path, since: float) -> int:
    """How many tasks the journal says were finished at or after `since` (epoch seconds)."""
    n = 0
    for path in reversed(journal_files(journal_dir)):
        for line in _lines_backwards(path):
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if e.get("t", 0) < since:
                return n
            if e.get("ev") in FINISHED and not e.get("recovered"):
                n += 1
    return n


def pace(journal_dir: Path, counts: dict[str, int], now: float | None = None) -> dict[str, Any]:
    """{"rate_per_minute", "window_seconds", "eta_seconds" (None: no recent progress)}."""
    now = time.time() if now is None else now
    cached = _cache.get(journal_dir)
    if cached is not None and 0 <= now - cached[0] < CACHE_SECONDS:
        done = cached[1]
    else:
        try:
            done = finished_since(journal_dir, now - WINDOW)
        except OSError:
            done = 0
        _cache[journal_dir] = (now, done)
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
