"""Fleet-wide claims without a coordinator: lease objects in the bucket.

    {prefix}/{mission}/claims/{chunk}/{lat}/{lon}/{phrase}.csv   body: {"worker", "lease"}

Leases by chunk: `chunk` is the task id >> CHUNK_BITS (1,024 ids a chunk, s3store.py), computed
from the rel through the mission's TaskSpace, so it does not change when the intent does. A
refresh lists only the chunks a node works in (`live(chunks)`: one LIST per chunk page, see
fleet.py); `live()` without chunks lists every lease of the fleet (start-up, fsck, fleet view).
Keys of protocol v1 (`claims/{lat}/{lon}/{phrase}.csv`, no chunk) are never read as leases:
they expire where they are. A key whose chunk is not its rel's (another TaskSpace) is ignored.

A claim is ours only if we created the lease object (`If-None-Match: *`) or took over an expired
one (`If-Match` on the ETag we judged expired). Renewal rewrites it with `If-Match`; a release
deletes it with `If-Match`, so nobody deletes a lease someone else took over.

Completion retires the lease instead of deleting it: it stays, a tombstone, until every worker
has had time to learn the witness from its next refresh (the sync engine's `retire` delay), then
it is deleted with the other retired leases in one DeleteObjects request. So a worker whose view
is a refresh old cannot claim a task that was just finished (its lease create fails), without a
HEAD of the witness per claim. Expired leases of finished tasks are collected the same way by
whoever lists them.

The body is the same for all leases of one worker (no nonce), so its ETag names (worker, lease
seconds): a listing needs one GET per worker ever, not one per lease, to know whose leases it sees
and when they expire.

Time: a lease expires at its object's LastModified + its lease seconds + GRACE, judged on the
*server's* clock (`ObjectStore.server_time`: every response carries a Date header and the S3
store tracks our offset to it), so workers' clock skew does not matter. Blocking calls only; the
sync engine runs them in threads.

The requests a worker's `mv` or `touch` waits for (acquire, renew, release, inspect) use the
layout's `fast` store (short timeouts, no retry); listings use the patient background store.
A lost condition is the seam's PreconditionFailed (412, or 409 under a race), whatever the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusefs.objects.base import NotFound, ObjectInfo, PreconditionFailed
from fusefs.objects.s3store import CHUNK_BITS, S3Store

if TYPE_CHECKING:
    from fusefs.model.codec import TaskSpace

GRACE = 5.0  # seconds of slack beyond a lease's end before another worker may take it over
BODY_KEEP = 3600.0  # seconds a lease body (worker, lease seconds) stays cached unseen


def chunk_of_task(task: int) -> int:
    """The lease chunk of a task id."""
    return task >> CHUNK_BITS


def chunk_range(chunk: int) -> tuple[int, int]:
    """The task ids [lo, hi) of a lease chunk."""
    return chunk << CHUNK_BITS, (chunk + 1) << CHUNK_BITS


def chunks_of_part(space: TaskSpace, part: str, limit: int = 64) -> list[int] | None:
    """The lease chunks of a rel or of a directory of rels (`LAT/`, `LAT/LON/`); None for ""
    (everything), for more than `limit` chunks, or for a part naming no task of the space."""
    names = [p for p in part.split("/") if p]
    row = space.row_of(names[0]) if names else None
    if row is None:
        return None
    lo, hi = space.row_range(row)
    if len(names) > 1:
        col = space.col_of(names[1])
        if col is None:
            return None
        lo, hi = space.tile_range(row, col)
    if len(names) > 2:
        phrase = space.phrase_of(names[2])
        if phrase is None:
            return None
        lo, hi = lo + phrase, lo + phrase + 1
    first, last = chunk_of_task(lo), chunk_of_task(hi - 1)
    return list(range(first, last + 1)) if last - first < limit else None


@dataclass(frozen=True)
class Lease:
    rel: str
    worker: str
    etag: str  # without quotes, as the ObjectStore gives it
    expires: float  # server time (epoch seconds), grace included


class LeaseBook:
    """One worker's lease requests. `space` maps a rel to its chunk: required to write or read
    a lease by rel; a book without one (the fleet view) can only list (`live`)."""

    def __init__(
        self, s3: S3Store, worker: str, lease_seconds: float, space: TaskSpace | None = None
    ) -> None:
        self.s3 = s3
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.space = space
        self._bodies: dict[str, tuple[str, float]] = {}  # etag -> (worker, lease seconds)
        self._body_seen: dict[str, float] = {}  # etag -> server time last listed
        self.expired: list[str] = []  # rels of the expired leases the last live() saw
        # rel -> expiry (server time) of the other worker's lease that refused our last
        # acquire of it: how long the task is someone else's (fleet.py keeps it hidden).
        self.refused: dict[str, float] = {}

    def server_now(self) -> float:
        return self.s3.server_time()

    @property
    def offset(self) -> float:
        """Server clock - our clock, as of the store's last response."""
        return self.server_now() - time.time()

    def chunk_of(self, rel: str) -> int:
        """The chunk of a rel (OutOfPlan if it names no task of the space)."""
        if self.space is None:
            raise ValueError("a lease book without a TaskSpace cannot name lease keys")
        return chunk_of_task(self.space.parse_rel(rel))

    def _key(self, rel: str) -> str:
        return self.s3.lease_key(self.chunk_of(rel), rel)

    def _body(self) -> bytes:
        return json.dumps({"worker": self.worker, "lease": self.lease_seconds}).encode()

    def _put(self, rel: str, *, create: bool = False, if_match: str | None = None) -> str:
        """Write our lease, conditionally; its ETag. PreconditionFailed if the condition lost."""
        return self.s3.fast.put(
            self._key(rel), self._body(), if_none_match=create, if_match=if_match
        )

    def acquire(self, rel: str) -> str | None:
        """Create our lease (or take over an expired one); its ETag, or None if held by another."""
        try:
            return self._put(rel, create=True)
        except PreconditionFailed:
            pass
        current = self.inspect(rel)
        if current is None:
            try:  # it was deleted meanwhile: try once more
                return self._put(rel, create=True)
            except PreconditionFailed:
                return None
        if current.worker == self.worker or current.expires < self.server_now():
            try:
                return self._put(rel, if_match=current.etag)
            except PreconditionFailed:
                return None  # someone else took it over first
        self.refused[rel] = current.expires
        return None

    def renew(self, rel: str, etag: str) -> str | None:
        """Extend our lease; None if it is no longer ours (taken over after it expired)."""
        try:
            return self._put(rel, if_match=etag)
        except PreconditionFailed:
            return None

    def release(self, rel: str, etag: str) -> None:
        """Delete our lease; a lease someone else took over (or already gone) is left alone."""
        try:
            self.s3.fast.delete(self._key(rel), if_match=etag)
        except PreconditionFailed:
            pass

    def delete_many(self, rels: list[str]) -> None:
        """Delete retired leases, up to 1,000 per request (tombstones of finished tasks)."""
        self.s3.delete_many([self._key(rel) for rel in rels], "leases")

    def inspect(self, rel: str) -> Lease | None:
        return self._inspect(rel, self._key(rel))

    def _inspect(self, rel: str, key: str) -> Lease | None:
        try:
            body, info = self.s3.fast.get(key)
        except NotFound:
            return None
        worker, seconds = self._parse(body)
        self._bodies[info.etag] = (worker, seconds)
        self._body_seen[info.etag] = self.server_now()
        return Lease(rel, worker, info.etag, info.last_modified + seconds + GRACE)

    def _parse(self, body: bytes) -> tuple[str, float]:
        try:
            data = json.loads(body)
            return str(data["worker"]), float(data["lease"])
        except (ValueError, KeyError, TypeError):
            return "?", self.lease_seconds  # unreadable: treat as a lease of our length

    def live(self, chunks: Iterable[int] | None = None) -> list[Lease]:
        """The leases that have not expired (server time) in the given chunks, or in the whole
        bucket (None); one LIST per chunk page, plus a GET per lease body not seen before (one
        per worker: see the module docstring). Sets `expired` to the expired leases seen."""
        wanted: list[int | None] = [None]
        if chunks is not None:
            wanted = [*sorted(set(chunks))]
        listed = [
            (rel, info)
            for chunk in wanted
            for c, rel, info in self.s3.leases_in(chunk)
            if self._ours(c, rel)
        ]
        return self._judge(listed)

    def _ours(self, chunk: int, rel: str) -> bool:
        """Is this listed key a lease of our space (its chunk is its rel's)? Without a space
        (the fleet view), every v2 key is."""
        if self.space is None:
            return True
        try:
            return chunk_of_task(self.space.parse_rel(rel)) == chunk
        except ValueError:
            return False

    def _judge(self, listed: list[tuple[str, ObjectInfo]]) -> list[Lease]:
        out = []
        expired: list[str] = []
        now = self.server_now()
        for rel, obj in listed:
            etag = obj.etag
            if etag not in self._bodies:
                lease = self._inspect(rel, obj.key)
                if lease is None:
                    continue
                etag = lease.etag
            self._body_seen[etag] = now
            worker, seconds = self._bodies[etag]
            expires = obj.last_modified + seconds + GRACE
            if expires > now:
                out.append(Lease(rel, worker, etag, expires))
            else:
                expired.append(rel)
        # Bodies are per worker, not per lease: keep those seen within BODY_KEEP (a partial
        # listing does not see every worker's leases each time).
        old = [e for e, seen in self._body_seen.items() if now - seen > BODY_KEEP]
        for etag in old:
            self._body_seen.pop(etag, None)
            self._bodies.pop(etag, None)
        self.expired = expired
        return out
