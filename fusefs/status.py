"""The `status` file: one JSON object with counts, sync state and recent errors."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .journal import Journal
from .state import MissionState


class StatusBoard:
    def __init__(self, mission: str, state: MissionState, state_dir: str, lease: float) -> None:
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
        self.reconcile = "pending"
        self.outside_plan = 0
        self.sync_info: Callable[[], dict[str, Any]] | None = None
        self.digest_info: Callable[[], dict[str, Any]] | None = None  # Merkle root (digest.py)
        self.durability = "strict"
        self.journal: Journal | None = None

    def committed(self, source: str) -> None:
        self.commits[source] = self.commits.get(source, 0) + 1

    def refused(self, where: str, reason: str) -> None:
        self.refusals += 1
        if self.journal is not None:
            self.journal.append("refused", where.split("/", 1)[-1], path=where, reason=reason)
        self.recent_errors.append({"time": round(time.time(), 3), "path": where, "error": reason})

    def snapshot(self) -> dict[str, Any]:
        return {
            "mission": self.mission,
            "pid": os.getpid(),
            "state_dir": self.state_dir,
            "store": "s3" if self.sync_info else "local",
            "counts": self.state.counts(),
            "lease_seconds": self.lease,
            "durability": self.durability,
            "commits": dict(self.commits),
            "expired_leases": self.expired,
            "refused": self.refusals,
            "refused_direct_writes": self.refused_writes,
            "witnesses_outside_plan": self.outside_plan,
            "reconcile": self.reconcile,
            "sync": self.sync_info()
            if self.sync_info
            else {"enabled": False, "state": "local only"},
            "digest": self.digest_info() if self.digest_info else {"state": "off"},
            "uptime_seconds": round(time.time() - self.started, 1),
            "errors": list(self.recent_errors),
        }

    def render(self) -> bytes:
        return (json.dumps(self.snapshot(), ensure_ascii=False) + "\n").encode()
