# layer: engine
"""Prometheus metrics of a mount: `missionfs mount --metrics 127.0.0.1:9464`.

Off by default. Almost everything is read at scrape time from what the daemon already keeps
for its `status` file (StatusBoard, SyncEngine.info and counters, the digest keeper): a custom
Collector, so the FUSE request path does no metrics work. Three things the status file does not
break down are counted by observers registered only when metrics are on (a dict increment
each), never by patching live objects: refusals by reason (StatusBoard.observe_refusals), claims
by outcome (`Instruments.claim_outcome`, given to the claims service by the daemon's constructor:
engine/claims.py), and S3 requests by kind and outcome (a listener on the S3 stores, fed by
botocore's `response-received` event: every HTTP attempt, retries included, so throttling shows
up even when a retry succeeds; the stores' own `requests` count requests, not attempts).

The HTTP server runs in a thread (prometheus_client's). The flags are parsed in
metricsopts.py (the CLI side, which does not import prometheus_client).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("missionfs")

MAX_REASONS = 32  # distinct refusal-reason labels kept; more are counted as "other"
MAX_TRACKED_QUEUE = 100_000  # queued witnesses whose first-seen time is kept
STATS_PER_SCRAPE = 2_000  # witness mtimes read per scrape for newly queued entries
DIGEST_STATES = ("current", "updating", "incomplete", "off", "not_computed")


def serve(ws: Any, listen: tuple[str, int]) -> tuple[Any, Instruments]:
    """Instrument the workspace and serve /metrics from a thread; returns the HTTP server and
    the instruments (the daemon gives `instruments.claim_outcome` to its claims service).

    OSError (port in use, address not ours) propagates: the caller refuses to mount.
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    collector = MissionCollector(ws)
    registry.register(collector)
    server, _thread = start_http_server(listen[1], addr=listen[0], registry=registry)
    log.info("metrics on http://%s:%d/metrics", listen[0], server.server_address[1])
    return server, collector.instruments


# -- counts the status file does not break down ---------------------------------------------------
def reason_label(reason: str) -> str:
    """A refusal reason as a bounded label: the text before its first ':' or ';' (details such
    as the CSV line or where the bytes were kept vary per refusal), as snake_case."""
    head = re.split(r"[:;]", reason, maxsplit=1)[0]
    return re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_")[:60] or "other"


class Tally:
    """Thread-safe counters keyed by a label tuple (S3 threads and the trio thread write)."""

    def __init__(self, limit: int = 1 << 12) -> None:
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def add(self, *key: str) -> None:
        with self._lock:
            if key not in self._counts and len(self._counts) >= self._limit:
                key = ("other",) * len(key)
            self._counts[key] = self._counts.get(key, 0) + 1

    def items(self) -> list[tuple[tuple[str, ...], int]]:
        with self._lock:
            return sorted(self._counts.items())


def s3_outcome(response: dict[str, Any] | None, parsed: Any, exception: Any) -> str:
    """One HTTP attempt's outcome: ok, not_found, precondition_failed (a lost conditional
    create: normal), throttled (429/503 SlowDown), client_error, server_error, network_error."""
    if exception is not None or response is None:
        return "network_error"
    status = int(response.get("status_code") or 0)
    code = ""
    if isinstance(parsed, dict):
        code = str(parsed.get("Error", {}).get("Code", ""))
    if status == 429 or code in (
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
    ):
        return "throttled"
    if status == 503:
        return "throttled"  # S3's way of saying slow down (and SeaweedFS's when overloaded)
    if status < 400:
        return "ok"
    if status == 404:
        return "not_found"
    if status == 412:
        return "precondition_failed"
    return "server_error" if status >= 500 else "client_error"


