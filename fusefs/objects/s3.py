"""The boto3 `ObjectStore`: AWS S3, SeaweedFS, MinIO, Ceph or moto; only the endpoint differs.

Blocking calls on one client (thread-safe, pooled connections); callers on the trio loop run
them in `trio.to_thread.run_sync`. Credentials come from the standard boto3 chain and never
appear in messages. Every botocore failure is classified once, here, by `classify`.

The client is made on first use (a command that never reaches S3 needs no credentials).
Client settings:
- path-style addressing when an endpoint URL is given (local servers have no per-bucket DNS);
- no `Expect: 100-continue` for bodies up to 1 MiB: it costs a round trip per PUT and only
  pays off for large bodies (leases and most witnesses are a few hundred bytes);
- 3 s connect / 20 s read timeouts, 2 attempts in botocore's standard retry mode, unless the
  constructor says otherwise (s3store's layout asks for shorter ones for leases);
- checksums only where an operation requires one (DeleteObjects) or the caller sends its own
  SHA-256: botocore's default CRC32 on every PUT/GET is CPU the protocol does not need;
- PUTs of up to 1 MiB (witnesses, manifests, leases: one per completed task) skip botocore:
  `fusefs.objects.s3put` signs them by hand on its own keep-alive pool (about a quarter of the
  CPU), raising the exceptions botocore would, so `classify` below serves both paths.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import boto3
import botocore.exceptions
import botocore.handlers
import botocore.utils
from botocore.config import Config

from fusefs.objects.base import (
    PAGE,
    AccessDenied,
    BadDigest,
    ConfigError,
    ListPage,
    NoCredentials,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    ObjectVersion,
    Offload,
    PreconditionFailed,
    RequestCounter,
    SlowDown,
    Timeout,
    Unavailable,
    check_key,
    chunks,
)
from fusefs.objects.s3put import StepAside, ThinPut

EXPECT_ABOVE = 1 << 20  # bytes: larger PUT bodies still wait for "100 Continue"

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_DIGEST = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest", "InvalidChecksum"}
_RETRY = {"ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}


def classify(e: Exception, what: str, *, conditional: bool = False) -> ObjectStoreError:
    """The one mapping of botocore failures to the errors of `base`; `what` ("PUT key") opens
    the one-line message. `conditional`: the request had If-Match, so a 404 means the object
    we meant is gone, which callers see as PreconditionFailed (SeaweedFS answers 412 there)."""
    if isinstance(e, ObjectStoreError):
        return e
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{what}: {code or status}"
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return PreconditionFailed(detail)
        if code == "NoSuchBucket":
            return ConfigError(f"{detail}: no such bucket (check the bucket and endpoint URL)")
        if code in _MISSING or status == 404:
            return PreconditionFailed(detail) if conditional else NotFound(detail)
        if code in _DENIED or status == 403:
            return AccessDenied(f"{detail}: access denied; check the credentials")
        if code == "SlowDown" or status == 503:
            return SlowDown(f"{detail}: the server asks to slow down; will retry")
        if code in _DIGEST:
            return BadDigest(f"{detail}: the body does not match its checksum")
        if status == 501 or code == "NotImplemented":  # e.g. conditional writes: retry won't help
            return ConfigError(f"{detail}: the server does not implement this request")
        if status >= 500 or code in _RETRY:
            return Unavailable(f"{detail}: server error; will retry")
        return ConfigError(f"{detail}: {err.get('Message', '')}".rstrip(": "))
    if isinstance(
        e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return NoCredentials(
            f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(e, botocore.exceptions.ParamValidationError):
        return ConfigError(f"{what}: invalid request: {e}".splitlines()[0])
    out: Unavailable
    if isinstance(
        e, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError
    ):
        out = Timeout(f"{what}: no answer in time ({type(e).__name__}); will retry")
    elif isinstance(e, botocore.exceptions.BotoCoreError | OSError):
        out = Unavailable(f"{what}: {type(e).__name__}: endpoint unreachable; will retry")
    else:
        return Unavailable(f"{what}: {type(e).__name__}: {e}".splitlines()[0])
    # No connection could be made: the request surely never reached the server.
    out.sent = not isinstance(
        e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
    )
    return out


def _put_object_args(
    key: str,
    body: bytes,
    if_none_match: bool,
    if_match: str | None,
    metadata: Mapping[str, str] | None,
    sha256: str | None,
) -> dict[str, Any]:
    """put_object's arguments for `ObjectStore.put`'s (checked: the key, exclusive conditions)."""
    check_key(key)
    if if_none_match and if_match is not None:
        raise ValueError("put: if_none_match and if_match exclude each other")
    kw: dict[str, Any] = {"Key": key, "Body": body}
    if if_none_match:
        kw["IfNoneMatch"] = "*"
    if if_match is not None:
        kw["IfMatch"] = _quote(if_match)
    if metadata:
        kw["Metadata"] = dict(metadata)
    if sha256 is not None:
        kw["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
    return kw


def _thin_args(kw: dict[str, Any]) -> dict[str, Any]:
    """put_object's arguments as ThinPut.put and put_async take them."""
    return {
        "key": kw["Key"],
        "body": kw["Body"],
        "if_none_match": "IfNoneMatch" in kw,
        "if_match": kw.get("IfMatch"),
        "metadata": kw.get("Metadata"),
        "checksum_sha256": kw.get("ChecksumSHA256"),
    }


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


