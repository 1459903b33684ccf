"""One suite, three object stores: the in-process MemoryStore, moto and SeaweedFS (both real HTTP
servers on 127.0.0.1, through the boto3 S3ObjectStore). Every call the missionfs protocol makes
is exercised the same way on each, so the in-process store is proven to behave like the real
ones. Where a server differs from AWS, the test says so in a comment and pins the memory store
to AWS's behaviour (and the S3 implementation normalises what it can).
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import pytest

from fusefs.objects import (
    AccessDenied,
    BadDigest,
    ConfigError,
    InvalidKey,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    SlowDown,
    Unavailable,
)
from fusefs.objects.memory import MemoryStore, PrefixLimiter
from fusefs.objects.s3 import S3ObjectStore, classify
from tests.support.mounts import new_bucket
from tests.support.s3_servers import ACCESS_KEY, SECRET_KEY, Server, free_port

BACKENDS = ["memory", "moto", "seaweed"]


@dataclass
class Backend:
    name: str
    store: ObjectStore
    server: Server | None = None
    bucket: str = ""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """A fresh, empty bucket on each backend; S3 ones through the real client settings."""
    name = str(request.param)
    if name == "memory":
        return Backend(name, MemoryStore())
    server: Server = request.getfixturevalue(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = new_bucket(server)
    return Backend(name, S3ObjectStore(bucket, server.endpoint), server, bucket)


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


def md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def put_many(store: ObjectStore, keys: list[str], body: bytes = b"x") -> None:
    """PUT keys from a few threads (SeaweedFS takes a few ms per PUT)."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, body), keys))


# -- conditional writes ------------------------------------------------------------------------
def test_conditional_create_wins_once(store: ObjectStore) -> None:
    etag = store.put("claims/1/2/a.csv", b"first", if_none_match=True)
    assert etag == md5(b"first")
    with pytest.raises(PreconditionFailed):
        store.put("claims/1/2/a.csv", b"second", if_none_match=True)
    body, info = store.get("claims/1/2/a.csv")
    assert (body, info.etag, info.size) == (b"first", etag, 5)


def test_conditional_create_race_has_exactly_one_winner(store: ObjectStore) -> None:
    """N threads create the same key at once: one wins, N-1 get PreconditionFailed (AWS may
    answer the losers 409 ConditionalRequestConflict: also PreconditionFailed)."""
    n = 12
    barrier = threading.Barrier(n)
    outcomes: list[str] = [""] * n

    def racer(i: int) -> None:
        barrier.wait()
        try:
            store.put("race/key", f"racer {i}".encode(), if_none_match=True)
            outcomes[i] = "won"
        except PreconditionFailed:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["lost"] * (n - 1) + ["won"]
    body, _ = store.get("race/key")
    assert body == f"racer {outcomes.index('won')}".encode()