class Instruments:
    """The counters of what the status file does not break down, and their observers."""

    def __init__(self) -> None:
        self.refusals = Tally(MAX_REASONS)
        self.claims = Tally()
        self.s3 = Tally()
        self._hooked: list[Any] = []  # stores listened to (the fast one may be the same)

    def install(self, ws: Any) -> None:
        ws.status.observe_refusals(self._refused)
        sync = getattr(ws, "sync", None)
        if sync is not None:
            self._hook_s3(getattr(sync, "s3", None))

    def _refused(self, where: str, reason: str) -> None:
        self.refusals.add(reason_label(reason))

    def claim_outcome(self, outcome: str) -> None:
        """The claims service's observer: "claimed", "restored", "fleet_lease_won",
        "lost_to_another_worker", "fleet_lease_unavailable" or why the task was not pending."""
        self.claims.add(reason_label(outcome))

    def _hook_s3(self, s3: Any) -> None:
        """Count every HTTP attempt of the S3 stores (the background and the fast one) by
        operation and outcome, through the seam's listener (an in-process store has none)."""
        for store in (getattr(s3, "objects", None), getattr(s3, "fast", None)):
            add_listener = getattr(store, "add_listener", None)
            if add_listener is None or store in self._hooked:
                continue
            self._hooked.append(store)

            def received(op: str, response: Any, parsed: Any, exception: Any) -> None:
                self.s3.add(op, s3_outcome(response, parsed, exception))

            add_listener(received)


class QueueAges:
    """Age of the oldest upload-queue entry: a queued witness's file mtime (its commit time)
    when first seen in the queue, kept until it leaves it."""

    def __init__(self, witness_mtime: Callable[[int], float | None]) -> None:
        self.first: dict[int, float] = {}
        self.mtime = witness_mtime

    def oldest_age(self, queue: Any, now: float) -> float:
        for task in [t for t in self.first if t not in queue]:
            del self.first[task]
        stats = 0
        for task in queue:
            if len(self.first) >= MAX_TRACKED_QUEUE:
                break
            if task in self.first:
                continue
            seen = None
            if stats < STATS_PER_SCRAPE:
                stats += 1
                seen = self.mtime(task)
            self.first[task] = min(seen, now) if seen is not None else now
        return max(0.0, now - min(self.first.values())) if self.first else 0.0


