"""The S3 side of a mission: every key of the bucket layout under one base prefix.

A layout over an `ObjectStore` (fusefs.objects.base): S3 in production (`S3ObjectStore`, built
lazily from the mission's URL and endpoint), an in-process `MemoryStore` in tests and simulation
(given to the constructor). Blocking calls only (the daemon runs them in worker threads).

    {prefix}/{mission}/scraped-tiles/{lat}/{lon}/{phrase}.csv        witnesses
    {prefix}/{mission}/conflicts/{lat}/{lon}/{phrase}.{worker}.csv   results that lost a race
    {prefix}/{mission}/manifests/{ms}-{worker}-{seq}.txt             protocol v1's manifests (read
                                                                     by nobody; retention deletes)
    {prefix}/{mission}/.missionfs/protocol.json                      protocol v2: the window W
    {prefix}/{mission}/log/{w:010d}/{worker}-{seq}.txt               node manifests of window w
    {prefix}/{mission}/segments/{w:010d}.seg                         window w's merged manifests
    {prefix}/{mission}/intent/{lat}/{lon}/{phrase}.csv               optional explicit intent
    {prefix}/{mission}/checkpoints/{window:010d}.ckpt                every fact through a window
                                                                     (engine/checkpoints)
    {prefix}/{mission}/claims/{chunk}/{lat}/{lon}/{phrase}.csv       fleet leases (engine/leases),
                                                                     by chunk of task ids

A rel becomes a key through `encode_rel` and a listed key a rel through `decode_rel` (a phrase
may hold a backslash, which SeaweedFS takes for a path separator).

Two stores, the S3 ones made on first use only (local commands never need a client or
credentials): `objects` for the background work (uploads, listings: patient timeouts and a
retry), `fast` for the requests a caller waits on (leases: a short read timeout and no retry, so
a hung server is seen quickly). Given stores are used as they are (`fast` defaults to `objects`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fusefs.model.codec import SUFFIX
from fusefs.objects.base import (
    BadDigest,
    ConfigError,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectVersion,
    Offload,
    PreconditionFailed,
)

WITNESSES = "scraped-tiles"
CONFLICTS = "conflicts"
MANIFESTS = "manifests"
INTENT = "intent"
LOG = "log"
SEGMENTS = "segments"
PROTOCOL = ".missionfs/protocol.json"
CLAIMS = "claims"
CHECKPOINTS = "checkpoints"  # protocol v2: {w:010d}.ckpt, the whole Fact set (engine/checkpoints)
SHA_META = "sha256"

# Leases by chunk (protocol v2): a lease key names the chunk of its task id, so a node lists
# only the chunks it works in. 2**10 = 1,024 task ids a chunk; the chunk is written as a
# zero-padded decimal of CHUNK_DIGITS digits (more only beyond 10**10 chunks).
CHUNK_BITS = 10
CHUNK_DIGITS = 10

# Timeouts (seconds). Background: a big upload on a slow link may take a while to be answered.
# Interactive (leases, which a `mv` waits for): a silent server must be noticed in seconds;
# the caller bounds its own wait further (FleetClaims), this bounds the abandoned thread.
BACKGROUND_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 20, "attempts": 2}
FAST_TIMEOUTS = {"connect_timeout": 2, "read_timeout": 5, "attempts": 1}


def encode_rel(rel: str) -> str:
    """The key form of a rel: a backslash (SeaweedFS takes it for a path separator) becomes
    `%5C`, as if the codec had escaped it. Reversible because the codec escapes every `%` of a
    phrase (a rel's `%` always starts one of its escapes, never `%5C`); every rel without a
    backslash is its own key, so the keys of existing buckets do not change."""
    return rel.replace("\\", "%5C")


def decode_rel(key: str) -> str:
    """The rel of a key part written by `encode_rel`."""
    return key.replace("%5C", "\\")


def chunk_name(chunk: int) -> str:
    """The key part of a lease chunk: zero-padded, so chunks list in numeric order."""
    return f"{chunk:0{CHUNK_DIGITS}d}"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading/trailing slash; may be ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        return cls(bucket, prefix.strip("/"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CHECKPOINT_SUFFIX = ".ckpt"


def checkpoint_name(window: int) -> str:
    """The key part of a window's checkpoint: zero-padded, so names sort like windows (ten
    digits: window 10**10 is in the year 2286 even at one second a window)."""
    if not 0 <= window < 10**10:
        raise ValueError(f"window {window} out of range")
    return f"{window:010d}{CHECKPOINT_SUFFIX}"


def checkpoint_window(name: str) -> int | None:
    """The window of a checkpoint's name, or None for a name that is not one of ours."""
    stem = name.removesuffix(CHECKPOINT_SUFFIX)
    if stem == name or len(stem) != 10 or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