def test_replace_with_if_match(store: ObjectStore) -> None:
    first = store.put("lease", b"v1")
    second = store.put("lease", b"v2", if_match=first)
    assert second == md5(b"v2")
    with pytest.raises(PreconditionFailed):  # the ETag we read is stale now
        store.put("lease", b"v3", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("lease", b"v3", if_match=md5(b"never"))
    assert store.get("lease")[0] == b"v2"
    # AWS and moto answer 404 NoSuchKey to If-Match on a missing key, SeaweedFS 412: the seam
    # maps both to PreconditionFailed ("not the object you read").
    with pytest.raises(PreconditionFailed):
        store.put("no-such-lease", b"v1", if_match=first)
    assert store.head("no-such-lease") is None


def test_conditional_delete(store: ObjectStore) -> None:
    etag = store.put("lease", b"mine")
    with pytest.raises(PreconditionFailed):
        store.delete("lease", if_match=md5(b"theirs"))
    assert store.head("lease") is not None
    store.delete("lease", if_match=etag)
    assert store.head("lease") is None
    # A conditional delete of a missing key: AWS/moto 404, SeaweedFS 412; one answer here.
    with pytest.raises(PreconditionFailed):
        store.delete("lease", if_match=etag)
    store.delete("lease")  # unconditional: a missing key is fine (S3's 204)


# -- reads -------------------------------------------------------------------------------------
def test_missing_keys(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("scraped-tiles/no/such.csv")
    assert store.head("scraped-tiles/no/such.csv") is None


def test_head_and_get_carry_metadata_and_times(store: ObjectStore) -> None:
    body = b"lat,lon\n1,2\n"
    etag = store.put("w/1.csv", body, metadata={"sha256": "ab" * 32, "Worker": "w-1"})
    now = store.server_time()
    info = store.head("w/1.csv")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("w/1.csv", len(body), etag)
    assert info.metadata == {"sha256": "ab" * 32, "worker": "w-1"}  # names lower-cased
    assert info.last_modified == int(info.last_modified)  # whole seconds, as S3 keeps them
    assert now - 5 <= info.last_modified <= now + 1
    got, ginfo = store.get("w/1.csv")
    assert got == body and ginfo == info


def test_sha256_is_verified_where_the_server_can(backend: Backend) -> None:
    store = backend.store
    body = b"witness"
    store.put("w/ok.csv", body, sha256=hashlib.sha256(body).hexdigest())
    wrong = hashlib.sha256(b"something else").hexdigest()
    if backend.name == "moto":
        # moto stores a body whatever x-amz-checksum-sha256 says (AWS and SeaweedFS refuse it):
        # why fusefs probes the server before relying on the checksum.
        store.put("w/bad.csv", body, sha256=wrong)
        assert store.head("w/bad.csv") is not None
        return
    with pytest.raises(BadDigest):
        store.put("w/bad.csv", body, sha256=wrong)
    assert store.head("w/bad.csv") is None


# -- listings ----------------------------------------------------------------------------------
ORDERED = ["m/a", "m/a b", "m/a%2Fb", "m/a+b", "m/b", "m/z", "m/~", "m/é", "m/中", "m/😀"]


def test_listing_is_in_utf8_byte_order(store: ObjectStore) -> None:
    for key in reversed(ORDERED):
        store.put(key, key.encode())
    store.put("other/x", b"")
    listed = list(store.list("m/"))
    assert [o.key for o in listed] == sorted(ORDERED, key=lambda k: k.encode())
    assert [o.key for o in listed] == ORDERED
    for o in listed:
        assert (o.size, o.etag, o.metadata) == (len(o.key.encode()), md5(o.key.encode()), None)
    assert [o.key for o in store.list("m/a")] == ["m/a", "m/a b", "m/a%2Fb", "m/a+b"]


def test_start_after(store: ObjectStore) -> None:
    put_many(store, ORDERED)
    assert [o.key for o in store.list("m/", start_after="m/b")] == ORDERED[5:]
    assert [o.key for o in store.list("m/", start_after="m/a b")] == ORDERED[2:]
    assert [o.key for o in store.list("m/", start_after="a")] == ORDERED  # before the prefix
    assert list(store.list("m/", start_after="n")) == []  # beyond it


def test_delimiter_and_common_prefixes(backend: Backend) -> None:
    store = backend.store
    put_many(store, ["t/1/a", "t/1/b", "t/2/x/y", "t/3", "t/4/z", "u/1/a"])
    page = store.list_page("t/", delimiter="/")
    assert page.prefixes == ["t/1/", "t/2/", "t/4/"]
    assert [o.key for o in page.objects] == ["t/3"]
    assert page.next_token is None
    assert list(store.common_prefixes("t/")) == ["t/1/", "t/2/", "t/4/"]
    assert [o.key for o in store.list("t/", delimiter="/")] == ["t/3"]
    # Pages of 2 count prefixes and objects together, and never repeat a prefix.
    seen: list[str] = []
    token = None
    while True:
        page = store.list_page("t/", delimiter="/", token=token, max_keys=2)
        assert len(page.prefixes) + len(page.objects) <= 2
        seen += page.prefixes + [o.key for o in page.objects]
        if page.next_token is None:
            break
        token = page.next_token
    assert sorted(seen) == ["t/1/", "t/2/", "t/3", "t/4/"]
    # start_after inside a common prefix: AWS rolls the keys after it (t/1/b) up into t/1/
    # again, and so do SeaweedFS and the memory store; moto leaves t/1/ out. The protocol never
    # combines the two; this pins the difference.
    after = list(store.common_prefixes("t/", start_after="t/1/a"))
    expected = ["t/2/", "t/4/"] if backend.name == "moto" else ["t/1/", "t/2/", "t/4/"]
    assert after == expected


def test_pagination_and_delete_many_over_1000_keys(store: ObjectStore) -> None:
    keys = [f"p/{i:05d}" for i in range(1205)]
    put_many(store, keys)
    lists = store.requests["LIST"]
    assert [o.key for o in store.list("p/")] == keys
    assert store.requests["LIST"] - lists == 2  # 1,000 + 205
    first = store.list_page("p/")
    assert len(first.objects) == 1000 and first.next_token is not None
    assert [o.key for o in store.list("p/", start_after="p/01100")] == keys[1101:]
    posts = store.requests["POST"]
    store.delete_many([*keys[:1100], "p/not-there"])  # missing keys are fine
    assert store.requests["POST"] - posts == 2  # 1,000 + 101
    assert [o.key for o in store.list("p/")] == keys[1100:]
    store.delete_many([])
    assert store.requests["POST"] - posts == 2  # nothing to delete: no request
    with pytest.raises(InvalidKey):  # a bad key in the second batch: nothing is deleted
        store.delete_many([*keys[1100:], *["p/pad"] * 1000, "p/bad\\key"])
    assert store.requests["POST"] - posts == 2
    assert len(list(store.list("p/"))) == 105


def test_versions_for_the_log(backend: Backend) -> None:
    """`missionfs log` reads who wrote what from a versioned bucket: versions and delete
    markers by key, newest first, and the metadata of an old version."""
    store = backend.store
    gets = store.requests["GET"]
    assert store.versioning_enabled() is False
    assert store.requests["GET"] == gets + 1
    if backend.server is None:
        store = MemoryStore(versioned=True)
    else:
        backend.server.client().put_bucket_versioning(
            Bucket=backend.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    assert store.versioning_enabled() is True
    e1 = store.put("v/k", b"1", metadata={"worker": "a"})
    e2 = store.put("v/k", b"22", metadata={"worker": "b"})
    store.put("v/j", b"333")
    store.delete("v/k")
    store.put("w/other", b"")
    versions = list(store.list_versions("v/"))
    assert [(v.key, v.is_latest, v.size, v.etag, v.deleted) for v in versions] == [
        ("v/j", True, 3, md5(b"333"), False),
        ("v/k", True, None, None, True),
        ("v/k", False, 2, e2, False),
        ("v/k", False, 1, e1, False),
    ]
    assert len({v.version_id for v in versions}) == 4
    first = store.head("v/k", version_id=versions[3].version_id)
    assert first is not None and (first.size, first.metadata) == (1, {"worker": "a"})
    assert store.head("v/k") is None  # the current version is a delete marker
    store.put("v/k", b"again", if_none_match=True)  # ... which is no object


# -- keys --------------------------------------------------------------------------------------
ODD_KEYS = [
    "scraped-tiles/40.70/-74.02/coffee shop.csv",
    "k/café ☕/Zürich.csv",
    "k/a+b.csv",
    "k/100%.csv",
    "k/a%2Fb%25.csv",
    "k/q?x=1&y=2#frag;s",
    "k/tilde~star*(paren)'quote\"",
    "k/ctrl\x01char\ttab",
    "k/ leading and trailing space ",
    "k/" + "s" * 255,
    "k/" + "é" * 127,  # 254 bytes of UTF-8
]


@pytest.mark.parametrize("key", ODD_KEYS, ids=range(len(ODD_KEYS)))
def test_odd_keys_round_trip(store: ObjectStore, key: str) -> None:
    etag = store.put(key, b"body", if_none_match=True)
    body, info = store.get(key)
    assert (body, info.key, info.etag) == (b"body", key, etag)
    assert [o.key for o in store.list(key.rpartition("/")[0] + "/")] == [key]
    store.delete(key, if_match=etag)
    assert store.head(key) is None


BAD_KEYS = [
    "",
    "k/back\\slash",
    "/leading",
    "k//double",
    "k/trailing/",
    "k/./dot",
    "k/../up",
    "k/" + "s" * 256,
    "k/" + "/".join(["s" * 200] * 6),  # 1,207 bytes
    "k/nul\0",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
def test_keys_other_backends_would_rewrite_are_refused(store: ObjectStore, key: str) -> None:
    """The key contract (fusefs.objects.base.check_key), the same on every backend and before
    any request is made."""
    before = store.requests.snapshot()
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.delete_many([key]),
    ):
        with pytest.raises(InvalidKey):
            call()
    assert store.requests.snapshot() == before


@pytest.mark.parametrize("name", ["moto", "seaweed"])
def test_seaweedfs_rewrites_backslashes_and_slashes(
    request: pytest.FixtureRequest, name: str
) -> None:
    """Why the key contract exists: what SeaweedFS does with such keys when they get through
    (a raw client, bypassing the store). AWS and moto keep every one of them as sent."""
    server: Server = request.getfixturevalue(name)
    raw: Any = server.client()
    bucket = new_bucket(server)
    for key in ("a\\b", "/lead", "x//y"):
        raw.put_object(Bucket=bucket, Key=key, Body=b"1")
    listed = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])]
    if name == "seaweed":
        assert listed == ["a/b", "lead", "x/y"]  # three keys, three other names
        assert raw.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"1"
        with pytest.raises(botocore.exceptions.ClientError):  # '.' segments are refused
            raw.put_object(Bucket=bucket, Key="a/./b", Body=b"1")
    else:
        assert listed == ["/lead", "a\\b", "x//y"]