def _quote(etag: str) -> str:
    return f'"{etag}"'


def _unquote(etag: Any) -> str:
    return str(etag or "").strip('"')


Listener = Callable[[str, Any, Any, Any], None]
"""Called after every HTTP attempt (retries too): (operation name, response dict or None,
parsed response, exception or None), as botocore's `response-received` event gives them."""


class S3ObjectStore(ObjectStore):
    """One bucket through boto3. `client` may be given (tests); otherwise it is built on first
    use (so a command that never reaches S3 needs no credentials) from the endpoint URL, the
    standard credential chain and the timeouts: `connect_timeout`/`read_timeout` seconds,
    `attempts` tries in botocore's standard retry mode. Small PUTs go through `ThinPut` while
    `thin` is True (not with a given client: a test that gives one watches boto3's requests;
    a test may set it False to watch boto3's PUT)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        *,
        pool: int = 32,
        client: Any = None,
        connect_timeout: float = 3,
        read_timeout: float = 20,
        attempts: int = 2,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.requests = RequestCounter()
        self._offset = 0.0  # server clock - our clock, from the Date headers (_track_date)
        self._bounds: dict[int, float] = {}  # minute -> the highest lower bound seen in it
        self.answered_at = 0.0  # monotonic time of that header (0: no answer yet)
        self._said = (0.0, -1)  # the last (Date, minute) folded into the bounds
        self._settings = (pool, connect_timeout, read_timeout, attempts)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._client: Any = None
        self._session: Any = None
        self._thin: ThinPut | None = None
        self.thin = client is None
        if client is not None:
            self._install(client)

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (thread-safe)."""
        with self._lock:
            if self._client is None:
                pool, connect, read, attempts = self._settings
                cfg = Config(
                    max_pool_connections=pool,
                    connect_timeout=connect,
                    read_timeout=read,
                    retries={"max_attempts": attempts, "mode": "standard"},
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                session = self._session = boto3.session.Session()
                self._install(session.client("s3", endpoint_url=self.endpoint_url, config=cfg))
            return self._client

    def _install(self, client: Any) -> None:
        events = client.meta.events
        events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        events.register("before-call.s3", _expect_large_bodies)
        events.register("after-call.s3", self._track_date)
        events.register("response-received.s3", self._received)
        self._client = client

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` after every HTTP attempt from now on (metrics count them by
        operation and outcome: retries included, which `requests` does not show)."""
        self._listeners.append(listener)

    def _received(
        self,
        event_name: str = "",
        response_dict: Any = None,
        parsed_response: Any = None,
        exception: Any = None,
        **_: Any,
    ) -> None:
        self._notify(event_name.rsplit(".", 1)[-1], response_dict, parsed_response, exception)

    def _notify(self, op: str, response: Any, parsed: Any, exception: Any) -> None:
        for listener in list(self._listeners):
            listener(op, response, parsed, exception)

    def _track_date(self, http_response: Any = None, **kwargs: Any) -> None:
        """Every response (errors too) carries a Date header: keep our offset to it.

        The header has whole seconds and was written before we read it, so `Date - now` is a
        lower bound of the offset, up to a second low; the highest bound of the last minute or
        two is within a few milliseconds of it once a few responses came (nodes must agree on
        protocol v2's windows to well under a second). Kept per minute, so that a step of our
        own clock is followed within two minutes."""
        date = getattr(http_response, "headers", {}).get("Date")
        if not date:
            return
        try:
            server = botocore.utils.parse_timestamp(date).timestamp()
        except (ValueError, TypeError):
            return
        self._server_said(server)

    def _server_said(self, server: float) -> None:
        """A response's Date (whole seconds, a lower bound of the server's clock): from
        botocore's responses and from the thin PUT path's."""
        now = time.time()
        mono = time.monotonic()
        minute = int(mono // 60)
        if (server, minute) == self._said:  # the same second again: a later `now` lowers no bound
            self.answered_at = mono
            return
        with self._lock:
            bounds = {m: b for m, b in self._bounds.items() if m >= minute - 1}
            bounds[minute] = max(bounds.get(minute, server - now), server - now)
            self._bounds = bounds
            self._offset = max(bounds.values())
            self._said = (server, minute)
        self.answered_at = mono

    def thin_put(self) -> ThinPut | None:
        """The thin PUT path, made on first use; None where it cannot serve (turned off, a
        given client, or a bucket it stepped aside for)."""
        if not self.thin:
            return None
        if self._thin is None:
            client = self.client
            with self._lock:
                if self._thin is None:
                    pool, connect, read, attempts = self._settings
                    try:
                        self._thin = ThinPut(
                            client,
                            self._session,
                            self.bucket,
                            pool=pool,
                            connect_timeout=connect,
                            read_timeout=read,
                            attempts=attempts,
                            on_attempt=self._notify,
                            on_date=self._server_said,
                        )
                    except StepAside:
                        self.thin = False
                        return None
        return self._thin

    def server_time(self) -> float:
        return time.time() + self._offset

    def _call(self, kind: str, what: str, op: str, conditional: bool = False, **kw: Any) -> Any:
        """Count one request, make it, classify what fails."""
        self.requests.add(kind)
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kw)
        except Exception as e:
            raise classify(e, what, conditional=conditional) from None

    def check(self) -> None:
        try:
            self._call("HEAD", f"s3://{self.bucket}", "head_bucket")
        except NotFound:
            raise ConfigError(
                f"s3://{self.bucket}: no such bucket (check the bucket and endpoint URL)"
            ) from None

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
        kw = _put_object_args(key, body, if_none_match, if_match, metadata, sha256)
        if len(body) <= EXPECT_ABOVE and self.thin:
            etag = self._put_thin(kw, if_match is not None)
            if etag is not None:
                return etag
        r = self._call("PUT", f"PUT {key}", "put_object", if_match is not None, **kw)
        return _unquote(r.get("ETag"))

    def _put_thin(self, kw: dict[str, Any], conditional: bool) -> str | None:
        """put_object's arguments through ThinPut: the ETag, a classified error, or None
        when the thin path steps aside (boto3 makes, and counts, the request then)."""
        what = f"PUT {kw['Key']}"
        try:
            thin = self.thin_put()
        except Exception as e:  # no credentials, say: the same error boto3 would give
            raise classify(e, what, conditional=conditional) from None
        if thin is None:
            return None
        try:
            etag = thin.put(**_thin_args(kw))
        except StepAside:
            self.thin = False
            return None
        except Exception as e:
            self.requests.add("PUT")
            raise classify(e, what, conditional=conditional) from None
        self.requests.add("PUT")
        return _unquote(etag)

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
        """A small PUT on the thin path's trio streams (no thread); the rest, and whatever
        the thin path steps aside for, is `put` through `offload` (ObjectStore's way)."""
        kw = _put_object_args(key, body, if_none_match, None, metadata, sha256)
        thin = self._thin if self.thin else None
        if thin is None and self.thin:
            try:
                thin = await offload(self.thin_put)  # once: boto3's client and credentials
            except Exception as e:  # no credentials, say: the same error boto3 would give
                raise classify(e, f"PUT {key}") from None
        if thin is not None and len(body) <= EXPECT_ABOVE:
            try:
                etag = await thin.put_async(**_thin_args(kw), sha256=body_sha256)
            except StepAside:
                self.thin = False
            except Exception as e:
                self.requests.add("PUT")
                raise classify(e, f"PUT {key}") from None
            else:
                self.requests.add("PUT")
                return _unquote(etag)
        return await super().put_async(
            key,
            body,
            offload=offload,
            if_none_match=if_none_match,
            metadata=metadata,
            sha256=sha256,
        )

    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        check_key(key)
        r = self._call("GET", f"GET {key}", "get_object", Key=key)
        try:
            body = r["Body"].read()
        except Exception as e:  # the connection broke while the body streamed
            raise classify(e, f"GET {key}") from None
        return body, _info(key, r, with_meta=True)

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        check_key(key)
        kw: dict[str, Any] = {"Key": key}
        if version_id is not None:
            kw["VersionId"] = version_id
        try:
            r = self._call("HEAD", f"HEAD {key}", "head_object", **kw)
        except NotFound:
            return None
        return _info(key, r, with_meta=True)

    def versioning_enabled(self) -> bool:
        r = self._call("GET", f"s3://{self.bucket} versioning", "get_bucket_versioning")
        return bool(r.get("Status") == "Enabled")

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        kw: dict[str, Any] = {"Prefix": prefix}
        while True:
            r = self._call("LIST", f"LIST versions {prefix}", "list_object_versions", **kw)
            found = [
                ObjectVersion(
                    str(v["Key"]),
                    str(v["VersionId"]),
                    v["LastModified"].timestamp(),
                    bool(v.get("IsLatest")),
                    int(v["Size"]) if "Size" in v else None,
                    _unquote(v["ETag"]) if "ETag" in v else None,
                )
                for v in r.get("Versions", []) + r.get("DeleteMarkers", [])
            ]
            # Two lists per page (versions, then markers): merge them by key, newest first.
            yield from sorted(found, key=lambda v: (v.key, not v.is_latest, -v.last_modified))
            if not r.get("IsTruncated"):
                return
            kw["KeyMarker"] = r["NextKeyMarker"]
            kw["VersionIdMarker"] = r["NextVersionIdMarker"]

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        kw: dict[str, Any] = {"Key": key}
        if if_match is not None:
            kw["IfMatch"] = _quote(if_match)
        self._call("DELETE", f"DELETE {key}", "delete_object", if_match is not None, **kw)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = [check_key(k) for k in keys]  # all of them before the first request
        for batch in chunks(keys):
            what = f"DeleteObjects of {len(batch)} keys"
            r = self._call(
                "POST",
                what,
                "delete_objects",
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            failed = [e for e in r.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise Unavailable(
                    f"{what}: {len(failed)} not deleted ({failed[0].get('Code')}:"
                    f" {failed[0].get('Message')}); safe to repeat"
                )

    def list_page(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = PAGE,
    ) -> ListPage:
        kw: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max_keys}
        if start_after:
            kw["StartAfter"] = start_after
        if delimiter:
            kw["Delimiter"] = delimiter
        if token:
            kw["ContinuationToken"] = token
        r = self._call("LIST", f"LIST {prefix}", "list_objects_v2", **kw)
        objects = [
            ObjectInfo(
                str(o["Key"]),
                int(o.get("Size", 0)),
                _unquote(o.get("ETag")),
                o["LastModified"].timestamp(),
            )
            for o in r.get("Contents", [])
        ]
        prefixes = [str(p["Prefix"]) for p in r.get("CommonPrefixes", [])]
        more = bool(r.get("IsTruncated")) and r.get("NextContinuationToken")
        return ListPage(objects, prefixes, str(r["NextContinuationToken"]) if more else None)


def _info(key: str, r: dict[str, Any], *, with_meta: bool) -> ObjectInfo:
    """ObjectInfo from a HEAD or GET response."""
    return ObjectInfo(
        key,
        int(r.get("ContentLength", 0)),
        _unquote(r.get("ETag")),
        r["LastModified"].timestamp(),
        dict(r.get("Metadata", {})) if with_meta else None,
    )
