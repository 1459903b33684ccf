"""The counting proxy's HTTP framing (tests/support/s3_proxy.py): requests split anywhere
across reads, pipelined on one connection, with Content-Length or chunked bodies, are each
counted once, by kind and by key area."""

from __future__ import annotations

from tests.support.s3_proxy import RequestCounts, _RequestParser

PUT = (
    b"PUT /b/runs/m/claims/0000000000/10.00/20.00/p.csv HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 11\r\n\r\nhello world"
)
FAKE = b"GET /b/runs/m/segments/x HTTP/1.1\r\n\r\n"  # bytes of a body, not a request
CHUNKED = (
    b"PUT /b/runs/m/log/0000000001/n00-1.txt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x;chunk-signature=abc\r\n%s\r\n3\r\nxyz\r\n0\r\nx-amz-checksum: 1\r\n\r\n"
    % (len(FAKE), FAKE)
)
LIST = b"GET /b?list-type=2&prefix=runs%2Fm%2Fsegments%2F HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b"<Delete><Object><Key>runs/m/claims/0/a</Key></Object></Delete>"
DELETE_MANY = b"POST /b?delete HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
HEAD = b"HEAD /b/runs/m/.missionfs/protocol.json HTTP/1.1\r\n\r\n"


def counted(stream: bytes, step: int) -> dict[tuple[str, str, str], int]:
    counts = RequestCounts("b", "runs/m")
    parser = _RequestParser(counts, "t")
    for i in range(0, len(stream), step):
        parser.feed(stream[i : i + step])
    return dict(counts.snapshot())


def test_pipelined_requests_are_counted_once_whatever_the_reads() -> None:
    stream = PUT + CHUNKED + LIST + DELETE_MANY + HEAD + PUT
    want = {
        ("t", "PUT", "claims"): 2,
        ("t", "PUT", "log"): 1,  # FAKE in its chunked body is not counted
        ("t", "LIST", "segments"): 1,
        ("t", "POST", "claims"): 1,
        ("t", "HEAD", ".missionfs"): 1,
    }
    for step in (1, 7, 64, len(stream)):
        assert counted(stream, step) == want, step


def test_areas_outside_the_base_and_of_the_bucket() -> None:
    counts = RequestCounts("b", "runs/m")
    assert counts.classify("GET", "/b?list-type=2&prefix=runs%2Fm%2F") == ("LIST", "(root)")
    assert counts.classify("HEAD", "/b") == ("HEAD", "(root)")
    assert counts.classify("GET", "/b/runs/other/claims/x") == ("GET", "(other)")
    assert counts.classify("PUT", "/elsewhere/runs/m/claims/x") == ("PUT", "(other)")
    assert counts.classify("DELETE", "/b/runs/m/segments/0000000001.seg") == (
        "DELETE",
        "segments",
    )
