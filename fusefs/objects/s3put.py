"""The witness PUT without botocore's machinery, failing the way botocore's put_object fails.

`ThinPut.put` takes the arguments S3ObjectStore.put gives boto3 and either returns the ETag
or raises the exception botocore would have raised for the same answer (ClientError with the
status and S3 error code, ReadTimeoutError, EndpointConnectionError, ...), after the same
retries (botocore's standard mode: 5xx, throttling codes, timeouts and broken connections, up
to `attempts` tries, with its backoff). So `fusefs.objects.s3.classify` turns every failure
into the seam's error exactly as before, and the metrics listener sees every attempt.

What the thin path takes from the boto3 client, so that both agree on where a bucket is:
the URL of the bucket (a presigned URL's scheme, host and path: path-style or virtual host, as
the client chose for this endpoint), the signing region (the client's) and the credentials of boto3's provider chain, frozen and re-frozen every `FREEZE_SECONDS`
(refreshable credentials renew themselves when frozen near their expiry) or at once when the
server says the token expired. An answer it does not expect from a correctly addressed bucket
(a redirect: the bucket is in another region) makes it step aside: that PUT and every later
one go through boto3, whose region redirector knows what to do. So does a client that would
use an HTTP proxy (its settings or HTTP(S)_PROXY): the thin path is then not used at all.

Two transports, one request: `put` (blocking, sigv4.Pool, for worker threads) and `put_async`
(trio's thread, streams.StreamPool: the daemon's witness uploads, with no thread hop).
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import botocore.httpsession
import trio

from fusefs.objects import sigv4
from fusefs.objects.streams import StreamPool

FREEZE_SECONDS = 60.0  # botocore refreshes credentials 10-15 minutes before they expire
_EXPIRED = frozenset({"ExpiredToken", "TokenRefreshRequired", "RequestExpired"})
_REDIRECT = frozenset({301, 302, 307, 308})

OnAttempt = Callable[[str, Any, Any, Any], None]
"""(operation, response dict or None, parsed response, exception or None), per HTTP attempt:
what botocore's `response-received` event gives S3ObjectStore's listeners."""


class StepAside(Exception):
    """The thin path cannot serve this bucket (a redirect, an unusual client): use boto3."""


class ThinPut:
    """Small PUTs of one bucket on a kept-alive pool; thread-safe. Made from a boto3 client
    and its session (the provider chain); `settings` are the store's (pool, connect timeout,
    read timeout, attempts)."""

    def __init__(
        self,
        client: Any,
        session: Any,
        bucket: str,
        *,
        pool: int,
        connect_timeout: float,
        read_timeout: float,
        attempts: int,
        on_attempt: OnAttempt,
        on_date: Callable[[float], None],
    ) -> None:
        self._session = session
        self.attempts = max(1, attempts)
        self._on_attempt = on_attempt
        self._on_date = on_date
        self._dates: tuple[str, float] = ("", 0.0)  # the last Date header, parsed
        self._frozen: tuple[float, sigv4.Credentials] | None = None
        self._lock = threading.Lock()
        self.target = _target(client, bucket)
        self.signer = sigv4.Signer(self.target.region)
        self.pool = sigv4.Pool(
            self.target,
            size=pool,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            cafile=_ca_bundle(session) if self.target.scheme == "https" else None,
        )
        self.streams = StreamPool(self.pool)
        self.url = f"{self.target.scheme}://{self.target.netloc}"

    # -- credentials ------------------------------------------------------------------------------
    def credentials(self, *, renew: bool = False) -> sigv4.Credentials:
        """boto3's credentials, frozen for FREEZE_SECONDS; NoCredentialsError if none."""
        now = time.monotonic()
        frozen = self._frozen
        if frozen is not None and not renew and now - frozen[0] < FREEZE_SECONDS:
            return frozen[1]
        with self._lock:
            source = self._session.get_credentials()
            if source is None:
                raise botocore.exceptions.NoCredentialsError()
            f = source.get_frozen_credentials()
            if not f.access_key or not f.secret_key:
                raise botocore.exceptions.PartialCredentialsError(
                    provider="boto3", cred_var="secret_key"
                )
            creds = sigv4.Credentials(f.access_key, f.secret_key, f.token or None)
            self._frozen = (now, creds)
            return creds

    def fresh_credentials(self) -> sigv4.Credentials | None:
        """The frozen credentials if still fresh, else None (asking the provider chain may
        block: a caller on trio's thread gets them through a worker thread then)."""
        frozen = self._frozen
        if frozen is not None and time.monotonic() - frozen[0] < FREEZE_SECONDS:
            return frozen[1]
        return None

    # -- the request ------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
        checksum_sha256: str | None = None,
        sha256: str | None = None,
    ) -> str:
        """PUT `body`; the quoted ETag (as botocore returns it). `if_match` is quoted already,
        `checksum_sha256` base64 (the x-amz-checksum-sha256 header), as boto3 takes them;
        `sha256`: the body's SHA-256 in hex if the caller has it (it is the signed payload
        hash: not computed again)."""
        path, headers, payload = self._request(
            key, body, if_none_match, if_match, metadata, checksum_sha256, sha256
        )
        attempt, renewed = 0, False
        while True:
            attempt += 1
            h = dict(headers)
            self.signer.sign("PUT", path, h, payload, self.credentials())
            try:
                reply = self._answered(self._send(path, body, h))
            except botocore.exceptions.BotoCoreError:
                if attempt >= self.attempts:
                    raise
                time.sleep(sigv4.backoff(attempt, False, random.random()))
                continue
            verdict = self._verdict(reply, attempt, renewed)
            if isinstance(verdict, str):
                return verdict
            if verdict < 0:  # renew the credentials, then once more
                renewed, attempt = True, attempt - 1
                self.credentials(renew=True)
                continue
            time.sleep(verdict)

    async def put_async(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
        checksum_sha256: str | None = None,
        sha256: str | None = None,
    ) -> str:
        """`put` from trio's thread, on trio streams (streams.py): the same request, retries,
        errors and listener calls, no worker thread (but for a credentials refresh)."""
        path, headers, payload = self._request(
            key, body, if_none_match, if_match, metadata, checksum_sha256, sha256
        )
        attempt, renewed = 0, False
        while True:
            attempt += 1
            creds = self.fresh_credentials()
            if creds is None:
                creds = await trio.to_thread.run_sync(self.credentials)
            h = dict(headers)
            self.signer.sign("PUT", path, h, payload, creds)
            try:
                reply = self._answered(await self._send_async(path, body, h))
            except botocore.exceptions.BotoCoreError:
                if attempt >= self.attempts:
                    raise
                await trio.sleep(sigv4.backoff(attempt, False, random.random()))
                continue
            verdict = self._verdict(reply, attempt, renewed)
            if isinstance(verdict, str):
                return verdict
            if verdict < 0:
                renewed, attempt = True, attempt - 1
                await trio.to_thread.run_sync(lambda: self.credentials(renew=True))
                continue
            await trio.sleep(verdict)

    def _request(
        self,
        key: str,
        body: bytes,
        if_none_match: bool,
        if_match: str | None,
        metadata: Mapping[str, str] | None,
        checksum_sha256: str | None,
        sha256: str | None,
    ) -> tuple[str, dict[str, str], str]:
        """The path, the headers to sign and the payload hash of a PUT."""
        path = self.target.prefix + sigv4.quote_key(key)
        headers = {"host": self.target.netloc, "content-length": str(len(body))}
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match is not None:
            headers["if-match"] = if_match
        for name, value in (metadata or {}).items():
            headers[f"x-amz-meta-{name.lower()}"] = value
        if checksum_sha256 is not None:
            headers["x-amz-checksum-sha256"] = checksum_sha256
        return path, headers, sha256 or hashlib.sha256(body).hexdigest()

    def _verdict(self, reply: sigv4.Reply, attempt: int, renewed: bool) -> str | float:
        """What an answer means: the ETag (done), a delay before the next attempt, or -1
        (renew the credentials first); raises what botocore would have raised."""
        if reply.status < 300:
            return reply.headers.get("etag", "")
        if reply.status in _REDIRECT or reply.code == "AuthorizationHeaderMalformed":
            raise StepAside(f"PUT answered {reply.status} {reply.code}")
        if reply.code in _EXPIRED and not renewed:
            return -1.0  # a fresh token from the provider chain, then once more
        if sigv4.retryable(reply) and attempt < self.attempts:
            throttled = reply.status == 429 or reply.code in sigv4.THROTTLING_CODES
            return sigv4.backoff(attempt, throttled, random.random())
        raise _client_error(reply)

    def _send(self, path: str, body: bytes, headers: dict[str, str]) -> sigv4.Reply:
        """One signed attempt on the thread pool; a transport failure raised as botocore's
        exception for it."""
        try:
            return self.pool.request("PUT", path, body, headers)
        except Exception as e:
            raise self._failed(e) from None

    async def _send_async(self, path: str, body: bytes, headers: dict[str, str]) -> sigv4.Reply:
        try:
            return await self.streams.request("PUT", path, body, headers)
        except Exception as e:
            raise self._failed(e) from None

    def _failed(self, e: Exception) -> Exception:
        err = self._transport_error(e)
        self._on_attempt("PutObject", None, None, err)
        return err

    def _answered(self, reply: sigv4.Reply) -> sigv4.Reply:
        """Tell the listeners and the clock about an answer."""
        self._seen_date(reply.headers.get("date"))
        parsed: dict[str, Any] = {}
        if reply.status >= 300:
            parsed = {"Error": {"Code": reply.code, "Message": reply.message}}
        self._on_attempt(
            "PutObject", {"status_code": reply.status, "headers": reply.headers}, parsed, None
        )
        return reply

    def _transport_error(self, e: Exception) -> Exception:
        url = self.url
        if isinstance(e, sigv4.ConnectTimedOut):
            return botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=e)
        if isinstance(e, sigv4.ConnectFailed):
            return botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=e)
        if isinstance(e, TimeoutError):
            return botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=e)
        if isinstance(e, ssl.SSLError):
            return botocore.exceptions.SSLError(endpoint_url=url, error=e)
        if isinstance(e, OSError):
            return botocore.exceptions.ConnectionClosedError(endpoint_url=url, error=e)
        return e

    def _seen_date(self, date: str | None) -> None:
        """Tell the store the server's clock (its Date header, parsed once per second)."""
        if not date:
            return
        last, parsed = self._dates
        if date != last:
            try:
                parsed = email.utils.parsedate_to_datetime(date).timestamp()
            except (ValueError, TypeError):
                return
            self._dates = (date, parsed)
        self._on_date(parsed)

    def close(self) -> None:
        self.pool.close()
        self.streams.close()


