# layer: engine
"""The fleet seen from any node, from what the bucket already holds: segments and leases.

Every window, the fleet's node manifests are merged into one segment whose header counts the
lines each worker uploaded (`workers`, factlog.py / model/segment.py), and workers hold lease
objects `claims/...` whose body names them (leases.py). So without a coordinator and without
listing `scraped-tiles/`:

- last seen: the end of the newest window in which it uploaded, and its leases' last writes;
- tasks done: its counts in the segments, in the last 10 minutes and overall;
- live leases: its leases that have not expired (server time).

Cost: a GET of `.missionfs/protocol.json` (the window length), one LIST of `segments/` and of
the leases, one GET per segment not counted before (about one per window elapsed since the
last look), one GET per worker's lease body; never one per manifest or per worker. Segments are
pruned from the bucket (older than the oldest checkpoint), so "overall" counts what this node
has seen: the counts of the segments read are kept in STATE/fleet-manifests.json (per segment
while it is in the bucket, then summed per worker), and a node that starts watching late sees
the work since the oldest segment still in the bucket (`since` in the answer).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusefs.engine.leases import GRACE, LeaseBook
from fusefs.model import segment as sg
from fusefs.objects.s3store import S3Store

RECENT = 600.0  # "tasks done in the last 10 minutes"


@dataclass
class Counted:
    """What this node has counted: the segments still in the bucket, one entry each (so they
    are not read again: key -> [[worker, ms, n], ...]), and per worker the sum of those pruned
    since (so the file stays as small as the bucket's segments/, however long the mission)."""

    segments: dict[str, list[list[Any]]] = field(default_factory=dict)
    pruned: dict[str, list[int]] = field(default_factory=dict)  # worker -> [n, first, last ms]

    def per_worker(self) -> list[tuple[str, int, int, int]]:
        """(worker, first ms, last ms, tasks) of each segment's count and of each pruned sum."""
        out = [(w, ms, ms, n) for rows in self.segments.values() for w, ms, n in rows]
        out += [(w, first, last, n) for w, (n, first, last) in self.pruned.items()]
        return out


def _load_cache(path: Path) -> Counted:
    try:
        data = json.loads(path.read_text())
        return Counted(dict(data["segments"]), dict(data["pruned"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Counted()


def _save_cache(path: Path, counted: Counted) -> None:
    tmp = path.with_name(path.name + ".tmp")
    body = {"segments": counted.segments, "pruned": counted.pruned}
    try:
        tmp.write_text(json.dumps(body, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state dir: the next look reads the segments again


def count_segments(
    s3: S3Store, cache_path: Path | None, parallel: int = 16
) -> tuple[Counted, int, int]:
    """Every segment listed now or counted before; how many were listed and read now."""
    counted = _load_cache(cache_path) if cache_path else Counted()
    settings = s3.read_protocol() or {}
    found = settings.get("window")
    width = float(found) if isinstance(found, int | float) and found > 0 else 0.0
    windows = list(s3.segment_windows()) if width else []
    listed = {s3.segment_key(w): w for w in windows}
    new = [(key, w) for key, w in listed.items() if key not in counted.segments]

    def rows(item: tuple[str, int]) -> list[list[Any]]:
        w = item[1]
        got = s3.get_segment(w)
        try:
            seg = sg.decode(got[0], w) if got is not None else None
        except sg.CorruptSegment:
            seg = None  # counted as nothing; its facts reach everyone again (factlog.py)
        ms = int(sg.window_end(w, width) * 1000)
        return [[worker, ms, n] for worker, n in (seg.workers if seg else {}).items() if n]

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for (key, _), got in zip(new, pool.map(rows, new), strict=True):
            counted.segments[key] = got
    gone = [k for k in counted.segments if k not in listed]
    for key in gone:  # pruned from the bucket: keep only their sums
        for worker, ms, n in counted.segments.pop(key):
            total, first, last = counted.pruned.get(worker, [0, ms, ms])
            counted.pruned[worker] = [total + n, min(first, ms), max(last, ms)]
    if cache_path and (new or gone):
        _save_cache(cache_path, counted)
    return counted, len(listed), len(new)


def fleet(
    s3: S3Store,
    cache_path: Path | None,
    *,
    lease_seconds: float,
    silent_after: float,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Every worker seen in the bucket, with its pace and share (see the module docstring)."""
    book = LeaseBook(s3, "missionfs-fleet-view", lease_seconds)
    live = book.live()  # every chunk; also sets the server clock offset
    t = now() + book.offset
    segments, listed, read = count_segments(s3, cache_path)
    workers: dict[str, dict[str, Any]] = {}

    def entry(w: str) -> dict[str, Any]:
        return workers.setdefault(
            w, {"worker": w, "last_seen": 0.0, "done_recent": 0, "done": 0, "live_leases": 0}
        )

    rows = segments.per_worker()
    for worker, _first, last, n in rows:
        e = entry(worker)
        e["done"] += n
        e["last_seen"] = max(e["last_seen"], last / 1000)
        if last / 1000 >= t - RECENT:
            e["done_recent"] += n
    for lease in live:
        e = entry(lease.worker)
        e["live_leases"] += 1
        _, seconds = book._bodies.get(lease.etag, (lease.worker, lease_seconds))
        e["last_seen"] = max(e["last_seen"], lease.expires - GRACE - seconds)
    total = sum(e["done"] for e in workers.values())
    for e in workers.values():
        e["rate_per_minute"] = round(e["done_recent"] / RECENT * 60, 2)
        e["share"] = round(e["done"] / total, 4) if total else 0.0
        e["seconds_since_seen"] = round(max(0.0, t - e["last_seen"]), 1)
        e["silent"] = e["seconds_since_seen"] > silent_after
        e["last_seen"] = round(e["last_seen"], 3)
    since = min((first for _, first, _, _ in rows), default=None)
    return {
        "now": round(t, 3),
        "workers": sorted(workers.values(), key=lambda e: (-e["done"], e["worker"])),
        "done": total,
        "done_recent": sum(e["done_recent"] for e in workers.values()),
        "rate_per_minute": round(sum(e["done_recent"] for e in workers.values()) / RECENT * 60, 2),
        "live_leases": len(live),
        "since": round(since / 1000, 3) if since is not None else None,
        "segments_listed": listed,
        "segments_read": read,
        "requests": dict(s3.requests),
    }
