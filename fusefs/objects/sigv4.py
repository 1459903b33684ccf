"""A thin signed PUT: SigV4 by hand on a small keep-alive connection pool (stdlib only).

Why it exists: one witness PUT through botocore costs 1.5-1.9 ms of CPU on the machine of
docs/benchmarks.md ("Issue 15: cost per task"), the same signed request by hand 0.4 ms; the
difference is botocore's machinery (a dozen event emissions, a case-insensitive header dict,
the endpoint rules, the retry handler), paid once per completed task. A Raspberry-Pi-class
core is about 4x slower. So the hot path, a small PUT, is made here; everything else stays on
boto3 (fusefs.objects.s3), which also supplies what this module needs and must agree with it:
where the bucket lives (`Target`, derived from the boto3 client's own endpoint resolution),
the credentials (boto3's provider chain, frozen by the caller) and the error classification
(the caller turns a `Reply` into the seam's errors with the same `classify` as botocore's).

What is kept from botocore's request, on purpose:
- SigV4 with the payload signed (`x-amz-content-sha256` = the body's SHA-256, as botocore
  does over plain HTTP, and over HTTPS unless a checksum header lets it skip): every header
  sent is signed;
- the signing key is derived once per (secret, day, region) instead of four HMACs a request;
- connections are kept alive and reused (LIFO), `TCP_NODELAY` on (botocore leaves Nagle on),
  headers and body go out in one write; the answer is received into a buffer and read by a
  small sans-IO HTTP/1.1 parser (`parse_answer`: status, headers, a Content-Length or chunked
  body), shared with the trio transport, instead of http.client, which parses every
  response's headers with the email package (half the CPU of the PUT);
- a pooled connection the server closed while idle is detected before reuse (a readable idle
  socket is EOF or junk) and a reused one that fails before any answer is retried once, on a
  new connection, as urllib3's pool does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>")


@dataclass(frozen=True)
class Target:
    """Where PUTs of one bucket go: `scheme://netloc{prefix}{quoted key}`, signed for
    `region`. `prefix` is "/bucket/" for path-style addressing, "/" for virtual hosts."""

    scheme: str  # "http" or "https"
    netloc: str  # the Host header: host[:port]
    host: str
    port: int
    prefix: str
    region: str


@dataclass(frozen=True)
class Credentials:
    """Frozen credentials (what boto3's provider chain gave at one moment)."""

    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers (names lower-cased) and, for errors, S3's error
    code and message from the XML body."""

    status: int
    headers: dict[str, str]
    code: str = ""
    message: str = ""


class ConnectFailed(OSError):
    """No connection could be made (refused, unreachable): the request was never sent."""


class ConnectTimedOut(ConnectFailed, TimeoutError):
    """The connection was not accepted in time: the request was never sent."""


class Signer:
    """SigV4 headers for S3 requests; the signing key is cached per (secret, day)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, day, key); swapped whole

    def signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached[0] == secret and cached[1] == day:
            return cached[2]
        k = ("AWS4" + secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        self._key = (secret, day, k)
        return k

    def sign(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        payload_sha256: str,
        creds: Credentials,
        now: float | None = None,
    ) -> None:
        """Add x-amz-date, x-amz-content-sha256, the session token if any, and the
        Authorization header to `headers` (names lower-case; `host` must be there). `path`
        is the URI-encoded path as sent (S3 signs it as is, no normalisation); no query."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = payload_sha256
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
        request = f"{method}\n{path}\n\n{canonical_headers}\n{signed}\n{payload_sha256}"
        scope = f"{stamp[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
        key = self.signing_key(creds.secret_key, stamp[:8])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


def quote_key(key: str) -> str:
    """A key as an S3 path segment sequence: every byte but unreserved ones and `/` escaped
    (what botocore sends and signs for S3)."""
    return quote(key.encode("utf-8", "surrogatepass"), safe="/~")


class Disconnected(ConnectionResetError):
    """The server closed the connection before any answer (a kept-alive connection it had
    dropped, most likely)."""


class BadReply(OSError):
    """Not an HTTP/1.x answer we can read: the connection is closed, the request may have
    been applied."""


MAX_LINE = 65536
MAX_HEADERS = 200


RECEIVE = 65536


class Conn:
    """One connection (its socket; the answer is received into a buffer and parsed by
    parse_answer, not through http.client's file object and email parser)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def receive(self) -> tuple[Reply, bool]:
        """The whole answer to the request just sent, and whether to keep the connection."""
        buf = bytearray()
        while (got := take_answer(buf, self.sock.recv(RECEIVE))) is None:
            pass
        return got


class Pool:
    """A few kept-alive connections to one endpoint; thread-safe. `connect_timeout` bounds
    the connection (and TLS handshake), `read_timeout` every later socket operation."""

    def __init__(
        self,
        target: Target,
        *,
        size: int,
        connect_timeout: float,
        read_timeout: float,
        cafile: str | None = None,
    ) -> None:
        self.target = target
        self.size = size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self.ssl_context = (
            ssl.create_default_context(cafile=cafile) if target.scheme == "https" else None
        )
        self.opened = 0  # connections made so far (the benchmark shows reuse)

    def _new(self) -> Conn:
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=self.connect_timeout)
        except TimeoutError as e:
            raise ConnectTimedOut(f"connect to {t.netloc}: {e}") from None
        except OSError as e:
            raise ConnectFailed(f"connect to {t.netloc}: {e}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=t.host)
        except TimeoutError as e:
            sock.close()
            raise ConnectTimedOut(f"TLS handshake with {t.netloc}: {e}") from None
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.read_timeout)
        self.opened += 1
        return Conn(sock)

    def _take(self) -> Conn | None:
        """An idle connection still open, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if not closed_while_idle(conn.sock):
                return conn
            conn.close()  # EOF (the server closed it) or unexpected bytes

    def _give_back(self, conn: Conn) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        """One request and its whole answer. Raises ConnectFailed/ConnectTimedOut (not sent),
        TimeoutError (no answer in time) or another OSError (the connection broke or the
        answer was garbled: the request may or may not have been applied)."""
        data = request_bytes(method, path, body, headers)
        conn = self._take()
        if conn is not None:
            try:
                return self._exchange(conn, data)
            except (Disconnected, ConnectionResetError, BrokenPipeError):
                pass  # closed by the server while idle, unseen: once more, on a new connection
        return self._exchange(self._new(), data)

    def _exchange(self, conn: Conn, data: bytes) -> Reply:
        try:
            conn.sock.sendall(data)  # headers and body in one write
            reply, keep = conn.receive()
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give_back(conn)
        else:
            conn.close()
        return reply


def closed_while_idle(sock: Any) -> bool:
    """Has an idle kept-alive connection something to read? Then the server closed it (EOF)
    or it is out of step (junk): either way it must not carry a request (both transports)."""
    return bool(select.select([sock], [], [], 0)[0])


def request_bytes(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The whole request, headers and body, for one write (both transports send this)."""
    head = f"{method} {path} HTTP/1.1\r\n"
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name}: line break in its value")
        head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def parse_answer(buf: bytes | bytearray, eof: bool = False) -> tuple[Reply, bool, int] | None:
    """The first whole HTTP/1.x answer in `buf` (1xx answers before it skipped): the Reply,
    whether the connection may carry another request, and where the answer ends; None while
    it is incomplete. `eof`: the connection ended after `buf`, so an answer without a length
    ends there, and an incomplete one is an error. Sans-IO, one pass over the head: both
    transports (Pool here, streams.StreamPool) receive into a buffer and ask this."""
    if eof and not buf:
        raise Disconnected("the server closed the connection without answering")
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) - start > MAX_LINE * 2:
                raise BadReply("an answer's headers longer than any server sends")
            if eof:
                raise BadReply("the connection closed inside the headers")
            return None
        lines = bytes(buf[start:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, _ = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(lines[0]) > MAX_LINE:
            raise BadReply(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        if len(lines) > MAX_HEADERS + 1:
            raise BadReply(f"more than {MAX_HEADERS} headers")
        status, body_at = int(code), end + 4
        if not 100 <= status < 200:
            break
        start = body_at
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadReply(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    conn_hdr = headers.get("connection", "").lower()
    keep = "close" not in conn_hdr and (version != "HTTP/1.0" or "keep-alive" in conn_hdr)
    body = _body(buf, body_at, status, headers, eof)
    if body is None:
        return None
    data, stop = body
    if stop < 0:  # the body ends where the connection does
        keep, stop = False, len(buf)
    return _reply(status, headers, data), keep, stop


def take_answer(buf: bytearray, data: bytes | bytearray) -> tuple[Reply, bool] | None:
    """Add what one receive gave to `buf` (b"": the connection ended); once the answer is
    whole, it and whether the connection may be kept, else None. Both transports loop on it."""
    if not data:
        got = parse_answer(buf, eof=True)
        assert got is not None  # at the connection's end: whole, or an error raised
        return got[0], False
    buf += data
    got = parse_answer(buf)
    if got is None:
        return None
    reply, keep, end = got
    return reply, keep and end == len(buf)  # bytes after the answer: out of step


def _body(
    buf: bytes | bytearray, at: int, status: int, headers: dict[str, str], eof: bool
) -> tuple[bytes, int] | None:
    """(body, where it ends: -1 at the connection's end), or None while incomplete."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        got = _dechunk(buf, at)
        if got is None and eof:
            raise BadReply("the connection closed inside a chunk")
        return got
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise BadReply("bad Content-Length") from None
        if length < 0:
            raise BadReply("bad Content-Length")
        if len(buf) < at + length:
            if eof:
                raise BadReply("the connection closed inside the body")
            return None
        return bytes(buf[at : at + length]), at + length
    if status in (204, 304):
        return b"", at
    return (bytes(buf[at:]), -1) if eof else None


def _dechunk(buf: bytes | bytearray, at: int) -> tuple[bytes, int] | None:
    """A chunked body from `at` (its trailers skipped): (data, end), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            if len(buf) - at > MAX_LINE:
                raise BadReply("a chunk size line longer than any server sends")
            return None
        try:
            size = int(bytes(buf[at:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadReply(f"bad chunk size line: {bytes(buf[at:eol])[:80]!r}") from None
        if size == 0:  # then trailer lines, if any, and a blank line
            if buf[eol + 2 : eol + 4] == b"\r\n":
                return b"".join(parts), eol + 4
            blank = buf.find(b"\r\n\r\n", eol + 2)
            return (b"".join(parts), blank + 4) if blank >= 0 else None
        data_end = eol + 2 + size
        if len(buf) < data_end + 2:
            return None
        if buf[data_end : data_end + 2] != b"\r\n":
            raise BadReply("a chunk longer than its size line says")
        parts.append(bytes(buf[eol + 2 : data_end]))
        at = data_end + 2


def _reply(status: int, headers: dict[str, str], data: bytes) -> Reply:
    """The Reply; for an error, S3's code and message from its XML body."""
    if status < 300:
        return Reply(status, headers)
    code_m = _CODE.search(data)
    message = _MESSAGE.search(data)
    return Reply(
        status,
        headers,
        code_m.group(1).decode("utf-8", "replace") if code_m else "",
        message.group(1).decode("utf-8", "replace") if message else "",
    )


# What botocore's standard retry mode retries (botocore/retries/standard.py), for a PUT.
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError"}
)
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
MAX_BACKOFF = 20.0


def retryable(reply: Reply) -> bool:
    return (
        reply.status in TRANSIENT_STATUS
        or reply.status == 429
        or reply.code in TRANSIENT_CODES
        or reply.code in THROTTLING_CODES
    )


def backoff(attempt: int, throttled: bool, rand: float) -> float:
    """botocore's standard-mode delay before attempt `attempt + 1` (`attempt` 1-based):
    rand(0,1) x min(scale x 2^(attempt-1), 20 s), scale 1 s when throttled, else 50 ms."""
    scale = 1.0 if throttled else 0.05
    return rand * min(scale * 2 ** (attempt - 1), MAX_BACKOFF)
