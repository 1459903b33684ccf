"""The sans-IO parser both thin-PUT transports receive into (sigv4.parse_answer): an answer
arriving in pieces is incomplete at every cut and whole at its end, so a receive loop neither
stops early (a body cut in two reads) nor waits for bytes that never come."""

from __future__ import annotations

import pytest

from fusefs.objects.sigv4 import BadReply, Reply, parse_answer

OK = b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 0\r\n\r\n'
ERROR_BODY = b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"
ERROR = (b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n" % len(ERROR_BODY)) + ERROR_BODY


def frame(buf: bytes) -> int | None:
    """Where the answer ends, None while incomplete (the connection still open)."""
    got = parse_answer(buf)
    return None if got is None else got[2]


def whole(buf: bytes) -> tuple[Reply, bool]:
    got = parse_answer(buf)
    assert got is not None and got[2] == len(buf)
    return got[0], got[1]


def test_an_answer_ends_after_its_content_length_and_not_before() -> None:
    assert frame(OK) == len(OK)
    for cut in range(len(ERROR)):
        assert frame(ERROR[:cut]) is None  # incomplete at every cut
    assert frame(ERROR) == len(ERROR)
    assert frame(ERROR + b"HTTP/1.1 200") == len(ERROR)  # what follows is not this answer's
    reply, keep = whole(ERROR)
    assert (reply.status, reply.code, keep) == (503, "SlowDown", True)


def test_a_chunked_answer_ends_at_its_last_chunk_and_trailers() -> None:
    head = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [b"<Error>", b"<Code>BadDigest</Code></Error>"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    chunked = head + body
    for cut in range(len(chunked)):
        assert frame(chunked[:cut]) is None
    assert frame(chunked) == len(chunked)
    trailers = head + b"0\r\nX-Trailer: 1\r\n\r\n"
    assert frame(trailers[:-2]) is None and frame(trailers) == len(trailers)
    reply, _ = whole(chunked)
    assert (reply.status, reply.code) == (400, "BadDigest")


def test_interim_answers_are_skipped_and_bodiless_ones_end_at_their_headers() -> None:
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert frame(cont) is None  # the real answer is still to come
    assert frame(cont + OK) == len(cont + OK)
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    assert frame(no_content) == len(no_content)
    unbounded = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\npartial"
    assert frame(unbounded) is None  # the body ends with the connection
    got = parse_answer(unbounded, eof=True)
    assert got is not None and got[1:] == (False, len(unbounded))


@pytest.mark.parametrize(
    "junk",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 abc OK\r\n\r\n",  # no status code
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",  # a length that is not a number
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"\r\n",  # more headers than allowed
    ],
)
def test_junk_is_refused_at_once(junk: bytes) -> None:
    with pytest.raises(BadReply):
        frame(junk)


def test_endless_headers_are_refused_without_waiting_for_their_end() -> None:
    with pytest.raises(BadReply):
        frame(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 200_000)
