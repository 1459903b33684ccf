"""The `ObjectStore` interface: exactly the S3 calls the missionfs protocol makes, and one
classification of their failures.

Every backend (boto3 against AWS/SeaweedFS/moto, or the in-process `MemoryStore`) answers the
same way, which tests/mount/test_objects_conformance.py proves call by call. The calls block: callers
on the trio loop wrap them in `trio.to_thread.run_sync`.

Contract points that are not obvious from S3's own documentation:

- **ETags** are returned and accepted *without* the surrounding double quotes (the S3
  implementation adds them on the wire). For a single-part PUT it is the MD5 of the body, hex.
- **Conditional writes.** `put(if_none_match=True)` creates only if no object exists;
  `put(if_match=etag)` and `delete(if_match=etag)` act only on the object with that ETag. A
  failed condition raises `PreconditionFailed`, also when the object does not exist at all:
  AWS and moto answer `404 NoSuchKey` there, SeaweedFS `412`, so the only portable answer is
  "the object is not the one you read". Two racing conditional creates may also lose with
  `409 ConditionalRequestConflict` on AWS: that is a `PreconditionFailed` too.
- **Keys** are checked by `check_key` before any request, on every backend: 1 to 1024 UTF-8
  bytes, `/`-separated segments of 1 to 255 bytes, no `.` or `..` segment, no backslash.
  Reason: SeaweedFS (a filer underneath) turns `\\` into `/`, drops a leading `/`, merges `//`,
  refuses `.`/`..` segments and names longer than 255 bytes, so such keys would silently
  alias other keys there. Callers encode what they need (fusefs.model.codec escapes file names).
  Spaces, unicode, `+`, `%`, `?`, `#` and control characters other than NUL are fine.
- **Time.** `last_modified` is epoch seconds (S3 keeps whole seconds). `server_time()` is the
  server's clock as of the last response's `Date` header, advanced by our monotonic clock, so
  lease expiry can be judged on the server's clock whatever our skew.
- **Retries.** botocore retries a request whose answer was lost; a conditional write retried
  that way can answer PreconditionFailed although its first attempt won. Callers compare what
  is there (the protocol does: a lease names its worker, a witness carries its SHA-256).
- **Requests** are counted per kind in `requests` (PUT, GET, HEAD, LIST, DELETE, and POST for a
  DeleteObjects batch), the way S3 bills them: one LIST per page, one POST per 1,000 deletes.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fusefs.model.errors import (
    Precondition,
    S3ConfigError,
    S3NoCredentials,
    S3Timeout,
    S3Unavailable,
)

PAGE = 1000  # S3's largest ListObjectsV2 page and DeleteObjects batch
KEY_MAX = 1024  # bytes of UTF-8: S3's key length limit
SEGMENT_MAX = 255  # bytes of UTF-8 per `/`-separated segment: SeaweedFS's (a filer's) name limit

KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
READS = frozenset({"GET", "HEAD", "LIST"})  # S3's 5,500/s-per-prefix class; the rest 3,500/s


# -- errors -----------------------------------------------------------------------------------
# One classification for the whole program. The layers above caught fusefs.model.errors'
# S3ConfigError / S3Unavailable / Precondition long before this seam existed (model cannot import
# objects, objects may import model), so each class here also *is* the model class it refines:
# `except S3Unavailable` and `except Unavailable` catch the same failures, and nothing needs a
# translation table. Code above the seam may catch either name; new code should prefer these.
class ObjectStoreError(Exception):
    """Any failure of an object-store call, already classified; the message is one line and
    never contains credentials."""


class PreconditionFailed(ObjectStoreError, Precondition):
    """A conditional write or delete lost: the object exists (If-None-Match), has another ETag
    or is gone (If-Match). HTTP 412, or 409 ConditionalRequestConflict under a race."""


class NotFound(ObjectStoreError, S3ConfigError):
    """GET of a key that does not exist (HEAD answers None instead). An S3ConfigError for the
    callers that predate the seam: retrying the same GET does not make the key appear."""


class Unavailable(ObjectStoreError, S3Unavailable):
    """The endpoint cannot be reached, timed out, or answered 5xx: retry later, with backoff.
    `sent` (from S3Unavailable) is False only when no connection could be made."""


class Timeout(Unavailable, S3Timeout):
    """The endpoint took the connection (or not) but did not answer in time: "degraded"."""


class SlowDown(Unavailable):
    """503 SlowDown: too many requests on one prefix; back off before trying again."""


class ConfigError(ObjectStoreError, S3ConfigError):
    """Will not work until someone changes a setting: no such bucket, no credentials, a
    request the server does not implement. Retrying does not help."""


class NoCredentials(ConfigError, S3NoCredentials):
    """No credentials at all: a mount works offline (warned), a sync is refused."""


class AccessDenied(ConfigError):
    """403: the credentials are wrong, expired, or not allowed to do this."""


class BadDigest(ObjectStoreError, S3ConfigError):
    """The body does not match the SHA-256 sent with it: the server refused to store it.
    An S3ConfigError for the callers that predate the seam: sending it again will not help."""


class InvalidKey(ObjectStoreError, ValueError):
    """The key breaks the contract of `check_key`: refused before any request is made."""


def check_key(key: str) -> str:
    """Return `key` if every backend stores it under exactly that name; else raise InvalidKey.

    See the module docstring for why each rule exists (SeaweedFS's filer rewrites such keys).
    """
    raw = key.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > KEY_MAX:
        raise InvalidKey(f"key of {len(raw)} bytes: must be 1 to {KEY_MAX}")
    if "\\" in key or "\0" in key:
        raise InvalidKey(f"key {key!r}: no backslash or NUL (SeaweedFS reads `\\` as `/`)")
    for seg in key.split("/"):
        if not seg or seg in (".", ".."):
            raise InvalidKey(f"key {key!r}: empty, '.' or '..' segment")
        if len(seg.encode("utf-8", "surrogatepass")) > SEGMENT_MAX:
            raise InvalidKey(f"key {key!r}: a segment over {SEGMENT_MAX} bytes")
    return key


# -- values -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectInfo:
    """One object as HEAD, GET or a listing sees it.

    `metadata` is the user metadata (`x-amz-meta-*`, names lower-cased) from HEAD and GET; a
    listing does not carry it, and says so with None (not an empty mapping).
    """

    key: str
    size: int
    etag: str  # without quotes
    last_modified: float  # epoch seconds, whole seconds
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ObjectVersion:
    """One version of a key in a versioned bucket (`missionfs log` reads who wrote what).

    A delete marker has `size` and `etag` None."""

    key: str
    version_id: str
    last_modified: float
    is_latest: bool
    size: int | None
    etag: str | None

    @property
    def deleted(self) -> bool:
        return self.size is None


@dataclass(frozen=True)
class ListPage:
    """One ListObjectsV2 page: objects and common prefixes, each in key order, and the token
    for the next page (None on the last one)."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None


class RequestCounter:
    """Requests made, by kind (see KINDS); thread-safe, since uploads run in many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + n

    def __getitem__(self, kind: str) -> int:
        with self._lock:
            return self._counts.get(kind, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts (kinds never requested are absent)."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


Offload = Callable[[Callable[[], Any]], Awaitable[Any]]
"""How a caller on trio's thread runs a blocking call (the engine's policy: which threads,
abandoned or not at shutdown); `put_async` takes it for what it cannot do without a thread."""


# -- the interface ----------------------------------------------------------------------------
class ObjectStore(ABC):
    """One bucket. Implementations must be thread-safe: uploads run in many worker threads."""

    requests: RequestCounter

    @abstractmethod
    def check(self) -> None:
        """Verify the bucket exists and answers (one HEAD). Raises ConfigError/AccessDenied
        (refuse to start) or Unavailable (start offline, retry later)."""

    @abstractmethod
    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sha256: str | None = None,
    ) -> str:
        """Store `body` at `key`; return its ETag.

        `if_none_match`: create only (PreconditionFailed if the key exists). `if_match`: replace
        only the object with this ETag. `metadata`: user metadata (ASCII names and values).
        `sha256` (hex): the server verifies the body against it (BadDigest), where the server
        supports that (moto ignores it; see the conformance test).
        """

    async def put_async(
        self,
        key: str,
        body: bytes,
        *,
        offload: Offload,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
        sha256: str | None = None,
        body_sha256: str | None = None,
    ) -> str:
        """`put` for a caller on trio's thread (the daemon's witness uploads). By default it is
        `put` through `offload`; a store that can answer without a thread overrides it (S3's
        thin path: trio streams). `body_sha256`: the body's SHA-256 (hex) if the caller has
        it, so it need not be computed again."""
        call = functools.partial(
            self.put, key, body, if_none_match=if_none_match, metadata=metadata, sha256=sha256
        )
        return str(await offload(call))

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The body and its info (with metadata); NotFound if there is no such key."""

    @abstractmethod
    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        """The object's info (with metadata), or None if there is no such key (or version).
        HEAD cannot tell a missing bucket from a missing key: `check()` first."""

    @abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete `key`; a missing key is fine unless `if_match` is given (PreconditionFailed
        then, as when the ETag differs)."""

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete keys, up to 1,000 per request (one POST each); missing keys are fine.
        Unavailable if the server refused any of them (safe to repeat)."""

    @abstractmethod
    def list_page(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = PAGE,
    ) -> ListPage:
        """One page (one LIST request) of the keys under `prefix`, after `start_after`.

        With a delimiter, keys with the delimiter after the prefix are rolled up into common
        prefixes; `max_keys` counts objects and prefixes together, as S3 does.
        """

    @abstractmethod
    def versioning_enabled(self) -> bool:
        """Does the bucket keep every version (GetBucketVersioning, counted as a GET)?"""

    @abstractmethod
    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Every version and delete marker under `prefix` (ListObjectVersions, one LIST per
        page): by key, then newest first (by LastModified, whole seconds; versions of one second
        keep the server's order)."""

    @abstractmethod
    def server_time(self) -> float:
        """The server's clock now (epoch seconds), as of its last response."""

    # -- conveniences over list_page, shared by every backend ---------------------------------
    def list(
        self, prefix: str, *, start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object under `prefix` in key order, page after page (one LIST each). With a
        delimiter, only the objects at this level (see `common_prefixes` for the rest)."""
        token: str | None = None
        while True:
            page = self.list_page(prefix, start_after=start_after, delimiter=delimiter, token=token)
            yield from page.objects
            if page.next_token is None:
                return
            token = page.next_token

    def common_prefixes(
        self, prefix: str, *, delimiter: str = "/", start_after: str | None = None
    ) -> Iterator[str]:
        """The 'subdirectories' of `prefix`: each common prefix once, in key order."""
        token: str | None = None
        while True:
            page = self.list_page(prefix, start_after=start_after, delimiter=delimiter, token=token)
            yield from page.prefixes
            if page.next_token is None:
                return
            token = page.next_token


def chunks(keys: Iterable[str], size: int = PAGE) -> Iterator[list[str]]:
    """`keys` in lists of at most `size` (one DeleteObjects request each)."""
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
