"""The pure state model: Intent, Fact, Claims and the live difference Pending.

Nothing here knows about FUSE, files or S3. All sets are roaring bitmaps of task ids, so a
national-scale mission fits in a few MiB and "which rows/tiles/tasks of this directory are
pending" is answered by range queries, never by scanning the mission.

Invariant kept by every method: pending == intent - fact - claimed - foreign, where `claimed`
are this node's claims and `foreign` the tasks under other workers' live leases.
Every method runs without awaiting, so on the trio thread each call is atomic.

What pending/ lists is `pending_view()`: `pending` itself or, when `elsewhere` holds other
workers' shares (affinity.py, strict and optimistic fleets), a window of WINDOW tasks: the first
ones of our share while it has any, from `own_start` up (then from the start: the first task of
our best-scored affinity chunk, so that workers who know different parts of the crew, at a
fleet's start, still start apart: a worker's best chunk is its own whoever else it knows), else the last ones of the other shares that are not
`protected` (shares of workers that went quiet or just came back: they may have finished tasks we
cannot know about). Owners work their shares upwards and helpers downwards, so they meet late, if
at all. With a `help_order` (ranges of task ids, the others' affinity chunks in this worker's
rendezvous order), a helper shows the last tasks of the first range that still has some, so
helpers spread over the others' shares instead of all showing the same last tasks.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from pyroaring import BitMap

from fusefs.model.codec import TaskSpace

WINDOW = 256  # pending tasks listed at a time in an optimistic fleet (see pending_view)


class View(Enum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"


class StateError(Exception):
    """A refused state transition; `reason` is for the log, the subclass picks the errno."""


class NotPending(StateError):
    pass


class NotClaimed(StateError):
    pass


@dataclass
class Claim:
    task: int
    claimed_at: float
    expires_at: float
    owner: str


Listener = Callable[[Iterable[int]], None]


class MissionState:
    def __init__(self, space: TaskSpace, intent: BitMap, fact: BitMap | None = None) -> None:
        self.space = space
        self.intent = intent
        self.fact = BitMap() if fact is None else fact
        self.claimed = BitMap()
        self.foreign = BitMap()
        self.claims: dict[int, Claim] = {}
        self._expiry: list[tuple[float, int]] = []
        self.pending = intent - self.fact
        self.elsewhere = BitMap()  # other live workers' shares: listed only when ours is empty
        self.protected = BitMap()  # the part of `elsewhere` not to be helped with now
        self.help_order: list[tuple[int, int]] = []  # [lo, hi) ranges, helped first to last
        self.own_start = 0  # where our view of our share starts (then wraps round)
        self.contended = BitMap()  # not to help with until the next lease listing (see contend)
        self._view: BitMap | None = None  # cached pending_view(); dropped on every change
        self._listed = BitMap()  # the last view computed, to tell listeners what left it
        self._listeners: list[Listener] = []

    # -- observation ---------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """`listener(tasks)` is called after tasks change view (e.g. to invalidate caches)."""
        self._listeners.append(listener)

    def notify(self, tasks: Iterable[int]) -> None:
        """Tell listeners that tasks changed although their view did not (e.g. new content)."""
        self._changed(tasks)

    def _changed(self, tasks: Iterable[int]) -> None:
        self._view = None
        for listener in self._listeners:
            listener(tasks)

    def pending_view(self) -> BitMap:
        """The pending tasks pending/ lists (see the module docstring)."""
        if not self.elsewhere:
            return self.pending
        view = self._view
        if view is None:
            mine = self.pending - self.elsewhere
            if mine:
                view = self._own_window(mine)
            else:
                view = self._help_window(self.pending - self.protected - self.contended)
            left = self._listed - view
            self._view = self._listed = view
            if left:  # names that were listed and are no longer: tell the caches
                for listener in self._listeners:
                    listener(left)
        return view

    def _own_window(self, mine: BitMap) -> BitMap:
        """The first WINDOW tasks of our share from `own_start` up, then from its start."""
        first = mine.rank(self.own_start - 1) if self.own_start else 0  # index of the first
        view = mine[first : first + WINDOW]
        if len(view) < WINDOW and first:
            view |= mine[: min(first, WINDOW - len(view))]
        return view

    def _help_window(self, helpable: BitMap) -> BitMap:
        """The tasks to help with: the last ones (up to WINDOW) of the first range of
        `help_order` that has any (the next range shows once it is done, or claimed), else
        the last WINDOW helpable tasks. One range at a time: two helpers show different ranges,
        so even near the end they rarely race for the same task."""
        for lo, hi in self.help_order:
            k = helpable.range_cardinality(lo, hi)
            if k:
                end = helpable.rank(hi - 1)  # index just past the range's last task
                return helpable[end - min(k, WINDOW) : end]
        n = len(helpable)
        return helpable[max(0, n - WINDOW) :] if n else BitMap()

    def set_shares(
        self,
        elsewhere: BitMap,
        protected: BitMap,
        help_order: list[tuple[int, int]] | None = None,
        own_start: int | None = None,
    ) -> None:
        """Replace the other workers' shares and the part of them not to be helped with (and
        the order to help in and where to start in our share, if given)."""
        reorder = (help_order is not None and help_order != self.help_order) or (
            own_start is not None and own_start != self.own_start
        )
        if not reorder and elsewhere == self.elsewhere and protected == self.protected:
            return
        before = self.pending_view().copy()
        if help_order is not None:
            self.help_order = help_order
        if own_start is not None:
            self.own_start = own_start
        self.elsewhere = elsewhere.copy()
        self.protected = protected & elsewhere
        self._view = None
        after = self.pending_view()
        if not self.elsewhere:
            self._listed = BitMap()
        moved = before ^ after
        if moved:
            for listener in self._listeners:
                listener(moved)

    def contend(self, tasks: BitMap) -> None:
        """A helper's claim in `tasks` (a range of another worker's share) lost to a lease:
        that worker is at work there, so help elsewhere until `set_contended` (the next lease
        listing) says otherwise. Never hides our own share."""
        self._set_contended(self.contended | (tasks & self.elsewhere))

    def set_contended(self, tasks: BitMap) -> None:
        self._set_contended(tasks & self.elsewhere)

    def _set_contended(self, tasks: BitMap) -> None:
        if tasks == self.contended:
            return
        before = self.pending_view().copy()
        self.contended = tasks
        self._view = None
        moved = before ^ self.pending_view()
        if moved:
            for listener in self._listeners:
                listener(moved)

    def bitmap(self, view: View) -> BitMap:
        if view is View.PENDING:
            return self.pending_view()
        if view is View.CLAIMED:
            return self.claimed
        return self.fact

    def counts(self) -> dict[str, int]:
        done = self.fact.intersection_cardinality(self.intent)
        return {
            "intent": len(self.intent),
            "done": done,
            "pending": len(self.pending),
            "claimed": len(self.claimed),
            "claimed_elsewhere": self.foreign.difference_cardinality(self.fact),
            "facts_outside_intent": len(self.fact) - done,
        }

    # -- transitions ---------------------------------------------------------------------------
    def claim(self, task: int, now: float, lease: float, owner: str = "") -> Claim:
        if task not in self.pending:
            if task in self.claimed:
                reason = "already claimed"
            elif task in self.fact:
                reason = "already done"
            elif task in self.foreign:
                reason = "claimed by another worker"
            else:
                reason = "not in the plan"
            raise NotPending(reason)
        c = Claim(task, now, now + lease, owner)
        self.pending.remove(task)
        self.claimed.add(task)
        self.claims[task] = c
        heapq.heappush(self._expiry, (c.expires_at, task))
        self._changed((task,))
        return c

    def renew(self, task: int, now: float, lease: float) -> Claim:
        c = self.claims.get(task)
        if c is None:
            raise NotClaimed("not claimed")
        c.claimed_at = now
        c.expires_at = now + lease
        heapq.heappush(self._expiry, (c.expires_at, task))
        self._changed((task,))  # its mtime and lease changed
        return c

    def release(self, task: int) -> None:
        if self.claims.pop(task, None) is None:
            raise NotClaimed("not claimed")
        self.claimed.remove(task)
        if task in self.intent and task not in self.fact and task not in self.foreign:
            self.pending.add(task)
        self._changed((task,))

    def claim_lost(self, task: int) -> None:
        """Our claim turned out to be another worker's lease: the task is theirs now."""
        if self.claims.pop(task, None) is not None:
            self.claimed.remove(task)
        self.foreign.add(task)
        self.pending.discard(task)
        self._changed((task,))

    def set_foreign(self, tasks: BitMap) -> None:
        """Replace the set of tasks leased by other workers (from a listing of live leases)."""
        added = tasks - self.foreign
        removed = self.foreign - tasks
        if not added and not removed:
            return
        self.foreign = tasks.copy()
        self.pending -= added
        self.pending |= ((removed & self.intent) - self.fact) - self.claimed
        self._changed(added | removed)

    def expire(self, now: float) -> list[int]:
        """Release every claim whose lease ended at or before `now`."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            when, task = heapq.heappop(self._expiry)
            c = self.claims.get(task)
            if c is not None and c.expires_at == when:
                self.release(task)
                expired.append(task)
        return expired

    def next_expiry(self) -> float | None:
        while self._expiry:
            when, task = self._expiry[0]
            c = self.claims.get(task)
            if c is not None and c.expires_at == when:
                return when
            heapq.heappop(self._expiry)
        return None

    def add_fact(self, task: int) -> bool:
        """A witness exists for `task`; ends its claim. Returns False if it was already known."""
        if task in self.fact:
            return False
        self.fact.add(task)
        self.pending.discard(task)
        if self.claims.pop(task, None) is not None:
            self.claimed.remove(task)
        self._changed((task,))
        return True

    def add_facts(self, tasks: BitMap) -> BitMap:
        """Merge many facts at once (start-up reconcile, remote listing); returns the new ones."""
        new = tasks - self.fact
        if not new:
            return new
        self.fact |= new
        self.pending -= new
        ended = new & self.claimed
        if ended:
            self.claimed -= ended
            for t in ended:
                del self.claims[t]
        self._changed(new)
        return new

    def remove_facts(self, tasks: BitMap) -> BitMap:
        """Forget facts whose witness turned out not to exist (files are the truth)."""
        gone = tasks & self.fact
        if not gone:
            return gone
        self.fact -= gone
        self.pending |= ((gone & self.intent) - self.claimed) - self.foreign
        self._changed(gone)
        return gone

    # -- per-directory queries (cost grows with the answer, not with the mission) -------------
    def rows(self, view: View, start: int = 0) -> Iterator[int]:
        """Rows (lat indices) >= start that hold at least one task of `view`."""
        return groups(
            self.bitmap(view), start * self.space.row_size, self.space.size, self.space.row_size, 0
        )

    def tiles(self, view: View, row: int, start_col: int = 0) -> Iterator[int]:
        """Columns >= start_col of `row` whose tile holds at least one task of `view`."""
        lo, hi = self.space.row_range(row)
        return groups(
            self.bitmap(view), lo + start_col * self.space.tile_size, hi, self.space.tile_size, lo
        )

    def tasks(self, view: View, row: int, col: int, start_phrase: int = 0) -> Iterator[int]:
        """Task ids of tile (row, col), phrase >= start_phrase, that are in `view`."""
        lo, hi = self.space.tile_range(row, col)
        bm = self.bitmap(view)
        for t in bm.iter_equal_or_larger(lo + start_phrase):
            if t >= hi:
                return
            yield t

    def row_has(self, view: View, row: int) -> bool:
        lo, hi = self.space.row_range(row)
        return self.bitmap(view).range_cardinality(lo, hi) > 0

    def tile_has(self, view: View, row: int, col: int) -> bool:
        lo, hi = self.space.tile_range(row, col)
        return self.bitmap(view).range_cardinality(lo, hi) > 0

    # Lookups resolve more than listings show: every pending task (the listed view may be a
    # window of them, see pending_view), so any pending task can be claimed by name, and every
    # planned row and tile in claimed/ and done/.
    def row_reachable(self, view: View, row: int) -> bool:
        return self._reachable(view, *self.space.row_range(row))

    def tile_reachable(self, view: View, row: int, col: int) -> bool:
        return self._reachable(view, *self.space.tile_range(row, col))

    def _reachable(self, view: View, lo: int, hi: int) -> bool:
        if view is View.PENDING:
            # Our own claims keep their pending/ dirs reachable (not listed): the kernel must
            # resolve pending/LAT/LON for `mv claimed/REL pending/REL`, the documented release,
            # even when the claim took the tile's last pending task.
            return (
                self.pending.range_cardinality(lo, hi) > 0
                or self.claimed.range_cardinality(lo, hi) > 0
            )
        return self.intent.range_cardinality(lo, hi) > 0 or self.fact.range_cardinality(lo, hi) > 0


def groups(bm: BitMap, pos: int, end: int, size: int, base: int) -> Iterator[int]:
    """Indices (relative to base, in units of `size`) of the groups in [pos, end) that hold a bit."""
    while pos < end:
        try:
            t = bm.next_set_bit(pos)
        except ValueError:
            return
        if t >= end:
            return
        g = (t - base) // size
        yield g
        pos = base + (g + 1) * size
