"""The thin PUT path (fusefs.objects.s3put, sigv4): its signature is accepted by real servers,
it reuses one connection, and it fails, retries and times out the way botocore's put_object
did, so the seam's classification is unchanged, on both transports: `put` on the thread pool
(sigv4.Pool) and `put_async` on trio streams (streams.py, the daemon's witness uploads). The
conformance suite (test_objects_conformance.py) runs every `put` through it too; here is what
that suite cannot see: which path served the request, the retries, the connection, a hung
server."""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from botocore.config import Config

from fusefs.objects import AccessDenied, PreconditionFailed, SlowDown, Timeout, Unavailable
from fusefs.objects.s3 import S3ObjectStore
from fusefs.objects.s3put import _target
from tests.support.mounts import new_bucket, wait_for
from tests.support.s3_proxy import S3Proxy
from tests.support.s3_servers import ACCESS_KEY, BIN, SECRET_KEY, Server, free_port

WITNESS = b"name,worker,bytes\n10.00/20.00/coffee.csv,42,57\n"
META = {"sha256": "ab" * 32, "worker": "w-1"}


@pytest.fixture(autouse=True)
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):  # loopback, directly
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def proxy(seaweed: Server) -> Iterator[S3Proxy]:
    p = S3Proxy(seaweed.endpoint).start()
    try:
        yield p
    finally:
        p.resume()
        p.close()


Put = Callable[..., str]


