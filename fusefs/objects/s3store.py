"""The S3 side of a mission: witness, conflict, manifest and intent keys under one base prefix.

Blocking boto3 calls only (the daemon runs them in worker threads). The same code talks to AWS
S3, MinIO, Ceph, SeaweedFS or moto: only the endpoint URL differs; credentials come from the
standard boto3 chain and never appear in messages.

    {prefix}/{mission}/scraped-tiles/{lat}/{lon}/{phrase}.csv        witnesses
    {prefix}/{mission}/conflicts/{lat}/{lon}/{phrase}.{worker}.csv   results that lost a race
    {prefix}/{mission}/manifests/{ms}-{worker}-{seq}.txt             hints: what a worker uploaded
                                                                     (a `rel<TAB>sha256` line each)
    {prefix}/{mission}/intent/{lat}/{lon}/{phrase}.csv               optional explicit intent

A rel becomes a key through `encode_rel` and a listed key a rel through `decode_rel` (a phrase
may hold a backslash, which SeaweedFS takes for a path separator).

Two boto3 clients, made on first use only (local commands never need one): `client` for the
background work (uploads, listings: patient timeouts and a retry), `fast` for the requests a
caller waits on (leases: a short read timeout and no retry, so a hung server is seen quickly).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import botocore.handlers
import botocore.utils
from botocore.config import Config

from fusefs.model.codec import SUFFIX
from fusefs.model.errors import (
    Precondition,
    S3ConfigError,
    S3NoCredentials,
    S3Timeout,
    S3Unavailable,
)

WITNESSES = "scraped-tiles"
CONFLICTS = "conflicts"
MANIFESTS = "manifests"
INTENT = "intent"
SHA_META = "sha256"

# Timeouts (seconds). Background: a big upload on a slow link may take a while to be answered.
# Interactive (leases, which a `mv` waits for): a silent server must be noticed in seconds;
# the caller bounds its own wait further (FleetClaims), this bounds the abandoned thread.
BACKGROUND_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 20, "max_attempts": 2}
FAST_TIMEOUTS = {"connect_timeout": 2, "read_timeout": 5, "max_attempts": 1}


def encode_rel(rel: str) -> str:
    """The key form of a rel: a backslash (SeaweedFS takes it for a path separator) becomes
    `%5C`, as if the codec had escaped it. Reversible because the codec escapes every `%` of a
    phrase (a rel's `%` always starts one of its escapes, never `%5C`); every rel without a
    backslash is its own key, so the keys of existing buckets do not change."""
    return rel.replace("\\", "%5C")


def decode_rel(key: str) -> str:
    """The rel of a key part written by `encode_rel`."""
    return key.replace("%5C", "\\")


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


def classify(e: Exception, where: str) -> Exception:
    """Map a boto error to S3ConfigError / S3Unavailable with a one-line message."""
    if isinstance(e, S3ConfigError | S3Unavailable):
        return e
    if isinstance(e, botocore.exceptions.NoCredentialsError):
        return S3NoCredentials(
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchBucket",) or (code == "404" and where == "bucket"):
            return S3ConfigError(f"{where}: no such bucket (check [store] s3 and --endpoint-url)")
        if (
            code
            in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "InvalidClientTokenId",
                "ExpiredToken",
                "403",
            )
            or status == 403
        ):
            return S3ConfigError(f"{where}: access denied ({code}); check the AWS credentials")
        if status >= 500 or code in (
            "SlowDown",
            "ServiceUnavailable",
            "InternalError",
            "RequestTimeout",
        ):
            return S3Unavailable(f"{where}: server error {code or status}; will retry")
        return S3ConfigError(f"{where}: {code or status}: {err.get('Message', '')}".strip())
    out: S3Unavailable
    if isinstance(
        e, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError
    ):
        out = S3Timeout(f"{where}: no answer in time ({type(e).__name__}); will retry")
    elif isinstance(e, botocore.exceptions.BotoCoreError | OSError):
        out = S3Unavailable(f"{where}: {type(e).__name__}: endpoint unreachable; will retry")
    else:
        return e
    # No connection could be made: the request never reached the server.
    out.sent = not isinstance(
        e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
    )
    return out


EXPECT_ABOVE = 1 << 20  # bytes: larger PUT bodies still wait for "100 Continue"


def _expect_large_bodies(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's add_expect_header, for bodies over EXPECT_ABOVE only."""
    if model.http.get("method", "") not in ("PUT", "POST"):
        return
    body = params.get("body")
    if isinstance(body, bytes | bytearray):
        size: int | None = len(body)
    elif hasattr(body, "read"):
        size = botocore.utils.determine_content_length(body)
    else:
        return
    if size is None or size > EXPECT_ABOVE:
        params["headers"]["Expect"] = "100-continue"


class S3Store:
    """One mission's keys in one bucket; thread-safe (one boto3 client, pooled connections)."""

    def __init__(
        self, url: str, mission: str, endpoint_url: str | None = None, pool: int = 32
    ) -> None:
        self.loc = S3Location.parse(url)
        self.url = url
        self.endpoint_url = endpoint_url
        self.base = "/".join(p for p in (self.loc.prefix, mission) if p)
        self.pool = pool
        self._clients: dict[str, Any] = {}
        self._client_lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self.conditional = True  # set by check(): does the server honour If-None-Match?
        self.worker = ""  # recorded in object metadata: who wrote a witness or conflict
        self.checksums = False  # set by check(): does the server verify x-amz-checksum-sha256?

    @property
    def client(self) -> Any:
        """The background client (uploads, listings), made on first use."""
        return self._client("background", BACKGROUND_TIMEOUTS)

    @property
    def fast(self) -> Any:
        """The client for requests a caller waits on (leases): a hung server fails fast."""
        return self._client("fast", FAST_TIMEOUTS)

    def _client(self, name: str, timeouts: dict[str, int]) -> Any:
        with self._client_lock:
            c = self._clients.get(name)
            if c is None:
                cfg = Config(
                    max_pool_connections=self.pool,
                    connect_timeout=timeouts["connect_timeout"],
                    read_timeout=timeouts["read_timeout"],
                    retries={"max_attempts": timeouts["max_attempts"], "mode": "standard"},
                )
                c = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=cfg)
                # botocore asks every PUT body to wait for "100 Continue": a round trip (whose
                # reply it reads a byte per syscall) that only pays off for large bodies;
                # leases and most witnesses are a few hundred bytes.
                events = c.meta.events
                events.unregister("before-call.s3", botocore.handlers.add_expect_header)
                events.register("before-call.s3", _expect_large_bodies)
                self._clients[name] = c
            return c

    def _count(self, op: str) -> None:
        with self._count_lock:  # called from many uploader threads
            self.requests[op] = self.requests.get(op, 0) + 1

    def key(self, area: str, rel: str) -> str:
        return f"{self.base}/{area}/{encode_rel(rel)}"

    def rel_of(self, area: str, key: str) -> str:
        """The rel of a listed key under `area` (the inverse of `key`)."""
        return decode_rel(key[len(f"{self.base}/{area}/") :])

    def conflict_rel(self, rel: str, worker: str) -> str:
        return f"{rel.removesuffix(SUFFIX)}.{worker}{SUFFIX}"

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> bool:
        """Verify bucket and credentials; return whether conditional create is atomic-capable.

        Raises S3ConfigError (refuse to start) or S3Unavailable (start offline, retry later).
        """
        where = f"s3://{self.loc.bucket}"
        try:
            self._count("HEAD")
            self.client.head_bucket(Bucket=self.loc.bucket)
        except Exception as e:
            raise classify(e, "bucket" if _is_404(e) else where) from None
        probe = f"{self.base}/.missionfs/probe-{uuid.uuid4().hex}"
        try:
            self._put(probe, b"1", if_none_match=True)
            try:
                self._put(probe, b"2", if_none_match=True)
                supported = False  # the header was ignored: the second create succeeded
            except Precondition:
                supported = True
            except S3ConfigError:
                supported = False  # e.g. 501 NotImplemented
            self._count("DELETE")
            self.client.delete_object(Bucket=self.loc.bucket, Key=probe)
            self.checksums = self._verifies_checksums(probe + "-sum")
        except Exception as e:
            raise classify(e, where) from None
        self.conditional = supported
        return supported

    def _verifies_checksums(self, key: str) -> bool:
        """Does the server reject a body whose x-amz-checksum-sha256 is wrong? Then send it."""
        wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
        try:
            self._count("PUT")
            self.client.put_object(Bucket=self.loc.bucket, Key=key, Body=b"1", ChecksumSHA256=wrong)
        except botocore.exceptions.ClientError:
            return True  # refused, as it should be
        except Exception:
            return False
        self._count("DELETE")
        self.client.delete_object(Bucket=self.loc.bucket, Key=key)
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
        kwargs: dict[str, Any] = {"Bucket": self.loc.bucket, "Key": key, "Body": body}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if metadata:
            kwargs["Metadata"] = metadata
            if self.checksums and SHA_META in metadata:
                # The hash recorded at commit travels with the body: the server verifies it.
                kwargs["ChecksumSHA256"] = base64.b64encode(
                    bytes.fromhex(metadata[SHA_META])
                ).decode()
        self._count("PUT")
        try:
            self.client.put_object(**kwargs)
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise Precondition(key) from None
            raise classify(e, f"PUT {key}") from None
        except Exception as e:
            raise classify(e, f"PUT {key}") from None

    def create_witness(self, rel: str, body: bytes, conditional: bool) -> bool:
        """Create the witness unless one exists; True if ours is now the witness."""
        key = self.key(WITNESSES, rel)
        meta = {SHA_META: sha256_hex(body), "worker": self.worker}
        if not conditional and self.head(key) is not None:
            return False  # check-then-put: racy, the self-test said so
        try:
            self._put(key, body, if_none_match=conditional, metadata=meta)
        except Precondition:
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

    def put_manifest(self, name: str, body: bytes) -> None:
        self._put(f"{self.base}/{MANIFESTS}/{name}", body)

    def delete_many(self, keys: list[str], what: str) -> None:
        """Delete keys, up to 1,000 per request (DeleteObjects, a POST); missing ones are fine."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            self._count("POST")
            try:
                r = self.client.delete_objects(
                    Bucket=self.loc.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except Exception as e:
                raise classify(e, f"DeleteObjects of {len(chunk)} {what}") from None
            failed = [e for e in r.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise S3Unavailable(
                    f"DeleteObjects: {len(failed)} {what} not deleted ({failed[0].get('Code')}:"
                    f" {failed[0].get('Message')}); retried later"
                )

    def prune_manifests(self, before_ms: int) -> int:
        """Delete every worker's manifests named before `before_ms`; returns how many. Old
        manifests are never read again: refreshes list the last minutes only, and a worker
        away longer does a full listing first."""
        root = f"{self.base}/{MANIFESTS}/"
        old = []
        for key, _ in self.list_keys(root):
            ms = key[len(root) :].partition("-")[0]
            if not ms.isdigit():
                continue  # not ours to judge
            if int(ms) >= before_ms:
                break  # names sort by their zero-padded time
            old.append(key)
        if old:
            self.delete_many(old, "manifests")
        return len(old)

    def head(self, key: str) -> dict[str, str] | None:
        """Object metadata, or None if there is no such object."""
        self._count("HEAD")
        try:
            r = self.client.head_object(Bucket=self.loc.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if _is_404(e):
                return None
            raise classify(e, f"HEAD {key}") from None
        except Exception as e:
            raise classify(e, f"HEAD {key}") from None
        return dict(r.get("Metadata", {}))

    def get(self, key: str) -> tuple[bytes, dict[str, str]]:
        self._count("GET")
        try:
            r = self.client.get_object(Bucket=self.loc.bucket, Key=key)
            return r["Body"].read(), dict(r.get("Metadata", {}))
        except Exception as e:
            raise classify(e, f"GET {key}") from None

    def witness_sha(self, rel: str) -> str | None:
        """SHA-256 of the remote witness (from metadata, else by reading it); None if absent."""
        meta = self.head(self.key(WITNESSES, rel))
        if meta is None:
            return None
        if SHA_META in meta:
            return meta[SHA_META]
        body, _ = self.get(self.key(WITNESSES, rel))
        return sha256_hex(body)

    # -- listings -----------------------------------------------------------------------------
    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix, in key order."""
        kwargs: dict[str, Any] = {"Bucket": self.loc.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            while True:
                self._count("LIST")
                r = self.client.list_objects_v2(**kwargs)
                for obj in r.get("Contents", []):
                    yield obj["Key"], int(obj.get("Size", 0))
                if not r.get("IsTruncated"):
                    return
                kwargs["ContinuationToken"] = r["NextContinuationToken"]
        except Exception as e:
            raise classify(e, f"LIST {prefix}") from None

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate 'subdirectory' prefixes of prefix (CommonPrefixes)."""
        kwargs: dict[str, Any] = {"Bucket": self.loc.bucket, "Prefix": prefix, "Delimiter": "/"}
        out: list[str] = []
        try:
            while True:
                self._count("LIST")
                r = self.client.list_objects_v2(**kwargs)
                out += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
                if not r.get("IsTruncated"):
                    return out
                kwargs["ContinuationToken"] = r["NextContinuationToken"]
        except Exception as e:
            raise classify(e, f"LIST {prefix}") from None

    def witness_shards(self) -> list[str]:
        """The per-latitude prefixes of the witness tree: the unit of parallel listing."""
        return self.list_dirs(f"{self.base}/{WITNESSES}/")

    def rels_under(self, prefix: str) -> list[str]:
        return [self.rel_of(WITNESSES, k) for k, _ in self.list_keys(prefix)]

    def sized_rels_under(self, prefix: str) -> list[tuple[str, int | None]]:
        """(rel, size) of the witnesses under prefix: the listing gives each object's size."""
        return [(self.rel_of(WITNESSES, k), size) for k, size in self.list_keys(prefix)]

    def size_of(self, key: str) -> int | None:
        """Content length of an object (a HEAD), or None if there is no such object."""
        self._count("HEAD")
        try:
            r = self.client.head_object(Bucket=self.loc.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if _is_404(e):
                return None
            raise classify(e, f"HEAD {key}") from None
        except Exception as e:
            raise classify(e, f"HEAD {key}") from None
        return int(r.get("ContentLength", 0))

    def intent_rels(self) -> list[str]:
        root = f"{self.base}/{INTENT}/"
        return [self.rel_of(INTENT, k) for k, _ in self.list_keys(root)]


def _is_404(e: Exception) -> bool:
    if isinstance(e, botocore.exceptions.ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404
    return False