# -- clock, counters, errors -------------------------------------------------------------------
def test_server_time_is_the_servers_clock(store: ObjectStore) -> None:
    store.put("t", b"1")  # a response carries the server's Date
    assert abs(store.server_time() - time.time()) < 2.0  # every server here runs on this host


def test_memory_store_times_come_from_its_clock() -> None:
    now = [1_000_000.75]
    store = MemoryStore(clock=lambda: now[0])
    store.put("a", b"1")
    assert store.server_time() == 1_000_000.75
    now[0] += 3600
    info = store.head("a")
    assert info is not None and info.last_modified == 1_000_000.0
    assert [o.last_modified for o in store.list("")] == [1_000_000.0]


def test_requests_are_counted_by_kind(store: ObjectStore) -> None:
    before = store.requests.snapshot()
    etag = store.put("c/1", b"1")
    store.put("c/2", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):  # a refused request is a request too
        store.put("c/2", b"2", if_none_match=True)
    store.get("c/1")
    store.head("c/1")
    store.head("c/missing")
    list(store.list("c/"))
    store.delete("c/1", if_match=etag)
    store.delete_many(["c/2"])
    after = store.requests.snapshot()
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {"PUT": 3, "GET": 1, "HEAD": 2, "LIST": 1, "DELETE": 1, "POST": 1}
    assert store.requests.total() - sum(before.values()) == 9


