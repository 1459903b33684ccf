"""An in-process `ObjectStore`: one bucket in a dict, for the engine test tier and the fleet
simulator. It behaves like AWS S3 on every call the protocol makes (proved by
tests/mount/test_objects_conformance.py, which runs the same tests against moto and SeaweedFS).

What it models: atomic conditional create/replace/delete (one lock), ETag = MD5 of the body,
LastModified in whole seconds from an injectable clock, lexicographic (UTF-8 byte order)
listings with start_after, delimiter and 1,000-key pages, DeleteObjects batches, user metadata,
SHA-256 verification, and request counts. Optionally a `limiter` judges every request before
it runs, e.g. `PrefixLimiter` for S3's per-prefix request rates (503 SlowDown beyond them).
Latency is not modelled here: a simulator awaits it on its own (virtual) clock around calls.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from fusefs.objects.base import (
    KEY_MAX,
    PAGE,
    READS,
    BadDigest,
    ConfigError,
    ListPage,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectVersion,
    PreconditionFailed,
    RequestCounter,
    SlowDown,
    check_key,
    chunks,
)


class Limiter(Protocol):
    """Judges each request before it runs; raises SlowDown (or another ObjectStoreError) to
    refuse it. `key` is the object key, or the listed prefix for a LIST."""

    def admit(self, kind: str, key: str, now: float) -> None: ...


def parent_prefix(key: str) -> str:
    """The default partition of a key: everything up to its last `/` (its 'directory')."""
    return key.rpartition("/")[0]


class PrefixLimiter:
    """S3's documented per-prefix request rates: 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD
    (and LIST) per second per prefix; beyond them, 503 SlowDown.

    Counted in fixed one-second windows of the store's clock (deterministic under a virtual
    clock). `prefix_of` decides what a 'prefix' is (S3 partitions by key prefix; by default
    the key's parent). A refused request counts too, as on S3, and `slowdowns` counts refusals
    per prefix for reports. Thread-safe.
    """

    def __init__(
        self,
        writes_per_s: int = 3500,
        reads_per_s: int = 5500,
        prefix_of: Callable[[str], str] = parent_prefix,
    ) -> None:
        self.writes_per_s = writes_per_s
        self.reads_per_s = reads_per_s
        self.prefix_of = prefix_of
        self.slowdowns: dict[str, int] = {}
        self.peak: dict[str, int] = {}  # prefix -> most requests seen in one second
        self._window = -1
        self._counts: dict[tuple[str, bool], int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, key: str, now: float) -> None:
        prefix = self.prefix_of(key)
        read = kind in READS
        with self._lock:
            window = math.floor(now)
            if window != self._window:  # a new second: every prefix starts afresh
                self._window, self._counts = window, {}
            n = self._counts.get((prefix, read), 0) + 1
            self._counts[(prefix, read)] = n
            self.peak[prefix] = max(self.peak.get(prefix, 0), n)
            if n > (self.reads_per_s if read else self.writes_per_s):
                self.slowdowns[prefix] = self.slowdowns.get(prefix, 0) + 1
                raise SlowDown(f"{kind} {key}: 503 SlowDown (over {n - 1}/s on {prefix!r})")


@dataclass(frozen=True)
class _Object:
    body: bytes
    etag: str
    last_modified: float
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class _Version:
    version_id: str
    obj: _Object | None  # None: a delete marker
    last_modified: float


class MemoryStore(ObjectStore):
    """One bucket in memory. `clock` is the server's clock (epoch seconds): `time.time` by
    default, a virtual clock in simulations. `versioned`: the bucket keeps every version, as
    with S3 versioning enabled (deletes leave markers). Thread-safe: one lock around every
    request."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        limiter: Limiter | None = None,
        bucket_exists: bool = True,
        versioned: bool = False,
    ) -> None:
        self.clock = clock
        self.limiter = limiter
        self.bucket_exists = bucket_exists  # False: every call fails as with a missing bucket
        self.requests = RequestCounter()
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted; str order is UTF-8 byte order, as S3 lists
        self._lock = threading.Lock()
        self.versioned = versioned
        self._history: dict[str, list[_Version]] = {}  # oldest first; only when versioned
        self._version_seq = 0

    def _request(self, kind: str, key: str) -> None:
        """Count a request and let the limiter judge it (a refused request still counts)."""
        self.requests.add(kind)
        if self.limiter is not None:
            self.limiter.admit(kind, key, self.clock())
        if not self.bucket_exists:
            raise ConfigError(f"{kind} {key}: no such bucket")

    def check(self) -> None:
        self._request("HEAD", "")

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
        check_key(key)
        if if_none_match and if_match is not None:
            raise ValueError("put: if_none_match and if_match exclude each other")
        body = bytes(body)
        self._request("PUT", key)
        if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256.lower():
            raise BadDigest(f"PUT {key}: the body does not match its SHA-256")
        meta = {k.lower(): v for k, v in (metadata or {}).items()}
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        with self._lock:
            old = self._objects.get(key)
            if if_none_match and old is not None:
                raise PreconditionFailed(f"PUT {key}: exists")
            if if_match is not None and (old is None or old.etag != if_match):
                raise PreconditionFailed(f"PUT {key}: not the object with ETag {if_match}")
            if old is None:
                bisect.insort(self._keys, key)
            obj = _Object(body, etag, float(math.floor(self.clock())), meta)
            self._objects[key] = obj
            self._record(key, obj)
        return etag

    def _record(self, key: str, obj: _Object | None) -> None:
        """Keep a version (or a delete marker) of `key`, if versioned; the caller holds the lock."""
        if not self.versioned:
            return
        self._version_seq += 1
        version = _Version(f"{self._version_seq:016d}", obj, float(math.floor(self.clock())))
        self._history.setdefault(key, []).append(version)

    def _info(self, key: str, obj: _Object, with_meta: bool) -> ObjectInfo:
        meta = dict(obj.metadata) if with_meta else None
        return ObjectInfo(key, len(obj.body), obj.etag, obj.last_modified, meta)

    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        check_key(key)
        self._request("GET", key)
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"GET {key}: no such key")
        return obj.body, self._info(key, obj, True)

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        check_key(key)
        self._request("HEAD", key)
        with self._lock:
            if version_id is None:
                obj = self._objects.get(key)
            else:
                versions = self._history.get(key, [])
                obj = next((v.obj for v in versions if v.version_id == version_id), None)
        return None if obj is None else self._info(key, obj, True)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        self._request("DELETE", key)
        with self._lock:
            obj = self._objects.get(key)
            if if_match is not None and (obj is None or obj.etag != if_match):
                raise PreconditionFailed(f"DELETE {key}: not the object with ETag {if_match}")
            self._remove(key)

    def _remove(self, key: str) -> None:
        """Drop `key` if present (a versioned bucket adds a delete marker even if it is not, as
        S3 does); the caller holds the lock."""
        if self._objects.pop(key, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]
        self._record(key, None)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = [check_key(k) for k in keys]  # all of them before the first request
        for batch in chunks(keys):
            self._request("POST", batch[0])
            with self._lock:
                for key in batch:
                    self._remove(key)

    def list_page(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = PAGE,
    ) -> ListPage:
        self._request("LIST", prefix)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        with self._lock:
            i = self._first(prefix, start_after, token)
            while i < len(self._keys):
                key = self._keys[i]
                if not key.startswith(prefix):
                    break  # sorted: no later key has the prefix either
                if len(objects) + len(prefixes) == max_keys:
                    return ListPage(objects, prefixes, _token(objects, prefixes))
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    common = key[: cut + len(delimiter or "")]
                    prefixes.append(common)
                    i = bisect.bisect_left(self._keys, _successor(common), i)
                    continue
                objects.append(self._info(key, self._objects[key], False))
                i += 1
        return ListPage(objects, prefixes, None)

    def _first(self, prefix: str, start_after: str | None, token: str | None) -> int:
        """Index of the first key a page may hold; the caller holds the lock.

        A token is "K" + the last key returned, or "P" + the last common prefix (whose keys
        were all rolled up, so the next page starts beyond every one of them).
        """
        i = bisect.bisect_left(self._keys, prefix)
        if start_after:
            i = max(i, bisect.bisect_right(self._keys, start_after))
        if token:
            kind, last = token[0], token[1:]
            if kind == "P":
                i = max(i, bisect.bisect_left(self._keys, _successor(last)))
            else:
                i = max(i, bisect.bisect_right(self._keys, last))
        return i

    def versioning_enabled(self) -> bool:
        self._request("GET", "")
        return self.versioned

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        with self._lock:
            found = [
                ObjectVersion(
                    key,
                    v.version_id,
                    v.last_modified,
                    i == len(versions) - 1,
                    None if v.obj is None else len(v.obj.body),
                    None if v.obj is None else v.obj.etag,
                )
                for key, versions in sorted(self._history.items())
                if key.startswith(prefix)
                for i, v in reversed(list(enumerate(versions)))
            ]
        for page in range(max(1, math.ceil(len(found) / PAGE))):
            self._request("LIST", prefix)
            yield from found[page * PAGE : (page + 1) * PAGE]

    def server_time(self) -> float:
        return self.clock()

    # -- for tests and the simulator (not part of ObjectStore) --------------------------------
    def keys(self) -> list[str]:
        """Every key, sorted (no request counted)."""
        with self._lock:
            return list(self._keys)


def _successor(prefix: str) -> str:
    """The least string greater than every string that starts with `prefix`."""
    stem = prefix.rstrip(chr(0x10FFFF))  # no character follows U+10FFFF: carry to the left
    if not stem:  # only U+10FFFF: longer than any valid key, so greater than every one
        return chr(0x10FFFF) * (KEY_MAX + 1)
    return stem[:-1] + chr(ord(stem[-1]) + 1)


def _token(objects: list[ObjectInfo], prefixes: list[str]) -> str:
    """The continuation token after a full page: whichever of its entries sorts last."""
    key = objects[-1].key if objects else ""
    common = prefixes[-1] if prefixes else ""
    return "P" + common if common > key else "K" + key