# -- the collector --------------------------------------------------------------------------------
class MissionCollector(Collector):
    """Everything read at scrape time; one workspace (one mount)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.instruments = Instruments()
        self.instruments.install(ws)
        self.queue_ages = QueueAges(self._witness_mtime)
        self._lock = threading.Lock()  # two scrapes at once share QueueAges

    def _witness_mtime(self, task: int) -> float | None:
        try:
            return os.stat(self.ws.store.witness_path(self.ws.state.space.rel(task))).st_mtime
        except (OSError, ValueError):
            return None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            board = self.ws.status
            snap = _retry(board.snapshot)
            yield from self._tasks(snap)
            yield from self._daemon(snap)
            yield from self._labelled()
            yield from self._digest(snap["digest"])
            sync = getattr(self.ws, "sync", None)
            if sync is not None:
                yield from self._sync(sync, snap["sync"])

    def _tasks(self, snap: dict[str, Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily("missionfs_tasks", "Tasks of the mission by state", labels=["state"])
        for state, n in snap["counts"].items():
            g.add_metric([state], n)
        yield g
        c = CounterMetricFamily(
            "missionfs_commits", "Witnesses committed, by how (rename or write)", labels=["source"]
        )
        for source, n in snap["commits"].items():
            c.add_metric([source], n)
        yield c
        yield CounterMetricFamily(
            "missionfs_refusals", "Refused commits, writes and deletes", value=snap["refused"]
        )
        yield CounterMetricFamily(
            "missionfs_leases_expired", "Claims returned to pending", value=snap["expired_leases"]
        )

    def _daemon(self, snap: dict[str, Any]) -> Iterator[Metric]:
        i = InfoMetricFamily("missionfs_mount", "The mounted mission")
        i.add_metric(
            [],
            {
                "mission": str(snap["mission"]),
                "store": str(snap["store"]),
                "durability": str(snap["durability"]),
                "state_dir": str(snap["state_dir"]),
            },
        )
        yield i
        yield GaugeMetricFamily(
            "missionfs_uptime_seconds", "Seconds since the mount", value=snap["uptime_seconds"]
        )
        yield GaugeMetricFamily(
            "missionfs_witnesses_outside_plan",
            "Witness files that are no task of the plan",
            value=snap["witnesses_outside_plan"],
        )
        yield GaugeMetricFamily(
            "missionfs_reconciled",
            "1 once the start-up index was checked against the files",
            value=1 if snap["reconcile"] == "done" else 0,
        )

    def _labelled(self) -> Iterator[Metric]:
        ins = self.instruments
        r = CounterMetricFamily("missionfs_refusals_by_reason", "Refusals", labels=["reason"])
        for (reason,), n in ins.refusals.items():
            r.add_metric([reason], n)
        yield r
        c = CounterMetricFamily(
            "missionfs_claims", "Claims (mv pending/ -> claimed/) by outcome", labels=["outcome"]
        )
        for (outcome,), n in ins.claims.items():
            c.add_metric([outcome], n)
        yield c
        s = CounterMetricFamily(
            "missionfs_s3_requests",
            "S3 HTTP requests (every attempt) by operation and outcome",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in ins.s3.items():
            s.add_metric([kind, outcome], n)
        yield s

    def _digest(self, info: dict[str, Any]) -> Iterator[Metric]:
        state = str(info.get("state", "off"))
        state = state if state in DIGEST_STATES else "not_computed"
        s = StateSetMetricFamily("missionfs_digest_state", "State of the Merkle digest")
        s.add_metric([], {name: name == state for name in DIGEST_STATES})
        yield s
        yield GaugeMetricFamily(
            "missionfs_digest_pending_tiles",
            "Tiles whose digest is being recomputed",
            value=int(info.get("pending_tiles", 0)),
        )

    def _sync(self, sync: Any, info: dict[str, Any]) -> Iterator[Metric]:
        now = time.time()
        yield GaugeMetricFamily("missionfs_upload_queue", "Witnesses not yet in S3", info["queue"])
        queue = _retry(lambda: sync.local - sync.synced)
        yield GaugeMetricFamily(
            "missionfs_upload_queue_oldest_age_seconds",
            "Age of the oldest witness waiting for upload (0 when the queue is empty)",
            value=round(self.queue_ages.oldest_age(queue, now), 3),
        )
        yield GaugeMetricFamily("missionfs_s3_online", "1 when S3 answers", int(info["online"]))
        for name, key, text in (
            ("refresh", "last_refresh", "Seconds since the last look for remote witnesses"),
            ("full_refresh", "last_full_refresh", "Seconds since the last verification listing"),
        ):
            last = float(info.get(key) or 0.0)
            yield GaugeMetricFamily(
                f"missionfs_{name}_lag_seconds", text, value=now - last if last else math.nan
            )
        for name, key, text in (
            ("uploads", "uploaded", "Witnesses uploaded"),
            ("already_in_s3", "already_in_s3", "Uploads found already there (a re-upload)"),
            ("conflicts", "conflicts", "Different witnesses for the same task (kept aside)"),
            ("learned_remote", "learned_remote", "Remote witnesses learned"),
            ("fetched", "fetched", "Remote witnesses downloaded on read"),
            ("sync_errors", "errors", "Failed S3 operations (retried)"),
            ("claims_lost", "claims_lost", "Claims lost to another worker's lease"),
        ):
            yield CounterMetricFamily(f"missionfs_{name}", text, value=int(info.get(key, 0)))
        for name, key, text in (
            ("remote_facts", "remote_facts", "Tasks known to have a witness in S3"),
            ("leases_held", "leases_held", "Fleet leases held by this worker"),
            ("claims_unconfirmed", "claims_unconfirmed", "Claims not yet confirmed fleet-wide"),
        ):
            yield GaugeMetricFamily(f"missionfs_{name}", text, value=int(info.get(key, 0)))
        calls = CounterMetricFamily(
            "missionfs_s3_calls", "S3 calls made by missionfs, by operation", labels=["op"]
        )
        for op, n in sorted(dict(info.get("requests", {})).items()):
            calls.add_metric([op], n)
        yield calls


def _retry(fn: Callable[[], Any], attempts: int = 3) -> Any:
    """Read state the trio thread may be changing: a dict resized mid-copy is read again."""
    for n in range(attempts):
        try:
            return fn()
        except RuntimeError:
            if n == attempts - 1:
                raise
    raise AssertionError("unreachable")