def test_check_finds_the_bucket(backend: Backend) -> None:
    backend.store.check()
    if backend.server is None:
        missing: ObjectStore = MemoryStore(bucket_exists=False)
    else:
        missing = S3ObjectStore(f"no-such-{backend.bucket}", backend.server.endpoint)
    with pytest.raises(ConfigError):
        missing.check()
    if backend.name == "seaweed":
        # SeaweedFS creates a missing bucket on the first PUT of an admin identity (AWS and
        # moto answer NoSuchBucket): only check() finds a wrong bucket name everywhere.
        missing.put("k", b"1")
        missing.check()
        return
    with pytest.raises(ConfigError):
        missing.put("k", b"1")


def test_unreachable_endpoint_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3ObjectStore("b", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for call in (lambda: store.put("k", b"1"), store.check, lambda: list(store.list(""))):
        with pytest.raises(Unavailable) as e:
            call()
        assert "\n" not in str(e.value)


def test_small_puts_skip_the_continue_round_trip_and_crc(
    moto: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client settings that save a round trip and CPU per PUT: no `Expect: 100-continue`
    up to 1 MiB, no CRC32 checksum unless the caller sends its SHA-256; the SHA-256 is sent."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3ObjectStore(new_bucket(moto), moto.endpoint)
    store.thin = False  # boto3's PUT (large bodies, every other call); the thin path: test_thin_put
    sent: list[dict[str, str]] = []

    def spy(request: Any, **_: Any) -> None:
        sent.append({k.lower(): str(v) for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3", spy)
    store.put("small", b"x" * 300)
    store.put("large", b"x" * ((1 << 20) + 1))
    body = b"witness"
    store.put("summed", body, sha256=hashlib.sha256(body).hexdigest())
    small, large, summed = sent
    assert "expect" not in small and "expect" in large
    assert not any(h.startswith("x-amz-checksum") for h in small)
    assert summed["x-amz-checksum-sha256"]
    assert not any(h.startswith("x-amz-checksum-crc") for h in summed)


def test_wrong_credentials_are_access_denied(
    seaweed: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS checks signatures (moto accepts any key)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3ObjectStore(new_bucket(seaweed), seaweed.endpoint)
    with pytest.raises(AccessDenied) as e:
        store.put("k", b"1")
    assert "not-the-secret" not in str(e.value)


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("status", "code", "conditional", "expected"),
    [
        (412, "PreconditionFailed", False, PreconditionFailed),
        (409, "ConditionalRequestConflict", False, PreconditionFailed),  # AWS, racing creates
        (404, "NoSuchKey", True, PreconditionFailed),  # If-Match on a missing key (AWS, moto)
        (404, "NoSuchKey", False, NotFound),
        (404, "NoSuchBucket", False, ConfigError),
        (403, "SignatureDoesNotMatch", False, AccessDenied),
        (503, "SlowDown", False, SlowDown),
        (500, "InternalError", False, Unavailable),
        (400, "BadDigest", False, BadDigest),
        (501, "NotImplemented", False, ConfigError),
    ],
)
def test_classify_maps_each_s3_answer_once(
    status: int, code: str, conditional: bool, expected: type[Exception]
) -> None:
    """The AWS answers the local servers cannot be made to give (409, 503, 500, 501)."""
    err = classify(_client_error(status, code), "PUT k", conditional=conditional)
    assert type(err) is expected
    assert str(err).startswith("PUT k: ")
    assert isinstance(classify(botocore.exceptions.NoCredentialsError(), "x"), ConfigError)
    assert issubclass(SlowDown, Unavailable)  # whoever retries Unavailable backs off SlowDown


# -- the memory store's request limits (for the fleet simulator) -------------------------------
def test_prefix_limiter_answers_slowdown_beyond_s3s_rates() -> None:
    now = [100.0]
    limiter = PrefixLimiter()
    store = MemoryStore(clock=lambda: now[0], limiter=limiter)
    for i in range(3500):
        store.put(f"manifests/{i}", b"")
    with pytest.raises(SlowDown):
        store.put("manifests/one-too-many", b"")
    store.put("claims/other-prefix", b"")  # prefixes are limited apart
    for _ in range(5500):  # reads have their own, higher, budget
        store.head("manifests/0")
    with pytest.raises(SlowDown):
        store.get("manifests/0")
    now[0] += 1.0  # a new second
    store.put("manifests/one-too-many", b"")
    assert limiter.slowdowns == {"manifests": 2}
    assert limiter.peak["manifests"] == 5501
    assert store.requests["PUT"] == 3500 + 1 + 1 + 1  # refused requests count too


def test_limiter_sees_listed_prefix() -> None:
    seen: list[tuple[str, str]] = []

    class Spy:
        def admit(self, kind: str, key: str, now: float) -> None:
            seen.append((kind, key))

    store = MemoryStore(limiter=Spy())
    store.put("a/b", b"")
    list(store.list("a/"))
    store.delete_many(["a/b"])
    assert seen == [("PUT", "a/b"), ("LIST", "a/"), ("POST", "a/b")]


def test_memory_rolls_up_a_prefix_ending_in_the_last_code_point() -> None:
    """The memory store skips a common prefix by bisecting to its successor string, which
    must carry past U+10FFFF (there is no next character)."""
    store = MemoryStore()
    for key in ("a\U0010ffffx", "a\U0010ffffy", "b"):
        store.put(key, b"")
    page = store.list_page("", delimiter="\U0010ffff", max_keys=1)
    assert (page.prefixes, page.objects) == (["a\U0010ffff"], [])
    assert page.next_token is not None
    rest = store.list_page("", delimiter="\U0010ffff", token=page.next_token)
    assert ([o.key for o in rest.objects], rest.prefixes) == (["b"], [])