class S3Store:
    """One mission's keys in one bucket; thread-safe (so are the stores underneath).

    `objects`/`fast`: the stores to use (tests and simulation give a `MemoryStore`); when
    `objects` is None, S3 stores are made from `url` and `endpoint_url` on first use.
    """

    def __init__(
        self,
        url: str,
        mission: str,
        endpoint_url: str | None = None,
        pool: int = 32,
        *,
        objects: ObjectStore | None = None,
        fast: ObjectStore | None = None,
    ) -> None:
        self.loc = S3Location.parse(url)
        self.url = url
        self.endpoint_url = endpoint_url
        self.base = "/".join(p for p in (self.loc.prefix, mission) if p)
        self.pool = pool
        self._objects = objects
        self._fast = fast if fast is not None else objects
        self._lock = threading.Lock()
        self.conditional = True  # set by check(): does the server honour If-None-Match?
        self.worker = ""  # recorded in object metadata: who wrote a witness or conflict
        self.checksums = False  # set by check(): does the server verify x-amz-checksum-sha256?

    @property
    def objects(self) -> ObjectStore:
        """The store for background work (uploads, listings), made on first use."""
        with self._lock:
            if self._objects is None:
                self._objects = self._s3(pool=self.pool, **BACKGROUND_TIMEOUTS)
            return self._objects

    @property
    def fast(self) -> ObjectStore:
        """The store for requests a caller waits on (leases): a hung server fails fast."""
        with self._lock:
            if self._fast is None:
                self._fast = self._s3(pool=self.pool, **FAST_TIMEOUTS)
            return self._fast

    def _s3(self, **settings: int) -> ObjectStore:
        from fusefs.objects.s3 import S3ObjectStore  # boto3 only when S3 is needed

        return S3ObjectStore(self.loc.bucket, self.endpoint_url, **settings)

    def made(self) -> list[ObjectStore]:
        """The stores made so far (each once): what `requests` adds up."""
        with self._lock:
            stores = [s for s in (self._objects, self._fast) if s is not None]
        return list({id(s): s for s in stores}.values())

    @property
    def requests(self) -> dict[str, int]:
        """Requests made so far by kind (PUT, GET, HEAD, LIST, DELETE, POST), all stores."""
        out: dict[str, int] = {}
        for store in self.made():
            for kind, n in store.requests.snapshot().items():
                out[kind] = out.get(kind, 0) + n
        return out

    def server_time(self) -> float:
        """The server's clock now, as of whichever store heard from it last (a lease listing
        goes through the background store, a lease write through the fast one)."""
        stores = self.made() or [self.objects]
        return max(stores, key=lambda s: float(getattr(s, "answered_at", 0.0))).server_time()

    def key(self, area: str, rel: str) -> str:
        return f"{self.base}/{area}/{encode_rel(rel)}"

    def root(self, area: str) -> str:
        """The listing prefix of an area (`key(area, "")`)."""
        return self.key(area, "")

    def rel_of(self, area: str, key: str) -> str:
        """The rel of a listed key under `area` (the inverse of `key`)."""
        return decode_rel(key[len(self.root(area)) :])

    def conflict_rel(self, rel: str, worker: str) -> str:
        return f"{rel.removesuffix(SUFFIX)}.{worker}{SUFFIX}"

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> bool:
        """Verify bucket and credentials; return whether conditional create is atomic-capable.

        Raises ConfigError (refuse to start) or Unavailable (start offline, retry later).
        """
        self.objects.check()
        probe = f"{self.base}/.missionfs/probe-{uuid.uuid4().hex}"
        self.objects.put(probe, b"1", if_none_match=True)
        try:
            self.objects.put(probe, b"2", if_none_match=True)
            supported = False  # the header was ignored: the second create succeeded
        except PreconditionFailed:
            supported = True
        except ConfigError:
            supported = False  # e.g. 501 NotImplemented
        self.objects.delete(probe)
        self.checksums = self._verifies_checksums(probe + "-sum")
        self.conditional = supported
        return supported

    def _verifies_checksums(self, key: str) -> bool:
        """Does the server reject a body whose SHA-256 is wrong? Then send it with every put."""
        try:
            self.objects.put(key, b"1", sha256=sha256_hex(b"not the body"))
        except (BadDigest, ConfigError):
            return True  # refused, as it should be
        except Exception:
            return False
        self.objects.delete(key)
        return False  # accepted a wrong checksum: rely on metadata + checks at fetch

    # -- objects ------------------------------------------------------------------------------
    def _put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        sha = (metadata or {}).get(SHA_META) if self.checksums else None
        # The hash recorded at commit travels with the body: the server verifies it.
        self.objects.put(key, body, if_none_match=if_none_match, metadata=metadata, sha256=sha)

    def create_witness(self, rel: str, body: bytes, conditional: bool) -> bool:
        """Create the witness unless one exists; True if ours is now the witness."""
        key = self.key(WITNESSES, rel)
        meta = {SHA_META: sha256_hex(body), "worker": self.worker}
        if not conditional and self.head(key) is not None:
            return False  # check-then-put: racy, the self-test said so
        try:
            self._put(key, body, if_none_match=conditional, metadata=meta)
        except PreconditionFailed:
            return False
        return True

    async def create_witness_async(self, rel: str, body: bytes, sha: str, offload: Offload) -> bool:
        """`create_witness` from trio's thread (the conditional create, or the check-then-put
        the self-test allows); `sha`: the body's SHA-256, known from its commit."""
        key = self.key(WITNESSES, rel)
        if not self.conditional and await offload(functools.partial(self.head, key)) is not None:
            return False
        try:
            await self.objects.put_async(
                key,
                body,
                offload=offload,
                if_none_match=self.conditional,
                metadata={SHA_META: sha, "worker": self.worker},
                sha256=sha if self.checksums else None,
                body_sha256=sha,
            )
        except PreconditionFailed:
            return False
        return True

    def replace_witness(self, rel: str, body: bytes, etag: str) -> bool:
        """Put `body` back as the witness if it is still the object with `etag` (fsck's repair
        of altered bytes); False if it changed (or vanished) since it was read."""
        try:
            self.objects.put(
                self.key(WITNESSES, rel), body, if_match=etag, metadata={SHA_META: sha256_hex(body)}
            )
        except PreconditionFailed:
            return False
        return True

    # -- the Store interface (same as LocalStore) ----------------------------------------------
    def create(self, rel: str, body: bytes) -> bool:
        return self.create_witness(rel, body, self.conditional)

    def read(self, rel: str) -> bytes:
        return self.get(self.key(WITNESSES, rel))[0]

    def exists(self, rel: str) -> bool:
        return self.head(self.key(WITNESSES, rel)) is not None

    def scan(self) -> Iterator[str]:
        for shard in self.witness_shards():
            yield from self.rels_under(shard)

    def put_conflict(self, rel: str, worker: str, body: bytes) -> str:
        key = self.key(CONFLICTS, self.conflict_rel(rel, worker))
        self._put(key, body, metadata={SHA_META: sha256_hex(body), "worker": self.worker})
        return key

    def delete_many(self, keys: list[str], what: str) -> None:
        """Delete keys, up to 1,000 per request (DeleteObjects, a POST); missing ones are fine.
        `what` names them for the log (the store's message names the count)."""
        self.objects.delete_many(keys)

    def manifests(self, start_after: str | None = None) -> Iterator[tuple[str, str]]:
        """(name, key) of every manifest in name order (after the manifest `start_after`)."""
        root = self.root(MANIFESTS)
        after = None if start_after is None else root + start_after
        for info in self.objects.list(root, start_after=after):
            yield info.key[len(root) :], info.key

    def prune_manifests(self, before_ms: int) -> int:
        """Delete protocol v1's manifests named before `before_ms` (nobody reads them now;
        the fact log's retention calls this); returns how many."""
        old = []
        for name, key in self.manifests():
            ms = name.partition("-")[0]
            if not ms.isdigit():
                continue  # not ours to judge
            if int(ms) >= before_ms:
                break  # names sort by their zero-padded time
            old.append(key)
        if old:
            self.delete_many(old, "manifests")
        return len(old)

    # -- protocol v2: window, node manifests, segments (engine/factlog.py) --------------------
    def read_protocol(self) -> dict[str, object] | None:
        """The fleet's protocol settings (`{"version": 2, "window": W}`), None if absent."""
        try:
            body, _ = self.objects.get(f"{self.base}/{PROTOCOL}")
        except NotFound:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def create_protocol(self, settings: dict[str, object]) -> bool:
        """Create protocol.json unless it exists (If-None-Match); True if ours is it."""
        try:
            self.objects.put(
                f"{self.base}/{PROTOCOL}", json.dumps(settings).encode(), if_none_match=True
            )
        except PreconditionFailed:
            return False
        return True

    def log_root(self, window: int | None = None) -> str:
        """`log/` (all windows) or `log/{w:010d}/` (one window's node manifests)."""
        return f"{self.base}/{LOG}/" + ("" if window is None else f"{window:010d}/")

    def put_node_manifest(self, window: int, name: str, body: bytes) -> None:
        self.objects.put(self.log_root(window) + name, body)

    def node_manifests(self, window: int) -> list[tuple[str, str]]:
        """(name, key) of every node manifest of a window, in name order (one LIST page)."""
        root = self.log_root(window)
        return [(i.key[len(root) :], i.key) for i in self.objects.list(root)]

    def segment_key(self, window: int) -> str:
        return f"{self.base}/{SEGMENTS}/{window:010d}.seg"

    def get_segment(self, window: int) -> tuple[bytes, str] | None:
        """(body, ETag) of a window's segment, None if there is none yet."""
        try:
            body, info = self.objects.get(self.segment_key(window))
        except NotFound:
            return None
        return body, info.etag

    def put_segment(self, window: int, body: bytes, replace_etag: str | None = None) -> bool:
        """Create the segment unless one exists (or replace the corrupt one with `replace_etag`
        if it is still that object); False if another node's is there."""
        try:
            if replace_etag is None:
                self.objects.put(self.segment_key(window), body, if_none_match=True)
            else:
                self.objects.put(self.segment_key(window), body, if_match=replace_etag)
        except PreconditionFailed:
            return False
        return True

    def segment_windows(self, after: int = -1) -> Iterator[int]:
        """Windows of the segments in the bucket, ascending (after window `after`)."""
        root = f"{self.base}/{SEGMENTS}/"
        start = None if after < 0 else self.segment_key(after)
        for info in self.objects.list(root, start_after=start):
            name = info.key[len(root) :]
            if name.endswith(".seg") and name[:-4].isdigit():
                yield int(name[:-4])

    def first_log_window(self, window: int) -> int | None:
        """The first window from `window` on that has a node manifest (one LIST)."""
        root = self.log_root()
        for info in self.objects.list(root, start_after=f"{root}{window:010d}"):
            w_text = info.key[len(root) :].partition("/")[0]
            if w_text.isdigit():
                return int(w_text)
        return None

    def log_windows_before(self, window: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(window, key) of node manifests of windows before `window` (oldest first, at most
        `limit`: one page, retention deletes a page at a time)."""
        root = self.log_root()
        out: list[tuple[int, str]] = []
        for info in self.objects.list(root):
            w_text = info.key[len(root) :].partition("/")[0]
            if not w_text.isdigit():
                continue
            if int(w_text) >= window or len(out) >= limit:
                break
            out.append((int(w_text), info.key))
        return out

    def head(self, key: str) -> dict[str, str] | None:
        """Object metadata, or None if there is no such object."""
        info = self.objects.head(key)
        return None if info is None else dict(info.metadata or {})

    def get(self, key: str) -> tuple[bytes, dict[str, str]]:
        """Body and metadata; NotFound (an S3ConfigError) if there is no such object."""
        body, info = self.objects.get(key)
        return body, dict(info.metadata or {})

    def witness_sha(self, rel: str) -> str | None:
        """SHA-256 of the remote witness (from metadata, else by reading it); None if absent."""
        meta = self.head(self.key(WITNESSES, rel))
        if meta is None:
            return None
        if SHA_META in meta:
            return meta[SHA_META]
        try:
            body, _ = self.get(self.key(WITNESSES, rel))
        except NotFound:
            return None  # deleted between the HEAD and the GET
        return sha256_hex(body)

    # -- listings -----------------------------------------------------------------------------
    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix, in key order."""
        for info in self.objects.list(prefix, start_after=start_after):
            yield info.key, info.size

    def objects_in(self, area: str) -> Iterator[tuple[str, ObjectInfo]]:
        """(rel, info) of every object of an area, in key order (fsck, leases)."""
        for info in self.objects.list(self.root(area)):
            yield self.rel_of(area, info.key), info

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate 'subdirectory' prefixes of prefix (CommonPrefixes)."""
        return list(self.objects.common_prefixes(prefix))

    def witness_shards(self) -> list[str]:
        """The per-latitude prefixes of the witness tree: the unit of parallel listing."""
        return self.list_dirs(self.root(WITNESSES))

    def rels_under(self, prefix: str) -> list[str]:
        return [self.rel_of(WITNESSES, k) for k, _ in self.list_keys(prefix)]

    def sized_rels_under(self, prefix: str) -> list[tuple[str, int | None]]:
        """(rel, size) of the witnesses under prefix: the listing gives each object's size."""
        return [(self.rel_of(WITNESSES, k), size) for k, size in self.list_keys(prefix)]

    def size_of(self, key: str) -> int | None:
        """Content length of an object (a HEAD), or None if there is no such object."""
        info = self.objects.head(key)
        return None if info is None else info.size

    def intent_rels(self) -> list[str]:
        return [self.rel_of(INTENT, k) for k, _ in self.list_keys(self.root(INTENT))]

    # -- checkpoints (protocol v2: fusefs.engine.checkpoints) ------------------------------
    def checkpoint_key(self, window: int) -> str:
        return self.key(CHECKPOINTS, checkpoint_name(window))

    def checkpoint_windows(self) -> list[int]:
        """Windows of the checkpoints in the bucket, ascending (one LIST per 1,000 keys);
        keys that are not named like a checkpoint are ignored."""
        out = []
        for info in self.objects.list(self.root(CHECKPOINTS)):
            window = checkpoint_window(self.rel_of(CHECKPOINTS, info.key))
            if window is not None:
                out.append(window)
        return sorted(out)

    def get_checkpoint(self, window: int) -> bytes | None:
        """The checkpoint's body, or None if it is not there (deleted since the listing)."""
        try:
            return self.objects.get(self.checkpoint_key(window))[0]
        except NotFound:
            return None

    def put_checkpoint(self, window: int, body: bytes) -> bool:
        """Create the checkpoint of `window` unless one exists (If-None-Match); False then."""
        sha = sha256_hex(body) if self.checksums else None
        try:
            self.objects.put(self.checkpoint_key(window), body, if_none_match=True, sha256=sha)
        except PreconditionFailed:
            return False
        return True

    def delete_checkpoints(self, windows: list[int]) -> None:
        """Delete the checkpoints of these windows (DeleteObjects: one POST per 1,000)."""
        self.delete_many([self.checkpoint_key(w) for w in windows], "checkpoints")

    # -- leases by chunk (engine/leases.py) ---------------------------------------------------
    # `claims/{chunk}/{rel}`: chunk = task id >> CHUNK_BITS (the caller computes it: the store
    # knows no TaskSpace). A protocol v1 key `claims/{rel}` has one part less (LAT/LON/FILE):
    # `lease_rel_of` never takes it for a v2 key, so old leases are ignored until they expire.
    def lease_key(self, chunk: int, rel: str) -> str:
        return f"{self.base}/{CLAIMS}/{chunk_name(chunk)}/{encode_rel(rel)}"

    def lease_chunk_root(self, chunk: int) -> str:
        """The listing prefix of one chunk's leases."""
        return f"{self.base}/{CLAIMS}/{chunk_name(chunk)}/"

    def lease_rel_of(self, key: str) -> tuple[int, str] | None:
        """(chunk, rel) of a listed lease key; None for anything else (a v1 key, a stray)."""
        root = self.root(CLAIMS)
        if not key.startswith(root):
            return None
        chunk, sep, rest = key[len(root) :].partition("/")
        parts = rest.split("/")
        if not sep or len(parts) != 3 or not all(parts):
            return None
        if len(chunk) < CHUNK_DIGITS or not (chunk.isascii() and chunk.isdigit()):
            return None
        return int(chunk), decode_rel(rest)

    def leases_in(self, chunk: int | None) -> Iterator[tuple[int, str, ObjectInfo]]:
        """(chunk, rel, info) of every v2 lease of one chunk (one LIST a page of 1,000), or of
        all chunks (None: every lease of the fleet; fsck, fleet view and start-up only)."""
        prefix = self.root(CLAIMS) if chunk is None else self.lease_chunk_root(chunk)
        for info in self.objects.list(prefix):
            parsed = self.lease_rel_of(info.key)
            if parsed is not None:
                yield parsed[0], parsed[1], info

    def lease_versions(
        self, part: str, chunks: Iterable[int] | None
    ) -> Iterator[tuple[str, ObjectVersion]]:
        """(rel, version) of the lease versions whose rel starts with `part` (as `versions`),
        looked for in the given chunks (None: every chunk); keys that are not v2 leases are
        skipped."""
        if chunks is None:
            prefixes = [self.root(CLAIMS)]
        else:
            prefixes = [self.lease_chunk_root(c) + encode_rel(part) for c in sorted(set(chunks))]
        for prefix in prefixes:
            for v in self.objects.list_versions(prefix):
                parsed = self.lease_rel_of(v.key)
                if parsed is not None and parsed[1].startswith(part):
                    yield parsed[1], v

    # -- history (`missionfs log`) ------------------------------------------------------------
    def versioning_enabled(self) -> bool:
        return self.objects.versioning_enabled()

    def versions(self, area: str, part: str) -> Iterator[tuple[str, ObjectVersion]]:
        """(rel, version) of every version whose rel starts with `part` (a rel, a directory of
        rels ending in `/`, or "" for the whole area), by key then newest first."""
        for v in self.objects.list_versions(self.key(area, part)):
            yield self.rel_of(area, v.key), v

    def version_metadata(self, key: str, version_id: str) -> dict[str, str]:
        """User metadata of one version (who wrote it); empty if it is gone."""
        info = self.objects.head(key, version_id=version_id)
        return {} if info is None else dict(info.metadata or {})
