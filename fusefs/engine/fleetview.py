# layer: engine
"""The fleet seen from any node, from what the bucket already holds: manifests and leases.

Every worker writes `manifests/{ms}-{worker}-{seq}.txt` (one line per witness it created first,
sync.py) and holds lease objects `claims/{chunk}/REL` whose body names it (leases.py). So without
a coordinator and without listing `scraped-tiles/`:

- last seen: the newest of its manifests' times and its leases' last writes;
- tasks done: the lines of its manifests, in the last 10 minutes and overall;
- live leases: its leases that have not expired (server time).

Cost: one LIST of `manifests/` and of all of `claims/` (every chunk: on demand, unlike a
mount's refresh; keys of protocol v1 without a chunk are not counted), one GET per manifest not
counted before and one GET per worker's lease body. Manifests are pruned from the bucket after about 20 minutes,
so "overall" counts what this node has seen: the counts of the manifests read are kept in
STATE/fleet-manifests.json (per manifest while it is in the bucket, then summed per worker),
and a node that starts watching late sees the work since the oldest manifest still in the
bucket (`since` in the answer).
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
from fusefs.objects.s3store import S3Store

RECENT = 600.0  # "tasks done in the last 10 minutes"


def parse_manifest_name(name: str) -> tuple[int, str] | None:
    """`{ms:013d}-{worker}-{seq:08d}.txt` -> (ms, worker); None for anything else."""
    if not name.endswith(".txt"):
        return None
    ms, _, rest = name.removesuffix(".txt").partition("-")
    worker, _, seq = rest.rpartition("-")
    if not ms.isdigit() or not seq.isdigit() or not worker:
        return None
    return int(ms), worker


@dataclass
class Counted:
    """What this node has counted: the manifests still in the bucket, one entry each (so they
    are not read again), and per worker the sum of those pruned since (so the file stays as
    small as the bucket's manifests/, however long the mission runs)."""

    manifests: dict[str, list[Any]] = field(default_factory=dict)  # key -> [worker, ms, n]
    pruned: dict[str, list[int]] = field(default_factory=dict)  # worker -> [n, first, last ms]

    def per_worker(self) -> list[tuple[str, int, int, int]]:
        """(worker, first ms, last ms, tasks) of each manifest and of each pruned sum."""
        out = [(w, ms, ms, n) for w, ms, n in self.manifests.values()]
        out += [(w, first, last, n) for w, (n, first, last) in self.pruned.items()]
        return out


def _load_cache(path: Path) -> Counted:
    try:
        data = json.loads(path.read_text())
        return Counted(dict(data["manifests"]), dict(data["pruned"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Counted()


def _save_cache(path: Path, counted: Counted) -> None:
    tmp = path.with_name(path.name + ".tmp")
    body = {"manifests": counted.manifests, "pruned": counted.pruned}
    try:
        tmp.write_text(json.dumps(body, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state dir: the next look reads the manifests again


def count_manifests(
    s3: S3Store, cache_path: Path | None, parallel: int = 16
) -> tuple[Counted, int]:
    """Every manifest listed now or counted before, and how many were read now (GETs)."""
    counted = _load_cache(cache_path) if cache_path else Counted()
    listed: set[str] = set()
    new: list[tuple[str, int, str]] = []
    for name, key in s3.manifests():
        parsed = parse_manifest_name(name)
        if parsed is not None:
            listed.add(key)
            if key not in counted.manifests:
                new.append((key, *parsed))

    def lines(key: str) -> int:
        body, _ = s3.get(key)
        return sum(1 for line in body.splitlines() if line.strip())

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for (key, ms, worker), n in zip(new, pool.map(lambda k: lines(k[0]), new), strict=True):
            counted.manifests[key] = [worker, ms, n]
    gone = [k for k in counted.manifests if k not in listed]
    for key in gone:  # pruned from the bucket: keep only their sum
        worker, ms, n = counted.manifests.pop(key)
        total, first, last = counted.pruned.get(worker, [0, ms, ms])
        counted.pruned[worker] = [total + n, min(first, ms), max(last, ms)]
    if cache_path and (new or gone):
        _save_cache(cache_path, counted)
    return counted, len(new)


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
    manifests, read = count_manifests(s3, cache_path)
    workers: dict[str, dict[str, Any]] = {}

    def entry(w: str) -> dict[str, Any]:
        return workers.setdefault(
            w, {"worker": w, "last_seen": 0.0, "done_recent": 0, "done": 0, "live_leases": 0}
        )

    rows = manifests.per_worker()
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
        "manifests_read": read,
        "requests": dict(s3.requests),
    }