async def offload(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


@pytest.fixture(params=["thread", "stream"])
def put(request: pytest.FixtureRequest) -> Put:
    """`put(store, key, body, **kw)` through one transport: the store's blocking `put`, or
    its `put_async` in a trio run of its own (a new stream each time)."""
    if request.param == "thread":
        return lambda store, key, body, **kw: store.put(key, body, **kw)

    def streamed(store: S3ObjectStore, key: str, body: bytes, **kw: Any) -> str:
        return trio.run(functools.partial(store.put_async, key, body, offload=offload, **kw))

    return streamed


def attempts_seen(store: S3ObjectStore) -> list[tuple[str, Any, Any]]:
    """Every HTTP attempt the store reports to its listeners (what metrics count)."""
    seen: list[tuple[str, Any, Any]] = []
    store.add_listener(lambda op, resp, parsed, exc: seen.append((op, resp, exc)))
    return seen


@pytest.mark.parametrize("name", ["moto", "seaweed"])
def test_the_signature_is_accepted_and_the_object_is_what_boto3_would_store(
    request: pytest.FixtureRequest, name: str, put: Put
) -> None:
    server: Server = request.getfixturevalue(name)
    bucket = new_bucket(server)
    store = S3ObjectStore(bucket, server.endpoint)
    seen = attempts_seen(store)
    key = "runs/m/scraped-tiles/10.00/20.00/café +1%.csv"
    etag = put(store, key, WITNESS, if_none_match=True, metadata=META)
    assert store._thin is not None  # the thin path served it, not boto3
    assert [(op, r["status_code"]) for op, r, _ in seen] == [("PutObject", 200)]
    with pytest.raises(PreconditionFailed):  # 412 (both servers honour If-None-Match)
        put(store, key, b"another body", if_none_match=True, metadata=META)
    assert [r["status_code"] for _, r, _ in seen] == [200, 412]
    raw = server.client().get_object(Bucket=bucket, Key=key)  # read back through boto3
    assert raw["Body"].read() == WITNESS
    assert raw["ETag"].strip('"') == etag
    assert raw["Metadata"] == META
    assert store.requests.snapshot() == {"PUT": 2}
    assert abs(store.server_time() - time.time()) < 2.0  # the Date header was read


def test_seaweedfs_checks_the_hand_made_signature(seaweed: Server, put: Put) -> None:
    """SeaweedFS verifies SigV4 (moto does not): a wrong secret is refused, and the same
    store with the right one (a fresh store: credentials are frozen per store) is accepted,
    so acceptance above is not leniency. The refusal is AccessDenied, as with boto3."""
    bucket = new_bucket(seaweed)
    S3ObjectStore(bucket, seaweed.endpoint).put("k", b"1")
    bad = S3ObjectStore(bucket, seaweed.endpoint)
    thin = bad.thin_put()
    assert thin is not None
    thin._session = _FixedSession("not-the-secret")
    thin.credentials(renew=True)
    with pytest.raises(AccessDenied) as e:
        put(bad, "k2", b"1")
    assert "not-the-secret" not in str(e.value)
    assert bad._thin is thin  # refused on the thin path, classified as boto3's refusal was
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 1


def test_one_kept_alive_connection_serves_every_put(seaweed: Server) -> None:
    store = S3ObjectStore(new_bucket(seaweed), seaweed.endpoint)
    for i in range(20):
        store.put(f"w/{i}.csv", WITNESS, if_none_match=True, metadata=META)
    thin = store.thin_put()
    assert thin is not None and thin.pool.opened == 1


def test_one_stream_serves_every_put_of_a_run_with_no_thread(
    seaweed: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's uploads: after the first PUT of a run (which makes the thin path, boto3's
    client and credentials, in a thread) every PUT is a send and a receive on one kept-alive
    trio stream, and no call leaves trio's thread."""
    store = S3ObjectStore(new_bucket(seaweed), seaweed.endpoint)
    hops: list[Any] = []

    async def counted(fn: Callable[[], Any]) -> Any:
        hops.append(fn)
        return await trio.to_thread.run_sync(fn)

    async def run() -> None:
        await store.put_async("w/0.csv", WITNESS, offload=counted, if_none_match=True)
        made = len(hops)
        real = trio.to_thread.run_sync
        monkeypatch.setattr(trio.to_thread, "run_sync", None)  # any thread hop would fail
        try:
            async with trio.open_nursery() as nursery:
                for i in range(1, 21):
                    key = f"w/{i}.csv"
                    nursery.start_soon(
                        functools.partial(
                            store.put_async, key, WITNESS, offload=counted, metadata=META
                        )
                    )
        finally:
            monkeypatch.setattr(trio.to_thread, "run_sync", real)
        assert len(hops) == made == 1

    trio.run(run)
    thin = store.thin_put()
    assert thin is not None
    assert thin.pool.opened == 0  # no blocking connection was ever made
    assert 1 <= thin.streams.opened <= 20  # concurrent PUTs, kept-alive streams
    assert store.requests["PUT"] == 21
    listed = seaweed.client().list_objects_v2(Bucket=store.bucket, Prefix="w/")
    assert listed["KeyCount"] == 21


def test_a_503_slowdown_is_retried_with_backoff_then_reported(
    seaweed: Server, proxy: S3Proxy, put: Put
) -> None:
    bucket = new_bucket(seaweed)
    store = S3ObjectStore(bucket, proxy.endpoint, attempts=2)
    seen = attempts_seen(store)
    proxy.fail(1)  # the first attempt is refused, the retry goes through
    put(store, "w/1.csv", WITNESS, if_none_match=True, metadata=META)
    assert proxy.failed == 1
    assert [r["status_code"] for _, r, _ in seen] == [503, 200]
    assert store.requests["PUT"] == 1  # one request for the protocol, two HTTP attempts
    proxy.fail(5)
    t0 = time.monotonic()
    with pytest.raises(SlowDown):
        put(store, "w/2.csv", WITNESS, if_none_match=True, metadata=META)
    assert proxy.failed == 3  # attempts=2: one try and one retry, no more
    assert time.monotonic() - t0 < 5.0  # one backoff of at most 1 s (throttled: scale 1 s)
    proxy.fail(0)
    assert seaweed.client().list_objects_v2(Bucket=bucket, Prefix="w/")["KeyCount"] == 1


def test_an_expired_token_renews_the_credentials_once(
    seaweed: Server, proxy: S3Proxy, put: Put
) -> None:
    store = S3ObjectStore(new_bucket(seaweed), proxy.endpoint, attempts=1)
    thin = store.thin_put()
    assert thin is not None
    counting = _FixedSession(SECRET_KEY)
    thin._session = counting
    thin.credentials(renew=True)
    assert counting.calls == 1
    proxy.fail(1, 400, "ExpiredToken")
    put(store, "w/1.csv", WITNESS)  # refused, credentials asked again, accepted
    assert counting.calls == 2 and proxy.failed == 1
    proxy.fail(2, 400, "ExpiredToken")  # still expired after renewing: reported, not looped
    with pytest.raises(AccessDenied):
        put(store, "w/2.csv", WITNESS)
    assert counting.calls == 3


def test_a_hung_server_times_out(seaweed: Server, proxy: S3Proxy, put: Put) -> None:
    """The server takes the connection and the request, and never answers: Timeout (the
    store shows "degraded") after `attempts` x `read_timeout`, not a hang."""
    store = S3ObjectStore(new_bucket(seaweed), proxy.endpoint, read_timeout=1, attempts=2)
    put(store, "w/0.csv", WITNESS)  # a pooled connection, then the server goes silent
    proxy.hang()
    t0 = time.monotonic()
    with pytest.raises(Timeout) as e:
        put(store, "w/1.csv", WITNESS, if_none_match=True, metadata=META)
    took = time.monotonic() - t0
    assert 1.5 <= took < 10.0
    assert e.value.sent  # the request was sent: its fate is unknown
    assert proxy.seen("PUT") == 2  # both attempts reached the silent server
    proxy.resume()
    put(store, "w/2.csv", WITNESS)  # the poisoned connections were dropped: a new one works


def test_an_unreachable_endpoint_is_unavailable_and_never_sent(seaweed: Server, put: Put) -> None:
    store = S3ObjectStore("bucket", f"http://127.0.0.1:{free_port()}", attempts=2)
    with pytest.raises(Unavailable) as e:
        put(store, "k", b"1")
    assert not e.value.sent and not isinstance(e.value, Timeout)
    assert store._thin is not None  # the thin path failed it, as botocore would have


def test_addressing_follows_the_boto3_client() -> None:
    """Path style for an endpoint URL (local servers have no per-bucket DNS), a virtual host
    on AWS, HTTPS where the client would use it; the client's region signs."""
    local = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:9000", config=Config(s3={"addressing_style": "path"})
    )
    t = _target(local, "my-bucket")
    assert (t.scheme, t.netloc, t.port, t.prefix) == ("http", "127.0.0.1:9000", 9000, "/my-bucket/")
    aws = boto3.session.Session(region_name="eu-west-1").client("s3")
    t = _target(aws, "my-bucket")
    assert (t.scheme, t.port, t.prefix, t.region) == ("https", 443, "/", "eu-west-1")
    assert t.netloc.startswith("my-bucket.s3.")
    store = S3ObjectStore("my-bucket")  # AWS: no request is made by building the path
    thin = store.thin_put()
    assert thin is not None and thin.target.scheme == "https"
    assert (
        thin.pool.ssl_context is not None
        and thin.pool.ssl_context.verify_mode.name == "CERT_REQUIRED"
    )