def _client_error(reply: sigv4.Reply) -> botocore.exceptions.ClientError:
    """What botocore raises for this answer: the error code from the XML body, else the
    status (as botocore does for a body-less answer)."""
    response: Any = {
        "Error": {"Code": reply.code or str(reply.status), "Message": reply.message},
        "ResponseMetadata": {"HTTPStatusCode": reply.status, "HTTPHeaders": reply.headers},
    }
    return botocore.exceptions.ClientError(response, "PutObject")


def _proxied(client: Any, scheme: str, host: str) -> bool:
    """Would boto3 send requests to `host` through a proxy (its `proxies` setting, or the
    HTTP(S)_PROXY environment not excepted by NO_PROXY)? The thin path connects directly."""
    if getattr(client.meta.config, "proxies", None):
        return True
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


def _ca_bundle(session: Any) -> str | None:
    """The CA certificates boto3's client verifies the endpoint with, found the way botocore
    finds them for a client made without `verify`: the `ca_bundle` setting (AWS_CA_BUNDLE or
    the profile's), else REQUESTS_CA_BUNDLE, else botocore's default bundle."""
    core = getattr(session, "_session", None)  # boto3's botocore session
    verify: Any = core.get_config_variable("ca_bundle") if core is not None else None
    if verify is None:
        verify = os.environ.get("REQUESTS_CA_BUNDLE", True)
    path = botocore.httpsession.get_cert_path(verify)
    return path if isinstance(path, str) else None


def _target(client: Any, bucket: str) -> sigv4.Target:
    """Where the client sends a PUT to this bucket, from a presigned URL (no request made):
    the client's endpoint resolution and addressing style decide, once. The signing region is
    the client's (us-east-1 when unset, as botocore signs S3 then); a bucket elsewhere answers
    with a redirect or AuthorizationHeaderMalformed, and the thin path steps aside."""
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60
    )
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.path.endswith("/k") or not u.hostname:
        raise StepAside(f"unexpected presigned URL for {bucket}")
    if _proxied(client, u.scheme, u.hostname):
        raise StepAside(f"PUTs to {u.netloc} go through a proxy: boto3 knows how")
    port = u.port or (443 if u.scheme == "https" else 80)
    region = client.meta.region_name or "us-east-1"
    return sigv4.Target(u.scheme, u.netloc, u.hostname, port, u.path[:-1], region)
