"""Work affinity: which share of the mission each live worker prefers.

With optimistic claims a worker cut off from S3 keeps claiming locally; two workers that both
pick from the whole pending set then do the same tasks twice. So each worker prefers a share:
the intent is cut into CHUNKS ranges of equal size (quantiles of the intent bitmap, so a sparse
intent tree is balanced as well as a grid) and each chunk goes to the live worker with the highest
rendezvous hash of (worker, chunk). Every worker computes the same owners from the same members;
a worker joining or leaving moves only its own chunks. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pyroaring import BitMap

CHUNKS = 1024
MEMBER_SECONDS = 600.0  # a worker seen at work this recently keeps its share
SETTLE_SECONDS = 60.0  # a worker heard from again after a silence is not helped for this long


def _score(worker: str, chunk: int) -> bytes:
    return hashlib.blake2b(f"{worker}\0{chunk}".encode(), digest_size=8).digest()


def _scores(worker: str, chunks: int) -> list[int]:
    """`_score(worker, c)` of every chunk, as integers (same order as the bytes)."""
    return [int.from_bytes(_score(worker, c), "big") for c in range(chunks)]


def owner(chunk: int, workers: Iterable[str]) -> str:
    return max(workers, key=lambda w: _score(w, chunk))


def chunk_bounds(intent: BitMap, chunks: int = CHUNKS) -> list[int]:
    """Task ids where chunks start: chunk c is [bounds[c], bounds[c + 1])."""
    n = len(intent)
    k = max(1, min(chunks, n))
    starts = [intent[c * n // k] for c in range(1, k)] if n else []
    return [0, *starts, (intent.max() + 1) if n else 0]


def shares(intent: BitMap, workers: Iterable[str], chunks: int = CHUNKS) -> dict[str, BitMap]:
    """Every worker's share of the intent (they partition it)."""
    members = sorted(set(workers))
    out = {w: BitMap() for w in members}
    if not members:
        return out
    bounds = chunk_bounds(intent, chunks)
    for c in range(len(bounds) - 1):
        if bounds[c] < bounds[c + 1]:
            out[owner(c, members)].add_range(bounds[c], bounds[c + 1])
    return {w: s & intent for w, s in out.items()}


def help_order(
    intent: BitMap, workers: Iterable[str], me: str, chunks: int = CHUNKS
) -> list[tuple[int, int]]:
    """The chunks owned by other workers than `me`, as [lo, hi) task ranges, in the order of
    `me`'s rendezvous score: the order `me` helps in once its own share is done. Every helper
    has its own order, so helpers spread over the others' shares instead of crowding one end."""
    members = sorted(set(workers) | {me})
    if len(members) == 1:
        return []
    bounds = chunk_bounds(intent, chunks)
    theirs = [
        c for c in range(len(bounds) - 1) if bounds[c] < bounds[c + 1] and owner(c, members) != me
    ]
    theirs.sort(key=lambda c: _score(me, c), reverse=True)
    return [(bounds[c], bounds[c + 1]) for c in theirs]


def others_share(intent: BitMap, workers: Iterable[str], me: str, chunks: int = CHUNKS) -> BitMap:
    """The tasks of the chunks owned by other workers than `me` (empty if `me` is alone)."""
    members = set(workers) | {me}
    if len(members) == 1:
        return BitMap()
    return intent - shares(intent, members, chunks)[me]


class Crew:
    """The workers seen at work lately and the shares that follow, from one worker's view.

    Activity is what the sync engine observes (a new manifest or segment line, a new or
    renewed lease), in monotonic time. `shares()` answers (others' shares, the part of them not
    to help with). With `guard` (optimistic fleets): a worker silent for `quiet` seconds, or
    back from a silence for less than SETTLE_SECONDS, may hold finished work nobody can see yet,
    so its share is protected; offline, all are. Without (strict fleets: no work without a
    lease, which hides its task), nothing is protected: a silent worker's share is helped.
    """

    def __init__(self, me: str, intent: BitMap, quiet: float, *, guard: bool = True) -> None:
        self.me = me
        self.intent = intent
        self.quiet = quiet
        self.guard = guard
        self.last_seen: dict[str, float] = {}
        self.active_since: dict[str, float] = {}
        self._key: tuple[tuple[str, ...], tuple[str, ...]] = ((me,), ())
        self._shares: dict[str, BitMap] = {}
        # The others' chunks as task-id ranges, in our rendezvous order: where we help first.
        self.help_order: list[tuple[int, int]] = []
        # The first task id of our best-scored chunk: where our view of our share starts (see
        # MissionState.pending_view). A worker's best chunk is its own under any crew, so
        # workers that know different parts of the crew still start in different places.
        self.own_start = 0
        self._scores: dict[str, list[int]] = {}  # worker -> its score of every chunk

    def _split(self, members: list[str]) -> None:
        """Shares and help order for `members`, as shares() and help_order() compute them,
        with each worker's chunk scores hashed once (not once per change of the members: at a
        thousand workers that is a million hashes)."""
        bounds = chunk_bounds(self.intent)
        n = len(bounds) - 1
        self._scores = {
            w: cached if len(cached := self._scores.get(w, [])) == n else _scores(w, n)
            for w in members
        }
        columns = [self._scores[w] for w in members]
        out = {w: BitMap() for w in members}
        order: list[tuple[int, int, int]] = []  # (chunk, lo, hi) of the others' chunks
        own: list[int] = []  # our chunks
        for c, col in enumerate(zip(*columns, strict=True)):
            if bounds[c] < bounds[c + 1]:
                w = members[col.index(max(col))]
                out[w].add_range(bounds[c], bounds[c + 1])
                if w == self.me:
                    own.append(c)
                else:
                    order.append((c, bounds[c], bounds[c + 1]))
        self._shares = {w: share & self.intent for w, share in out.items()}
        mine = self._scores[self.me]
        order.sort(key=lambda o: mine[o[0]], reverse=True)
        self.help_order = [(lo, hi) for _, lo, hi in order] if len(members) > 1 else []
        self.own_start = bounds[max(own, key=lambda c: mine[c])] if own else 0

    @property
    def members(self) -> tuple[str, ...]:
        """The workers the current shares are computed for (us included)."""
        return self._key[0]

    def observe(self, worker: str, now: float) -> None:
        last = self.last_seen.get(worker)
        if last is None or now - last > self.quiet:
            self.active_since[worker] = now  # first seen, or back after a silence
        self.last_seen[worker] = now

    def shares(self, now: float, *, offline: bool = False) -> tuple[BitMap, BitMap] | None:
        """(elsewhere, protected) if they changed since the last call, else None."""
        members = sorted(
            {w for w, seen in self.last_seen.items() if now - seen < MEMBER_SECONDS} | {self.me}
        )
        guarded = tuple(
            w
            for w in members
            if w != self.me
            and self.guard
            and (
                offline
                or now - self.last_seen[w] > self.quiet
                or now - self.active_since[w] < SETTLE_SECONDS
            )
        )
        key = (tuple(members), guarded)
        if key == self._key:
            return None
        if key[0] != self._key[0] or not self._shares:
            self._split(members)
        self._key = key
        others = [s for w, s in self._shares.items() if w != self.me]
        elsewhere = BitMap.union(BitMap(), *others)
        protected = BitMap.union(BitMap(), *(self._shares[w] for w in guarded))
        return elsewhere, protected