@pytest.fixture
def tls_moto(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """moto on https://127.0.0.1 with a self-signed certificate: (endpoint, its certificate)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    openssl += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    openssl += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(openssl, check=True, capture_output=True)
    port = free_port()
    with open(tmp_path / "moto.log", "ab") as log:
        cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        cmd += ["--ssl-cert", str(cert), "--ssl-key", str(key)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"https://127.0.0.1:{port}"
    try:
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, verify=str(cert))
        wait_for(lambda: _created(client, "tls-bucket"), 60, "moto on HTTPS")
        yield endpoint, cert
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _created(client: Any, bucket: str) -> bool:
    try:
        client.create_bucket(Bucket=bucket)
    except Exception:
        return False
    return True


def test_https_verifies_the_server_with_boto3s_ca_bundle(
    tls_moto: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, put: Put
) -> None:
    """HTTPS: the server's certificate is checked against the CA bundle boto3 would use
    (AWS_CA_BUNDLE here); without it the self-signed server is refused, as boto3 refuses it."""
    endpoint, cert = tls_moto
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    store = S3ObjectStore("tls-bucket", endpoint)
    etag = put(store, "w/1.csv", WITNESS, if_none_match=True, metadata=META)
    thin = store.thin_put()
    assert thin is not None and thin.target.scheme == "https"
    assert thin.pool.opened + thin.streams.opened >= 1
    body, info = store.get("w/1.csv")  # through boto3: the same object
    assert (body, info.etag, info.metadata) == (WITNESS, etag, META)
    with pytest.raises(PreconditionFailed):
        put(store, "w/1.csv", b"again", if_none_match=True)
    monkeypatch.delenv("AWS_CA_BUNDLE")
    untrusting = S3ObjectStore("tls-bucket", endpoint, attempts=1)
    with pytest.raises(Unavailable) as e:
        put(untrusting, "w/2.csv", WITNESS)
    assert "SSL" in str(e.value)
    assert untrusting._thin is not None  # refused by the thin path's own verification


def test_a_proxy_sends_puts_back_to_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 honours HTTP(S)_PROXY; the thin path connects directly, so it stands aside
    (NO_PROXY for the endpoint brings it back). No request is made to find out."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert S3ObjectStore("my-bucket", "http://127.0.0.1:9000").thin_put() is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert S3ObjectStore("my-bucket", "http://127.0.0.1:9000").thin_put() is not None


class _FixedSession:
    """A stand-in for boto3's session: fixed credentials, counting how often it is asked."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls = 0

    def get_credentials(self) -> Any:
        self.calls += 1
        secret = self.secret

        class Frozen:
            access_key = ACCESS_KEY
            secret_key = secret
            token = None

        class Source:
            def get_frozen_credentials(self) -> Any:
                return Frozen()

        return Source()
