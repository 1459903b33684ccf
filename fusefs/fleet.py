"""Fleet-wide claims for a sync engine: our lease objects, their tombstones, the other
workers' leases, and work affinity for optimistic fleets.

A claim in the mount becomes fleet-wide through `claim` (see leases.py for the protocol); a
finished task's lease is retired as a tombstone and deleted in batches; every refresh lists the
live leases before the facts and applies them after (other workers' tasks hidden, ours adopted
after a restart, optimistic shares recomputed from the workers seen at work).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio
from pyroaring import BitMap

from .affinity import Crew
from .codec import OutOfPlan
from .errors import MAX_BACKOFF, ClaimUnavailable
from .leases import Lease, LeaseBook
from .s3store import S3ConfigError, S3Unavailable
from .threads import blocking as _s3

if TYPE_CHECKING:
    from .sync import SyncEngine

log = logging.getLogger("missionfs")

RETIRE_MARGIN = 5.0  # seconds a finished task's lease outlives two refresh intervals


class FleetClaims:
    def __init__(self, engine: SyncEngine, leases: LeaseBook, refresh: float) -> None:
        self.engine = engine
        self.state = engine.state
        self.space = engine.space
        self.worker = engine.worker
        self.leases = leases
        self.held: dict[int, str] = {}  # task -> ETag of our lease object
        self.unconfirmed: set[int] = set()  # claims made offline or restored after a restart
        self._adopted = False  # own leases from before a restart are adopted once
        # Leases of finished tasks, kept as tombstones until the other workers' next refresh
        # has shown them the witness: (monotonic deadline, rel), deleted in batches.
        self.retire_seconds = 2 * refresh + RETIRE_MARGIN
        self._retiring: list[tuple[float, str]] = []  # a heap
        # Optimistic fleets: the workers seen at work and their shares (affinity.py); a worker
        # is silent after 3 refresh intervals + 5 s without a new manifest or lease.
        self.crew = Crew(self.worker, self.state.intent, quiet=3 * refresh + RETIRE_MARGIN)
        self._lease_marks: dict[str, float] = {}  # rel -> expiry of each lease last listed

    async def claim(self, task: int) -> bool:
        """Make a local claim fleet-wide. False: another worker holds the task (now foreign)."""
        rel = self.space.rel(task)
        etag: str | None = None
        try:
            etag = await _s3(self.leases.acquire, rel)
            if etag is None:
                self._lost(task)
                return False
            if task not in self.state.claims:  # released or completed while we waited
                await _s3(self.leases.release, rel, etag)
                return task in self.state.fact
        except (S3Unavailable, S3ConfigError) as e:
            # S3 went away somewhere in the middle: never let it escape into the FUSE handler.
            self.engine.went_offline(str(e))
            if etag is not None and task in self.state.claims:
                self.held[task] = etag  # the lease object may exist: it is ours until it expires
            if self.engine.claims_mode == "optimistic":
                if task in self.state.claims and etag is None:
                    self.unconfirmed.add(task)  # confirmed when S3 is back
                return task in self.state.claims
            if task in self.state.claims:
                self.state.release(task)
            self.held.pop(task, None)
            raise ClaimUnavailable(str(e)) from None
        self.held[task] = etag
        return True

    async def renew(self, task: int) -> bool:
        """`touch claimed/REL`: extend our lease. False: it was taken over (we lost the task)."""
        etag = self.held.get(task)
        if etag is None:
            return True
        try:
            new = await _s3(self.leases.renew, self.space.rel(task), etag)
        except S3Unavailable as e:
            self.engine.went_offline(str(e))
            return True  # keep working; the lease is renewed at the next touch
        if new is None:
            self.held.pop(task, None)
            self._lost(task)
            return False
        self.held[task] = new
        return True

    def _lost(self, task: int) -> None:
        """Another worker's lease holds the task: our claim ends, the task is theirs."""
        self.engine.counters.lost_claims += 1
        self.engine.note("lost_claim", self.space.rel(task))
        self.state.claim_lost(task)

    async def release(self, task: int) -> None:
        """`rm claimed/REL`: give the task back to the fleet."""
        self.unconfirmed.discard(task)
        await self._drop(task)

    async def _drop(self, task: int) -> None:
        etag = self.held.pop(task, None)
        if etag is None:
            return
        try:
            await _s3(self.leases.release, self.space.rel(task), etag)
        except (S3Unavailable, S3ConfigError) as e:
            log.info("lease of %s not deleted (%s); it will expire", self.space.rel(task), e)

    def retire(self, task: int) -> None:
        """The task is finished: delete its lease once every worker can know it (see leases.py)."""
        etag = self.held.pop(task, None)
        if etag is not None:
            deadline = time.monotonic() + self.retire_seconds
            heapq.heappush(self._retiring, (deadline, self.space.rel(task)))

    async def retire_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            due: list[str] = []
            while self._retiring and self._retiring[0][0] <= now:
                due.append(heapq.heappop(self._retiring)[1])
            if not due:
                continue
            await (
                self.engine.flush_manifest()
            )  # the tombstones go only after the facts are announced
            try:
                await _s3(self.leases.delete_many, due)
            except (S3Unavailable, S3ConfigError) as e:
                log.info("%d finished leases not deleted yet (%s); retrying", len(due), e)
                for rel in due:
                    heapq.heappush(self._retiring, (now + MAX_BACKOFF, rel))

    def forget(self, tasks: Iterable[int]) -> None:
        """Local leases ended: our lease objects expire too, nothing to delete."""
        for task in tasks:
            self.held.pop(task, None)
            self.unconfirmed.discard(task)

    async def list_live(self) -> list[Lease]:
        """Confirm claims made while offline or restored after a restart; list the live
        leases (the refresh loop lists them before the facts and applies them after)."""
        for task in sorted(self.unconfirmed):
            self.unconfirmed.discard(task)
            if task in self.state.claims and task not in self.held:
                try:
                    await self.claim(task)
                except ClaimUnavailable:
                    pass  # strict: S3 went away again; the claim was given back
        live: list[Lease] = await _s3(self.leases.live)
        return live

    def apply(self, live: list[Lease]) -> None:
        """Hide tasks under other workers' live leases; adopt ours after a restart; collect
        expired leases of finished tasks."""
        now = time.monotonic()
        for rel in self.leases.expired:
            task = self._task_of(rel)
            if task is not None and task in self.state.fact:
                heapq.heappush(self._retiring, (now, rel))
        foreign = BitMap()
        marks = {}
        for lease in live:
            marks[lease.rel] = lease.expires
            if self._lease_marks.get(lease.rel) != lease.expires:
                self.crew.observe(lease.worker, now)  # a new or renewed lease
            task = self._task_of(lease.rel)
            if task is None:
                continue
            if lease.worker != self.worker:
                foreign.add(task)
            elif not self._adopted and task in self.state.fact:
                heapq.heappush(self._retiring, (now + self.retire_seconds, lease.rel))
            elif not self._adopted and task not in self.held:
                # Ours, from before a restart (only then: later listings may be older than a
                # release or completion we made meanwhile, and must not bring a lease back).
                self.held[task] = lease.etag
                if task in self.state.pending:
                    remaining = lease.expires - self.leases.server_now()
                    self.state.claim(task, time.time(), max(1.0, remaining), "adopted lease")
        self._lease_marks = marks
        self.state.set_foreign(foreign)
        self._adopted = True
        if self.engine.claims_mode == "optimistic":
            self.update_shares(now)

    def update_shares(self, now: float, *, offline: bool = False) -> None:
        """Work our share of the pending tasks; help with the others' only where it is safe
        (see affinity.Crew), never while cut off from S3."""
        before = self.crew.members
        changed = self.crew.shares(now, offline=offline)
        if changed is not None:
            self.state.set_shares(*changed)
            if self.crew.members != before:
                members = self.crew.members
                log.info("work shares among %d workers: %s", len(members), ", ".join(members))

    def _task_of(self, rel: str) -> int | None:
        try:
            return self.space.parse_rel(rel)
        except OutOfPlan:
            return None
