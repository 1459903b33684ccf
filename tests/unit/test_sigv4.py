"""The hand-made SigV4 signature and HTTP reader of the thin PUT path (fusefs/objects/sigv4.py),
checked against botocore's signer and against answers the local servers never give (chunked
bodies, HTTP/1.0, 100 Continue, garbage)."""

from __future__ import annotations

import calendar
import hashlib
import time

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from fusefs.objects import sigv4

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"


def botocore_signed(
    url: str, headers: dict[str, str], body: bytes, region: str, token: str | None
) -> tuple[str, float]:
    """botocore's S3 signer on the same request: its Authorization and the instant it signed
    at (botocore reads the clock itself)."""
    req = AWSRequest(method="PUT", url=url, data=body, headers=dict(headers))
    S3SigV4Auth(BotoCredentials(ACCESS, SECRET, token), "s3", region).add_auth(req)
    stamp = str(req.headers["X-Amz-Date"])
    when = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    return str(req.headers["Authorization"]), float(when)


@pytest.mark.parametrize(
    ("key", "token", "region"),
    [
        ("test$file.text", None, "us-east-1"),
        ("runs/m/scraped-tiles/10.00/-20.00/café +1%.csv", None, "eu-west-1"),
        ("k/q?x=1&y=2#frag;s~(paren)'\"", "session-token", "us-east-1"),
    ],
)
def test_signature_matches_botocores(key: str, token: str | None, region: str) -> None:
    body = b"Welcome to Amazon S3."
    path = "/examplebucket/" + sigv4.quote_key(key)
    headers = {
        "host": "127.0.0.1:8333",
        "content-length": str(len(body)),
        "if-none-match": "*",
        "x-amz-meta-sha256": "ab" * 32,
        "x-amz-meta-worker": "w  1 ",  # canonical form trims and folds spaces
    }
    payload = hashlib.sha256(body).hexdigest()
    theirs = dict(headers)
    theirs["x-amz-content-sha256"] = payload
    expected, when = botocore_signed(f"http://127.0.0.1:8333{path}", theirs, body, region, token)
    ours = dict(headers)
    creds = sigv4.Credentials(ACCESS, SECRET, token)
    sigv4.Signer(region).sign("PUT", path, ours, payload, creds, now=when)
    assert ours["authorization"] == expected
    assert ours.get("x-amz-security-token") == token


def test_the_signing_key_is_derived_once_a_day() -> None:
    signer = sigv4.Signer("us-east-1")
    k1 = signer.signing_key(SECRET, "20130524")
    assert signer.signing_key(SECRET, "20130524") is k1
    assert signer.signing_key(SECRET, "20130525") != k1
    assert signer.signing_key("other", "20130525") != signer.signing_key(SECRET, "20130525")


def reply(raw: bytes) -> tuple[sigv4.Reply, bool, bytes]:
    """parse_answer on `raw` received whole (the connection ended after it), and what
    follows the answer."""
    got = sigv4.parse_answer(raw, eof=True)
    assert got is not None
    r, keep, end = got
    return r, keep, raw[end:]


def test_a_plain_answer_keeps_the_connection() -> None:
    r, keep, rest = reply(
        b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 0\r\nDate: x\r\n\r\nNEXT'
    )
    assert (r.status, r.headers["etag"], keep, rest) == (200, '"abc"', True, b"NEXT")


def test_an_error_is_read_from_a_chunked_body() -> None:
    body = b"<Error><Code>PreconditionFailed</Code><Message>At least one</Message></Error>"
    raw = b"HTTP/1.1 412 Precondition Failed\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += f"{10:x}\r\n".encode() + body[:10] + b"\r\n"
    raw += f"{len(body) - 10:x};ext=1\r\n".encode() + body[10:] + b"\r\n0\r\n\r\nNEXT"
    r, keep, rest = reply(raw)
    assert (r.status, r.code, r.message, keep, rest) == (
        412,
        "PreconditionFailed",
        "At least one",
        True,
        b"NEXT",
    )


def test_connection_close_http10_and_unframed_bodies_end_the_connection() -> None:
    assert not reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[1]
    assert not reply(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[1]
    assert reply(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")[1]
    r, keep, _ = reply(b"HTTP/1.1 503 Slow Down\r\n\r\n<Error><Code>SlowDown</Code></Error>")
    assert (r.status, r.code, keep) == (503, "SlowDown", False)


def test_informational_answers_are_skipped() -> None:
    r, _, _ = reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert r.status == 200


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", sigv4.Disconnected),
        (b"SSH-2.0-OpenSSH\r\n\r\n", sigv4.BadReply),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", sigv4.BadReply),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", sigv4.BadReply),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", sigv4.BadReply),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", sigv4.BadReply),
        (b"HTTP/1.1 200 OK\r\nContent-Le", sigv4.BadReply),
    ],
)
def test_garbled_answers_are_oserrors(raw: bytes, error: type[Exception]) -> None:
    """Each is an OSError: the thin path reports the connection broken (Unavailable, sent)."""
    with pytest.raises(error):
        reply(raw)
    assert issubclass(error, OSError)


def test_a_line_break_in_a_header_value_is_refused_before_sending() -> None:
    target = sigv4.Target("http", "127.0.0.1:9", "127.0.0.1", 9, "/b/", "us-east-1")
    pool = sigv4.Pool(target, size=1, connect_timeout=1, read_timeout=1)
    with pytest.raises(ValueError):
        pool.request("PUT", "/b/k", b"", {"x-amz-meta-worker": "a\r\nInjected: 1"})
    assert pool.opened == 0


def test_backoff_is_botocores() -> None:
    assert sigv4.backoff(1, False, 1.0) == pytest.approx(0.05)
    assert sigv4.backoff(2, False, 1.0) == pytest.approx(0.1)
    assert sigv4.backoff(1, True, 0.5) == pytest.approx(0.5)
    assert sigv4.backoff(10, True, 1.0) == sigv4.MAX_BACKOFF
    assert sigv4.retryable(sigv4.Reply(503, {}, "SlowDown"))
    assert sigv4.retryable(sigv4.Reply(400, {}, "RequestTimeout"))
    assert not sigv4.retryable(sigv4.Reply(412, {}, "PreconditionFailed"))
    assert not sigv4.retryable(sigv4.Reply(403, {}, "AccessDenied"))
