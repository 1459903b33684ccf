# layer: engine
"""The claim lifecycle as one service: claim, renew, release, expiry and restore after a restart.

A claim touches five things that must stay in step: the state model (pending -> claimed), the
claims log (claims survive a restart, statedir/claimlog.py), the journal (the audit trail), the
fleet-wide lease when S3 claims are on (fleet.py) and the claim-outcome counters of metrics.
`Claims` owns that sequence; the FUSE layer only decodes names and maps the domain exceptions
below to errnos. Everything is injected by the constructor: the clock (tests move it), the
optional fleet and claims log, and `outcomes`, an observer told each claim's outcome (metrics).

All methods run on the trio thread; code between two awaits is atomic, so checking pending and
claiming need no lock. The only awaits are the fleet's S3 requests and the stale-index check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import trio

from fusefs.model.errors import ClaimUnavailable, S3ConfigError, S3Unavailable
from fusefs.model.state import Claim, MissionState, NotClaimed, NotPending

if TYPE_CHECKING:
    from fusefs.engine.commit import Committer
    from fusefs.engine.fleet import FleetClaims
    from fusefs.engine.status import StatusBoard
    from fusefs.statedir.claimlog import ClaimLog
    from fusefs.statedir.journal import Journal
    from fusefs.statedir.store import LocalStore

log = logging.getLogger("missionfs")

__all__ = [
    "ClaimNotRecorded",
    "Claims",
    "FleetUnavailable",
    "LeaseLost",
    "NotClaimed",
    "NotPending",
]

RESTORED_OWNER = "claim from before a restart"


class ClaimNotRecorded(Exception):
    """The claim could not be persisted (claims.log or journal, e.g. a full disk): rolled back.
    `error` is the OSError of the write; its errno is the one the worker gets (ENOSPC)."""

    def __init__(self, message: str, error: OSError) -> None:
        super().__init__(message)
        self.error = error


class FleetUnavailable(Exception):
    """Strict fleet claims need S3 and S3 did not answer: the claim is refused, retry later."""


class LeaseLost(Exception):
    """A renewal found our fleet lease taken over by another worker after it expired."""


class Claims:
    """The claims of one mount (see the module docstring)."""

    def __init__(
        self,
        state: MissionState,
        journal: Journal,
        lease: float,
        *,
        committer: Committer,
        store: LocalStore,
        status: StatusBoard,
        claim_log: ClaimLog | None = None,
        fleet: FleetClaims | None = None,
        clock: Callable[[], float] = time.time,
        outcomes: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.space = state.space
        self.journal = journal
        self.lease = lease
        self.committer = committer
        self.store = store
        self.status = status
        self.claim_log = claim_log
        self.fleet = fleet
        self.clock = clock
        self._outcome = outcomes if outcomes is not None else _ignore

    # -- claim ---------------------------------------------------------------------------------
    async def claim(self, task: int, pid: int) -> Claim:
        """`mv pending/REL claimed/REL` by process `pid`.

        A claim that cannot be persisted (claims.log or journal, e.g. on a full disk) is rolled
        back and refused (ClaimNotRecorded): a claim acknowledged but not in claims.log would be
        silently dropped by a restart, and a worker told "disk full" at claim time learns it
        before scraping a result it could not commit anyway. The rollback is exact: the claim
        was made in this same step (no await), and the claims log keeps a line it could not
        write for later, followed by the release's line, so it never holds a refused claim.

        Raises NotPending (not pending, or lost to another worker's lease), FleetUnavailable
        or ClaimNotRecorded."""
        await self._learn_unindexed_fact(task)
        try:
            claim = self.state.claim(task, self.clock(), self.lease, owner=f"pid {pid}")
        except NotPending as e:
            self._outcome(str(e))
            raise
        self._outcome("claimed")
        if self.claim_log is not None and self.claim_log.error is not None:
            self._unclaim(claim, self.claim_log.error)
        if self.fleet is not None:
            await self._fleet_claim(task)
        self.journal.append("claim", self.space.rel(task), pid=pid, lease=self.lease)
        if self.journal.error is not None:  # not recorded (full disk): roll back
            if self.fleet is not None:
                await self.fleet.release(task)
            self._unclaim(claim, self.journal.error)
        return claim

    async def _learn_unindexed_fact(self, task: int) -> None:
        """The start-up index may lag the files until the reconcile walk ends: check the file."""
        if (
            task in self.state.pending
            and not self.committer.reconciled
            and await trio.to_thread.run_sync(self.store.exists, self.space.rel(task))
        ):
            self.committer.learn_local_fact(task)

    async def _fleet_claim(self, task: int) -> None:
        """Make the local claim fleet-wide (the S3 lease)."""
        assert self.fleet is not None
        rel = self.space.rel(task)
        try:
            won = await self.fleet.claim(task)
        except (ClaimUnavailable, S3Unavailable, S3ConfigError) as e:
            self._outcome("fleet_lease_unavailable")
            raise FleetUnavailable(
                f"refused claim of {rel}: strict claims need S3 ({e}); retry later"
            ) from None
        except Exception:
            self._outcome("fleet_lease_unavailable")
            raise
        if not won:
            self._outcome("lost_to_another_worker")
            raise NotPending("lost to another worker")
        self._outcome("fleet_lease_won")

    def _unclaim(self, claim: Claim, e: OSError) -> NoReturn:
        """Roll back a claim that could not be persisted and refuse it (see claim); only this
        claim: during a wait on S3 it may have been released and made again by another."""
        if self.state.claims.get(claim.task) is claim:
            self.state.release(claim.task)
        raise ClaimNotRecorded(
            f"refused claim of {self.space.rel(claim.task)}: cannot record it ({e.strerror});"
            " the task stays pending",
            e,
        )

    # -- renew, release, expire ----------------------------------------------------------------
    async def renew(self, task: int) -> Claim:
        """`touch claimed/REL`: extend the lease. NotClaimed, or LeaseLost (the fleet lease was
        taken over after it expired: the task is another worker's now)."""
        claim = self.state.renew(task, self.clock(), self.lease)
        rel = self.space.rel(task)
        self.journal.append("renew", rel)
        if self.fleet is not None and not await self.fleet.renew(task):
            raise LeaseLost(f"lease of {rel} was taken over by another worker after it expired")
        return claim

    async def release(self, task: int) -> None:
        """`rm claimed/REL` or `mv claimed/REL pending/REL`: give the task back (NotClaimed)."""
        self.state.release(task)
        self.journal.append("release", self.space.rel(task))
        if self.fleet is not None:
            await self.fleet.release(task)

    def expire(self, now: float | None = None) -> list[int]:
        """Return to pending every task whose lease ended at or before `now`."""
        expired = self.state.expire(self.clock() if now is None else now)
        if expired:
            self.status.expired += len(expired)
            for task in expired:
                self.journal.append("expire", self.space.rel(task))
            if self.fleet is not None:
                self.fleet.forget(expired)
            log.info("lease expired for %d task(s), back to pending", len(expired))
        return expired

    def next_expiry(self) -> float | None:
        return self.state.next_expiry()

    # -- restart -------------------------------------------------------------------------------
    def restore(self, now: float | None = None) -> int:
        """Hold again the claims live when the last daemon stopped (claims.log), before serving;
        returns how many. Each is confirmed fleet-wide (our lease taken again, or lost to another
        worker's) at the first listing, like an optimistic claim made offline."""
        if self.claim_log is None:
            return 0
        n = self.claim_log.restore(now, refused=self._outcome)
        for _ in range(n):
            self._outcome("restored")
        if self.fleet is not None:
            self.fleet.unconfirmed.update(self.claim_log.live)
        return n


def _ignore(outcome: str) -> None:
    """No observer: outcomes are not counted."""
