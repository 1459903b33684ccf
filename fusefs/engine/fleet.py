"""Fleet-wide claims for a sync engine: our lease objects, their tombstones, the other
workers' leases, and work affinity (shares) for strict and optimistic fleets.

A claim in the mount becomes fleet-wide through `claim` (see leases.py for the protocol); a
finished task's lease is retired as a tombstone and deleted in batches (at most one
DeleteObjects per refresh interval); every refresh lists live leases before the facts and
applies them after (other workers' tasks hidden, ours adopted after a restart, shares
recomputed from the workers seen at work).

Leases by chunk. A refresh does not list every lease of the fleet: it lists the lease chunks
(1,024 task ids each, leases.py) of what pending/ may show (`MissionState.pending_view`: with
shares, a window of WINDOW tasks of our share) and of the leases we hold: about 1-2 LISTs
whatever the fleet's size. Without shares (no other worker known) pending/ shows every pending
task: when that spans more than FULL_LISTING_CHUNKS chunks, the refresh lists all of claims/
instead (leases / 1,000 LISTs: what a small fleet costs); so does a refresh whose chunks are
every chunk of the intent (a small mission: one LIST then covers it all). The first listing
after a start is always all of claims/ (a one-time cost of leases / 1,000 LISTs): it adopts our
own leases from before a restart wherever they are, and shows us the crew at work. When our
view is empty (our share and the helpable rest done or leased), the highest END_CHUNKS chunks
of other workers' leases are listed, so a released task comes back to the helpers at once.

Other workers' leases in chunks not listed by a refresh stay hidden as they were, each until
the expiry its listing (or the refused claim) showed, then the task shows again; a claim of it
meanwhile still meets the lease (PUT If-None-Match fails) and hides it again. Dropping them at
once instead would show leased tasks as pending between two listings of their chunk (refused
claims); keeping them forever would hide a task whose lease ended if nobody listed its chunk
again (a chunk with no pending task left is in nobody's view).

Strict and optimistic fleets share the same affinity (affinity.py): each worker shows its
share first and helps with the others' downwards once its own is done, so two workers rarely
race for one task (a lost race costs a PUT 412 and a GET). Optimistic fleets protect the
shares of silent workers (they may hold finished work made offline); strict ones protect
none: a strict claim needs its lease, so a silent worker's share is helped with at once. A
helper's claim refused by a lease hides that chunk of the other's share until the next
listing; a second refusal pauses helping until then (`_helper_refused`).

Bounded waits. A claim is a cross-directory rename: while its FUSE request is unanswered the
kernel holds the filesystem's rename lock, and every other `mv` on the mount (commits too)
waits. So a lease request (acquire, renew, release) is waited for at most `timeout` seconds
(`--claim-timeout`, 2 s); then the claim fails with EAGAIN and S3 is reported degraded. The
request's thread is abandoned, not stopped, and may still land; its rule is "a lease request
we gave up on never leaves a lease we do not honour":

- while any lease request for a rel still runs, a new claim of that rel fails at once with
  EAGAIN (so a late request can never race with a new claim of ours: all our leases have the
  same body, hence the same ETag, and If-Match cannot tell them apart);
- an abandoned acquire that created a lease deletes it (If-Match) in the same thread as soon
  as it lands; if that fails, or if its outcome is unknown (the PUT timed out or its
  connection closed, so it may have been applied), the rel becomes a *stray*; so does the
  rel of any refused claim whose PUT may have reached the server;
- an abandoned or failed release makes the rel a stray too;
- every refresh sweeps the strays: a lease of ours on a task we neither claim nor finished is
  deleted (GET to check the worker, DELETE If-Match). A lease of ours on a finished task is
  left to the tombstone rules; after a restart, strays are forgotten and a lease of ours is
  adopted as a claim (it is then honoured: shown in claimed/, expiring as usual).

A late renew needs nothing: it is If-Match on a lease we hold, which a release or takeover
since then makes fail.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio
from pyroaring import BitMap

from fusefs.engine.leases import GRACE, UNKNOWN, Lease, LeaseBook, chunk_of_task, chunk_range
from fusefs.engine.threads import blocking as _s3
from fusefs.engine.threads import s3_limiter
from fusefs.model.affinity import Crew
from fusefs.model.codec import OutOfPlan
from fusefs.model.errors import (
    MAX_BACKOFF,
    ClaimUnavailable,
    S3ConfigError,
    S3Timeout,
    S3Unavailable,
)

if TYPE_CHECKING:
    from fusefs.model.codec import TaskSpace
    from fusefs.model.state import MissionState


class LostClaims(Protocol):
    lost_claims: int


class FleetHost(Protocol):
    """What FleetClaims needs of the sync engine that owns it. The engine (sync.py) satisfies
    it; fleet.py never imports sync.py, so the two cannot form an import cycle."""

    state: MissionState
    space: TaskSpace
    worker: str
    claims_mode: str

    @property
    def counters(self) -> LostClaims: ...

    def answered(self) -> None: ...

    def went_offline(self, why: str | Exception) -> None: ...

    def note(self, ev: str, rel: str, **fields: Any) -> None: ...

    async def flush_manifest(self) -> None: ...


log = logging.getLogger("missionfs")

RETIRE_MARGIN = 5.0  # seconds a finished task's lease outlives three refresh intervals
# Lease bodies of workers not met yet read per listing (None: all). Reading them all costs
# N GETs per node at a fleet's start (N x N: SlowDowns at N = 1,000). The crew is learned
# from the segments instead (every node's first window has a manifest of it, factlog.py's
# `hello`), whose workers' bodies are known by their ETags; until then a node knows part of
# the crew, which is harmless: it works its share from its own best chunks (affinity.Crew).
IDENTIFY: int | None = 2
CLAIM_TIMEOUT = 2.0  # seconds a claim, renew or release waits for S3 (then EAGAIN / degraded)
FULL_LISTING_CHUNKS = 8  # a view over more lease chunks lists all of claims/ instead
END_CHUNKS = 2  # chunks of other workers' leases listed when our view is empty
DELETE_BATCH = 1000  # keys of one DeleteObjects: the retired leases deleted per refresh
HELPER_REFUSALS = 2  # helper claims lost between two listings before helping pauses


def chunks_of(tasks: BitMap, limit: int) -> set[int] | None:
    """The lease chunks holding any of `tasks`; None if more than `limit` (a step per chunk)."""
    out: set[int] = set()
    pos = 0
    while True:
        try:
            task = tasks.next_set_bit(pos)
        except ValueError:
            return out
        chunk = chunk_of_task(task)
        out.add(chunk)
        if len(out) > limit:
            return None
        pos = chunk_range(chunk)[1]


@dataclass(frozen=True)
class LeaseListing:
    """What a refresh listed: the live leases of `chunks` (None: of the whole bucket), the
    expired ones seen, and when (monotonic) the listing started."""

    leases: list[Lease]
    chunks: frozenset[int] | None
    expired: list[str]
    started: float


class _Busy(S3Unavailable):
    """An earlier lease request for this rel has not ended: a claim of it must wait."""

    sent = False


@dataclass
class _Call:
    """A lease request in a thread, and whether its caller stopped waiting for it."""

    lock: threading.Lock
    done: bool = False
    abandoned: bool = False
    result: Any = None
    error: BaseException | None = None


class FleetClaims:
    def __init__(
        self,
        engine: FleetHost,
        leases: LeaseBook,
        refresh: float,
        timeout: float = CLAIM_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.state = engine.state
        self.space = engine.space
        self.worker = engine.worker
        self.leases = leases
        self.held: dict[int, str] = {}  # task -> ETag of our lease object
        self.unconfirmed: set[int] = set()  # claims made offline or restored after a restart
        self._adopted = False  # own leases from before a restart are adopted once
        # Rels this process asked a lease for before that adoption: their leases are not from
        # before a restart (held, or given up on and swept), never adopted.
        self._touched: set[str] = set()
        # Leases of finished tasks, kept as tombstones until the other workers' next refresh
        # has shown them the witness: (monotonic deadline, rel), deleted in batches.
        self.retire_seconds = 3 * refresh + RETIRE_MARGIN
        self._retiring: list[tuple[float, str]] = []  # a heap
        self.refresh = refresh  # also the retire loop's period: one DeleteObjects at most
        # The workers seen at work and their shares (affinity.py); a worker is silent after 3
        # refresh intervals + 5 s without a new manifest (segment) or lease. Only optimistic
        # fleets protect silent workers' shares (see the module docstring).
        self.crew = Crew(
            self.worker,
            self.state.intent,
            quiet=3 * refresh + RETIRE_MARGIN,
            guard=engine.claims_mode == "optimistic",
        )
        self._lease_marks: dict[int, float] = {}  # task -> expiry of its lease last listed
        # Other workers' leases known: task -> (expiry on the server's clock, monotonic time
        # learned). Kept for chunks a refresh does not list, until that expiry.
        self._foreign: dict[int, tuple[float, float]] = {}
        self._helper_losses = 0  # helper claims lost since the last listing
        self.timeout = timeout
        # Shared with the lease threads (see the module docstring), under _lock: lease requests
        # still running per rel, and rels where a lease of ours may exist unhonoured.
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()
        self._strays: set[str] = set()

    # -- bounded lease requests ---------------------------------------------------------------
    def _busy_with(self, rel: str) -> bool:
        with self._lock:
            return self._busy[rel] > 0

    def _stray(self, rel: str) -> None:
        with self._lock:
            self._strays.add(rel)

    async def _bounded(
        self,
        rel: str,
        fn: Callable[..., Any],
        *args: Any,
        late: Callable[[str, Any, BaseException | None], None] | None = None,
    ) -> Any:
        """fn(rel, *args) in a thread, waited for at most `timeout` seconds; then S3Timeout.
        The thread runs on: when it ends, `late(rel, result, error)` runs in it if we gave up,
        and only then is the rel no longer busy."""
        call = _Call(threading.Lock())
        with self._lock:
            self._busy[rel] += 1

        def run() -> None:
            result, error = None, None
            try:
                result = fn(rel, *args)
            except Exception as e:
                error = e
            with call.lock:
                call.done, call.result, call.error = True, result, error
                abandoned = call.abandoned
            try:
                if abandoned and late is not None:
                    late(rel, result, error)
            except Exception as e:  # a thread nobody waits for: log, never raise
                log.info("late lease request for %s: %s", rel, e)
                self._stray(rel)
            finally:
                with self._lock:
                    self._busy[rel] -= 1
                    if self._busy[rel] <= 0:
                        del self._busy[rel]

        with trio.move_on_after(self.timeout):
            await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=s3_limiter())
        with call.lock:
            if not call.done:
                call.abandoned = True
                raise S3Timeout(f"lease of {rel}: S3 did not answer within {self.timeout:g} s")
        if call.error is not None:
            raise call.error
        self.engine.answered()
        return call.result

    def _late_acquire(self, rel: str, etag: str | None, error: BaseException | None) -> None:
        """An acquire we gave up on ended (in its thread): delete the lease if it made one."""
        if etag is not None:
            try:
                self.leases.release(rel, etag)
                return
            except Exception:
                self._stray(rel)
        elif isinstance(error, S3Unavailable) and error.sent:
            self._stray(rel)  # the PUT may have been applied, its answer lost

    def _late_release(self, rel: str, result: Any, error: BaseException | None) -> None:
        if error is not None:
            self._stray(rel)

    async def sweep(self) -> None:
        """Delete the leases of ours that we do not honour (see the module docstring)."""
        with self._lock:
            strays = sorted(self._strays - set(self._busy))
        for rel in strays:
            task = self._task_of(rel)
            if task is not None and task not in self.state.claims and task not in self.state.fact:
                with self._lock:
                    self._busy[rel] += 1  # a claim of it meanwhile gets EAGAIN
                try:
                    lease = await _s3(self.leases.inspect, rel)
                    if lease is not None and lease.worker == self.worker:
                        await _s3(self.leases.release, rel, lease.etag)
                        log.info("deleted lease of %s left by a request given up on", rel)
                finally:
                    with self._lock:
                        self._busy[rel] -= 1
                        if self._busy[rel] <= 0:
                            del self._busy[rel]
            with self._lock:
                self._strays.discard(rel)

    async def claim(self, task: int) -> bool:
        """Make a local claim fleet-wide. False: another worker holds the task (now foreign)."""
        rel = self.space.rel(task)
        etag: str | None = None
        try:
            if self._busy_with(rel):
                raise _Busy(f"an earlier lease request for {rel} still waits for S3")
            if not self._adopted:
                self._touched.add(rel)
            etag = await self._bounded(rel, self.leases.acquire, late=self._late_acquire)
            if etag is None:
                self._lost(task)
                return False
            if task not in self.state.claims:  # released or completed while we waited
                await self._bounded(rel, self.leases.release, etag, late=self._late_release)
                return task in self.state.fact
        except (S3Unavailable, S3ConfigError) as e:
            # S3 went away somewhere in the middle: never let it escape into the FUSE handler.
            if isinstance(e, S3Unavailable) and not isinstance(e, _Busy):
                self.engine.went_offline(e)
            if etag is not None and task in self.state.claims:
                self.held[task] = etag  # the lease object may exist: it is ours until it expires
            if self.engine.claims_mode == "optimistic":
                if task in self.state.claims and etag is None:
                    self.unconfirmed.add(task)  # confirmed when S3 is back
                return task in self.state.claims
            if task in self.state.claims:
                self.state.release(task)
            self.held.pop(task, None)
            if etag is not None or (isinstance(e, S3Unavailable) and e.sent):
                self._stray(rel)  # our lease exists (or may): the claim is refused, it must go
            raise ClaimUnavailable(str(e)) from None
        self.held[task] = etag
        return True

    async def renew(self, task: int) -> bool:
        """`touch claimed/REL`: extend our lease. False: it was taken over (we lost the task)."""
        etag = self.held.get(task)
        if etag is None:
            return True
        try:
            new = await self._bounded(self.space.rel(task), self.leases.renew, etag)
        except (S3Unavailable, S3ConfigError) as e:
            if isinstance(e, S3Unavailable):
                self.engine.went_offline(e)
            return True  # keep working; the lease is renewed at the next touch
        if new is None:
            self.held.pop(task, None)
            self._lost(task)
            return False
        self.held[task] = new
        return True

    def _lost(self, task: int) -> None:
        """Another worker's lease holds the task: our claim ends, the task is theirs (hidden
        until that lease's end, or its chunk's next listing)."""
        rel = self.space.rel(task)
        self.engine.counters.lost_claims += 1
        self.engine.note("lost_claim", rel)
        until = self.leases.refused.pop(rel, None)
        if until is None:  # taken over at a renewal: a fresh lease, of our length or so
            until = self.leases.server_now() + self.leases.lease_seconds + GRACE
        self._foreign[task] = (until, time.monotonic())
        self.state.claim_lost(task)
        if task in self.state.elsewhere:
            self._helper_refused(task)

    def _helper_refused(self, task: int) -> None:
        """A claim of another worker's share lost: its owner (or another helper) is at work
        there, or finished it since our last listing. Help elsewhere until the next listing;
        after HELPER_REFUSALS such losses, not at all until then (near a mission's end most
        of what a listing showed pending is taken: each try would cost a PUT 412 + GET)."""
        self._helper_losses += 1
        contended = BitMap()
        if self._helper_losses >= HELPER_REFUSALS:
            contended = self.state.elsewhere
        else:
            for lo, hi in self.crew.help_order:
                if lo <= task < hi:
                    contended.add_range(lo, hi)
                    break
        self.state.contend(contended)

    async def release(self, task: int) -> None:
        """`rm claimed/REL`: give the task back to the fleet."""
        self.unconfirmed.discard(task)
        await self._drop(task)

    async def _drop(self, task: int) -> None:
        etag = self.held.pop(task, None)
        if etag is None:
            return
        rel = self.space.rel(task)
        try:
            await self._bounded(rel, self.leases.release, etag, late=self._late_release)
        except (S3Unavailable, S3ConfigError) as e:
            if isinstance(e, S3Unavailable):
                self.engine.went_offline(e)
            if not isinstance(e, S3Timeout):  # a timed-out one is judged when it ends
                self._stray(rel)
            log.info("lease of %s not deleted yet (%s); retried at the next refresh", rel, e)

    def retire(self, task: int) -> None:
        """The task is finished: delete its lease once every worker can know it (see leases.py)."""
        etag = self.held.pop(task, None)
        if etag is not None:
            deadline = time.monotonic() + self.retire_seconds
            heapq.heappush(self._retiring, (deadline, self.space.rel(task)))

    async def retire_loop(self) -> None:
        """Delete due tombstones once per refresh interval (see retire_due)."""
        while True:
            await trio.sleep(self.refresh)
            await self.retire_due()

    async def retire_due(self) -> int:
        """Delete the tombstones whose time came, in one DeleteObjects of up to DELETE_BATCH
        keys (the rest waits for the next call); returns how many were deleted."""
        now = time.monotonic()
        due: set[str] = set()
        while self._retiring and self._retiring[0][0] <= now and len(due) < DELETE_BATCH:
            due.add(heapq.heappop(self._retiring)[1])
        if not due:
            return 0
        await self.engine.flush_manifest()  # the tombstones go only after the facts are announced
        try:
            await _s3(self.leases.delete_many, sorted(due))
        except (S3Unavailable, S3ConfigError) as e:
            log.info("%d finished leases not deleted yet (%s); retrying", len(due), e)
            for rel in due:
                heapq.heappush(self._retiring, (now + MAX_BACKOFF, rel))
            return 0
        return len(due)

    def forget(self, tasks: Iterable[int]) -> None:
        """Local leases ended: our lease objects expire too, nothing to delete."""
        for task in tasks:
            self.held.pop(task, None)
            self.unconfirmed.discard(task)

    async def list_live(self) -> LeaseListing:
        """Confirm claims made while offline or restored after a restart; list the live
        leases of the chunks we work in (the refresh loop lists them before the facts and
        applies them after). The first listing after a start lists all of claims/."""
        for task in sorted(self.unconfirmed):
            self.unconfirmed.discard(task)
            if task in self.state.claims and task not in self.held:
                try:
                    await self.claim(task)
                except ClaimUnavailable:
                    pass  # strict: S3 went away again; the claim was given back
        await self.sweep()
        chunks = self.chunks_to_list() if self._adopted else None
        self.leases.identify = IDENTIFY  # a few unknown bodies per listing (leases.py)
        self.leases.expect(self.crew.members)
        started = time.monotonic()
        live: list[Lease] = await _s3(self.leases.live, chunks)
        listed = None if chunks is None else frozenset(chunks)
        return LeaseListing(live, listed, list(self.leases.expired), started)

    def chunks_to_list(self) -> set[int] | None:
        """The lease chunks a refresh lists (None: all of claims/; see the module docstring)."""
        chunks = chunks_of(self.state.pending_view(), FULL_LISTING_CHUNKS)
        if chunks is None:
            return None
        if not chunks:  # nothing for us to show: where the others still work, from the top
            working = BitMap(self._foreign) - self.state.fact
            while working and len(chunks) < END_CHUNKS:
                top = chunk_of_task(working.max())
                chunks.add(top)
                working.remove_range(*chunk_range(top))
        chunks |= {chunk_of_task(task) for task in self.held}
        if len(chunks) > FULL_LISTING_CHUNKS:
            return None
        everything = chunks_of(self.state.intent, FULL_LISTING_CHUNKS)  # a few steps at most
        if everything is not None and chunks >= everything:
            return None  # the whole mission: one listing of claims/ is as cheap, or cheaper
        return chunks

    def apply(self, live: LeaseListing | list[Lease]) -> None:
        """Hide tasks under other workers' live leases (in the chunks listed; see the module
        docstring for the others); adopt ours after a restart; collect expired leases of
        finished tasks; recompute the shares."""
        if not isinstance(live, LeaseListing):  # a plain listing of the whole bucket
            live = LeaseListing(live, None, list(self.leases.expired), time.monotonic())
        now = time.monotonic()
        for rel in live.expired:
            task = self._task_of(rel)
            if task is not None and task in self.state.fact:
                heapq.heappush(self._retiring, (now, rel))
        foreign, marks = self._kept(live)
        for lease in live.leases:
            task = self._task_of(lease.rel)
            if task is None:
                continue
            if self._lease_marks.get(task) != lease.expires and lease.worker != UNKNOWN:
                self.crew.observe(lease.worker, now)  # a new or renewed lease
            marks[task] = lease.expires
            if lease.worker != self.worker:
                foreign[task] = (lease.expires, live.started)
            elif not self._adopted and task in self.state.fact:
                heapq.heappush(self._retiring, (now + self.retire_seconds, lease.rel))
            elif not self._adopted and task not in self.held and lease.rel not in self._touched:
                # Ours, from before a restart (only then: later listings may be older than a
                # release or completion we made meanwhile, and must not bring a lease back).
                self.held[task] = lease.etag
                if task in self.state.pending:
                    remaining = lease.expires - self.leases.server_now()
                    self.state.claim(task, time.time(), max(1.0, remaining), "adopted lease")
        self._lease_marks = marks
        self._foreign = foreign
        self.state.set_foreign(BitMap(foreign))
        self.state.set_contended(BitMap())  # fresh leases: help anywhere again
        self._helper_losses = 0
        self._adopted = True
        self._touched.clear()
        self.update_shares(now)

    def _kept(self, live: LeaseListing) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
        """What we knew of other workers' leases that this listing does not replace: those of
        chunks it did not list, and those learned since it started (a refused claim), until
        their expiry; and the expiry marks of the leases of chunks not listed."""
        server_now = self.leases.server_now()
        listed = live.chunks
        foreign = {
            task: (until, learned)
            for task, (until, learned) in self._foreign.items()
            if until > server_now
            and (
                learned >= live.started
                or (listed is not None and chunk_of_task(task) not in listed)
            )
        }
        marks = {}
        if listed is not None:
            marks = {
                task: until
                for task, until in self._lease_marks.items()
                if until > server_now and chunk_of_task(task) not in listed
            }
        return foreign, marks

    def update_shares(self, now: float, *, offline: bool = False) -> None:
        """Work our share of the pending tasks; help with the others' where it is safe (see
        affinity.Crew): in an optimistic fleet, not while cut off from S3."""
        before = self.crew.members
        changed = self.crew.shares(now, offline=offline)
        if changed is not None:
            self.state.set_shares(*changed, self.crew.help_order, self.crew.own_start)
            if self.crew.members != before:
                members = self.crew.members
                log.info("work shares among %d workers: %s", len(members), ", ".join(members))

    def _task_of(self, rel: str) -> int | None:
        try:
            return self.space.parse_rel(rel)
        except OutOfPlan:
            return None
