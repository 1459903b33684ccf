"""The `status` file: one JSON object with counts, sync state and recent errors."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fusefs.model.state import MissionState
from fusefs.statedir.journal import Journal
from fusefs.statedir.ratelog import Coalescer


class StatusBoard:
    def __init__(
        self,
        mission: str,
        state: MissionState,
        state_dir: str,
        lease: float,
        *,
        journal: Journal | None = None,
        outside_plan: int = 0,
        sync_info: Callable[[], dict[str, Any]] | None = None,
        digest_info: Callable[[], dict[str, Any]] | None = None,
        durability: str = "strict",
    ) -> None:
        self.mission = mission
        self.state = state
        self.state_dir = state_dir
        self.lease = lease
        self.started = time.time()
        self.commits = {"rename": 0, "write": 0}
        self.refusals = 0
        # Direct writes (`cmd > done/REL`) refused at their last close: a shell ignores the
        # error of that close, so this count and `errors` are where the refusal shows.
        self.refused_writes = 0
        self.expired = 0
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=20)
        # Requests the error boundary (boundary.py) answered with an errno, by errno name.
        self.request_errors: dict[str, int] = {}
        self.reconcile = "pending"
        self.outside_plan = outside_plan  # updated by the daemon's reconcile
        self.sync_info = sync_info  # the sync engine's counters (with `[store] s3`)
        self.digest_info = digest_info  # Merkle root (digest.py)
        self.durability = durability
        # How commits' fsyncs are awaited (durable.py's Fsyncer.describe, set by the workspace).
        self.fsync_mode: Callable[[], str] | None = None
        self.journal = journal
        self._repeats: Coalescer[tuple[str, str]] = Coalescer(self._journal_refusal)
        self._refusal_observers: list[Callable[[str, str], None]] = []

    def observe_refusals(self, observer: Callable[[str, str], None]) -> None:
        """`observer(where, reason)` is told of every refusal (metrics count them by reason)."""
        self._refusal_observers.append(observer)

    def committed(self, source: str) -> None:
        self.commits[source] = self.commits.get(source, 0) + 1

    def refused(self, where: str, reason: str) -> None:
        """Count every refusal; journal the first of a run of identical ones and then how many
        followed (ratelog.py): a worker retrying a bad file cannot grow the journal unbounded."""
        self.refusals += 1
        for observer in self._refusal_observers:
            observer(where, reason)
        if self._repeats.seen((where, reason)):
            self._journal_refusal((where, reason), 1, 0.0)
        last = self.recent_errors[-1] if self.recent_errors else None
        now = round(time.time(), 3)
        if last is not None and last["path"] == where and last["error"] == reason:
            last["repeated"] = last.get("repeated", 1) + 1
            last["time"] = now
        else:
            self.recent_errors.append({"time": now, "path": where, "error": reason})

    def _journal_refusal(self, key: tuple[str, str], times: int, seconds: float) -> None:
        where, reason = key
        if self.journal is None:
            return
        rel = where.split("/", 1)[-1]
        if times == 1 and not seconds:
            self.journal.append("refused", rel, path=where, reason=reason)
        else:
            self.journal.append(
                "refused", rel, path=where, reason=reason, repeated=times, seconds=round(seconds)
            )

    def flush_refusals(self, everything: bool = False) -> None:
        """Journal the counts of repeated refusals whose window has passed (all at close)."""
        self._repeats.flush(everything)

    def snapshot(self) -> dict[str, Any]:
        return {
            "mission": self.mission,
            "pid": os.getpid(),
            "state_dir": self.state_dir,
            "store": "s3" if self.sync_info else "local",
            "counts": self.state.counts(),
            "lease_seconds": self.lease,
            "durability": self.durability,
            "fsync": self.fsync_mode() if self.fsync_mode else "untried",
            "commits": dict(self.commits),
            "expired_leases": self.expired,
            "refused": self.refusals,
            "request_errors": dict(self.request_errors),
            "refused_direct_writes": self.refused_writes,
            "witnesses_outside_plan": self.outside_plan,
            "reconcile": self.reconcile,
            "sync": self.sync_info()
            if self.sync_info
            else {"enabled": False, "state": "local only"},
            "digest": self.digest_info() if self.digest_info else {"state": "off"},
            "uptime_seconds": round(time.time() - self.started, 1),
            "errors": list(self.recent_errors),
            "pace": self._pace(),
        }

    def _pace(self) -> dict[str, Any] | None:
        """Rate over the last 10 minutes and the ETA at that rate (eta.py), from the journal."""
        from fusefs.engine.eta import pace

        return pace(self.journal.dir, self.state.counts()) if self.journal else None

    def render(self) -> bytes:
        # A name with bytes that are not UTF-8 (kept as surrogates) becomes a JSON \uDCxx escape
        # of its surrogate: still valid JSON, and the status never fails to render.
        return (json.dumps(self.snapshot(), ensure_ascii=False) + "\n").encode(
            "utf-8", "backslashreplace"
        )
