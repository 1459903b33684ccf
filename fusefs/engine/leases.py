"""Fleet-wide claims without a coordinator: lease objects in the bucket.

    {prefix}/{mission}/claims/{lat}/{lon}/{phrase}.csv   body: {"worker", "lease"}

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
from dataclasses import dataclass

from fusefs.objects.base import NotFound, PreconditionFailed
from fusefs.objects.s3store import CLAIMS, S3Store

GRACE = 5.0  # seconds of slack beyond a lease's end before another worker may take it over


@dataclass(frozen=True)
class Lease:
    rel: str
    worker: str
    etag: str  # without quotes, as the ObjectStore gives it
    expires: float  # server time (epoch seconds), grace included


class LeaseBook:
    def __init__(self, s3: S3Store, worker: str, lease_seconds: float) -> None:
        self.s3 = s3
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._bodies: dict[str, tuple[str, float]] = {}  # etag -> (worker, lease seconds)
        self.expired: list[str] = []  # rels of the expired leases the last live() saw

    def server_now(self) -> float:
        return self.s3.server_time()

    @property
    def offset(self) -> float:
        """Server clock - our clock, as of the store's last response."""
        return self.server_now() - time.time()

    def _key(self, rel: str) -> str:
        return self.s3.key(CLAIMS, rel)

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
        try:
            body, info = self.s3.fast.get(self._key(rel))
        except NotFound:
            return None
        worker, seconds = self._parse(body)
        self._bodies[info.etag] = (worker, seconds)
        return Lease(rel, worker, info.etag, info.last_modified + seconds + GRACE)

    def _parse(self, body: bytes) -> tuple[str, float]:
        try:
            data = json.loads(body)
            return str(data["worker"]), float(data["lease"])
        except (ValueError, KeyError, TypeError):
            return "?", self.lease_seconds  # unreadable: treat as a lease of our length

    def live(self) -> list[Lease]:
        """Every lease in the bucket that has not expired (server time); one LIST + new GETs."""
        out = []
        seen: set[str] = set()
        expired: list[str] = []
        for rel, obj in self.s3.objects_in(CLAIMS):
            etag = obj.etag
            seen.add(etag)
            if etag not in self._bodies:
                lease = self.inspect(rel)
                if lease is None:
                    continue
                etag = lease.etag
            worker, seconds = self._bodies[etag]
            expires = obj.last_modified + seconds + GRACE
            if expires > self.server_now():
                out.append(Lease(rel, worker, etag, expires))
            else:
                expired.append(rel)
        self._bodies = {k: v for k, v in self._bodies.items() if k in seen}
        self.expired = expired
        return out
