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
*server's* clock (every response carries a Date header; we track our offset to it), so workers'
clock skew does not matter. Blocking calls only; the sync engine runs them in threads.

The requests a worker's `mv` or `touch` waits for (acquire, renew, release, inspect) use the
store's `fast` client (short timeouts, no retry); listings use the patient background client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.exceptions

from fusefs.model.errors import Precondition
from fusefs.objects.s3store import S3Store, classify

CLAIMS = "claims"
GRACE = 5.0  # seconds of slack beyond a lease's end before another worker may take it over


@dataclass(frozen=True)
class Lease:
    rel: str
    worker: str
    etag: str
    expires: float  # server time (epoch seconds), grace included


class LeaseBook:
    def __init__(self, s3: S3Store, worker: str, lease_seconds: float) -> None:
        self.s3 = s3
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.offset = 0.0  # server clock - our clock, from the last response's Date header
        self._bodies: dict[str, tuple[str, float]] = {}  # etag -> (worker, lease seconds)
        self.expired: list[str] = []  # rels of the expired leases the last live() saw

    def server_now(self) -> float:
        return time.time() + self.offset

    def _track(self, response: dict[str, Any]) -> None:
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date:
            self.offset = parsedate_to_datetime(date).timestamp() - time.time()

    def _key(self, rel: str) -> str:
        return self.s3.key(CLAIMS, rel)

    def _body(self) -> bytes:
        return json.dumps({"worker": self.worker, "lease": self.lease_seconds}).encode()

    def _put(self, rel: str, **cond: str) -> str:
        self.s3._count("PUT")
        try:
            r = self.s3.fast.put_object(
                Bucket=self.s3.loc.bucket, Key=self._key(rel), Body=self._body(), **cond
            )
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise Precondition(rel) from None
            raise classify(e, f"PUT lease {rel}") from None
        except Exception as e:
            raise classify(e, f"PUT lease {rel}") from None
        self._track(r)
        return str(r["ETag"])

    def acquire(self, rel: str) -> str | None:
        """Create our lease (or take over an expired one); its ETag, or None if held by another."""
        try:
            return self._put(rel, IfNoneMatch="*")
        except Precondition:
            pass
        current = self.inspect(rel)
        if current is None:
            try:  # it was deleted meanwhile: try once more
                return self._put(rel, IfNoneMatch="*")
            except Precondition:
                return None
        if current.worker == self.worker or current.expires < self.server_now():
            try:
                return self._put(rel, IfMatch=current.etag)
            except Precondition:
                return None  # someone else took it over first
        return None

    def renew(self, rel: str, etag: str) -> str | None:
        """Extend our lease; None if it is no longer ours (taken over after it expired)."""
        try:
            return self._put(rel, IfMatch=etag)
        except Precondition:
            return None

    def release(self, rel: str, etag: str) -> None:
        """Delete our lease; a lease someone else took over is left alone."""
        self.s3._count("DELETE")
        try:
            r = self.s3.fast.delete_object(
                Bucket=self.s3.loc.bucket, Key=self._key(rel), IfMatch=etag
            )
            self._track(r)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code not in (404, 409, 412):
                raise classify(e, f"DELETE lease {rel}") from None
        except Exception as e:
            raise classify(e, f"DELETE lease {rel}") from None

    def delete_many(self, rels: list[str]) -> None:
        """Delete retired leases, up to 1,000 per request (tombstones of finished tasks)."""
        self.s3.delete_many([self._key(rel) for rel in rels], "leases")

    def inspect(self, rel: str) -> Lease | None:
        self.s3._count("GET")
        try:
            r = self.s3.fast.get_object(Bucket=self.s3.loc.bucket, Key=self._key(rel))
            body = r["Body"].read()
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise classify(e, f"GET lease {rel}") from None
        except Exception as e:
            raise classify(e, f"GET lease {rel}") from None
        self._track(r)
        worker, seconds = self._parse(body)
        etag = str(r["ETag"])
        self._bodies[etag] = (worker, seconds)
        return Lease(rel, worker, etag, r["LastModified"].timestamp() + seconds + GRACE)

    def _parse(self, body: bytes) -> tuple[str, float]:
        try:
            data = json.loads(body)
            return str(data["worker"]), float(data["lease"])
        except (ValueError, KeyError, TypeError):
            return "?", self.lease_seconds  # unreadable: treat as a lease of our length

    def live(self) -> list[Lease]:
        """Every lease in the bucket that has not expired (server time); one LIST + new GETs."""
        root = self.s3.key(CLAIMS, "")
        out = []
        kwargs: dict[str, Any] = {"Bucket": self.s3.loc.bucket, "Prefix": root}
        seen: set[str] = set()
        expired: list[str] = []
        try:
            while True:
                self.s3._count("LIST")
                r = self.s3.client.list_objects_v2(**kwargs)
                self._track(r)
                now = self.server_now()
                for obj in r.get("Contents", []):
                    rel, etag = self.s3.rel_of(CLAIMS, obj["Key"]), str(obj["ETag"])
                    seen.add(etag)
                    if etag not in self._bodies:
                        lease = self.inspect(rel)
                        if lease is None:
                            continue
                        etag = lease.etag
                    worker, seconds = self._bodies[etag]
                    expires = obj["LastModified"].timestamp() + seconds + GRACE
                    if expires > now:
                        out.append(Lease(rel, worker, etag, expires))
                    else:
                        expired.append(rel)
                if not r.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = r["NextContinuationToken"]
        except Exception as e:
            raise classify(e, "LIST claims/") from None
        self._bodies = {k: v for k, v in self._bodies.items() if k in seen}
        self.expired = expired
        return out
