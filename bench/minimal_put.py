"""The least a signed S3 PUT costs in Python: SigV4 by hand, kept-alive connections.

Not a product proposal: the floors of bench/cpu_per_task.py. `put_variants` there compares it
with botocore's PUT (how much of botocore's cost is the protocol); bench/floor_fs.py uploads its
witnesses with it (the least any daemon on pyfuse3 + trio pays per upload). No missionfs code.

- `Signer`: SigV4 of one PUT (the signing key derived once a day, as a daemon would cache it),
  the daemon's headers: If-None-Match: *, x-amz-content-sha256, x-amz-meta-sha256 (and
  x-amz-checksum-sha256 when asked: a server that verifies it).
- `MinimalSigV4`: the PUT on a kept-alive http.client connection, one per thread (threads
  never share a connection: trio's worker threads may run PUTs side by side).
- `RawPut`: the same request on a kept-alive socket (TCP_NODELAY, request in one send) and the
  answer read by `parse_answer`, a minimal HTTP/1.1 reader; http.client parses the answer's
  headers with the email package, which is most of its cost for an answer of a few headers.
- `AsyncPut`: the same on a trio stream, for a daemon that PUTs from trio's thread (no thread
  hop: the socket never blocks trio's loop).
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

import trio


class Signer:
    """SigV4 headers of a PUT of `body` to /BUCKET/KEY on `endpoint` (path-style)."""

    def __init__(self, endpoint: str, bucket: str, checksum: bool = False) -> None:
        u = urlsplit(endpoint)
        self.host = u.netloc
        self.hostname = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.bucket = bucket
        self.access = os.environ["AWS_ACCESS_KEY_ID"]
        self.secret = os.environ["AWS_SECRET_ACCESS_KEY"]
        self.region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        self.checksum = checksum
        self._keys: dict[str, bytes] = {}

    def _key(self, day: str) -> bytes:
        """The signing key, derived once a day (botocore derives it for every request)."""
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self.secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys[day] = key
        return key

    def sign(self, key: str, body: bytes) -> tuple[str, dict[str, str]]:
        """The request's path and headers (Authorization included)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        digest = hashlib.sha256(body)
        payload = digest.hexdigest()
        h = {
            "content-length": str(len(body)),
            "host": self.host,
            "if-none-match": "*",
            "x-amz-content-sha256": payload,
            "x-amz-date": stamp,
            "x-amz-meta-sha256": payload,
            "x-amz-meta-worker": "bench",
        }
        if self.checksum:
            h["x-amz-checksum-sha256"] = base64.b64encode(digest.digest()).decode()
        path = "/" + quote(f"{self.bucket}/{key}")
        names = sorted(h)
        signed = ";".join(names)
        canon = "".join(f"{n}:{h[n]}\n" for n in names)
        req = f"PUT\n{path}\n\n{canon}\n{signed}\n{payload}"
        scope = f"{stamp[:8]}/{self.region}/s3/aws4_request"
        sts = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(req.encode()).hexdigest()}"
        sig = hmac.new(self._key(stamp[:8]), sts.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
            f"SignedHeaders={signed}, Signature={sig}"
        )
        return path, h

    def request(self, key: str, body: bytes) -> bytes:
        """The whole HTTP/1.1 request, headers and body, for one send."""
        path, h = self.sign(key, body)
        head = "".join(f"{n}: {v}\r\n" for n, v in h.items())
        return f"PUT {path} HTTP/1.1\r\n{head}\r\n".encode() + body


class PutFailed(RuntimeError):
    """The server did not answer 200 (a floor has no retries: the bench fails loudly)."""


def parse_answer(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(status, start of the body, keep-alive) of the HTTP/1.1 answer at the start of `buf`,
    or None while the answer (head and body) is incomplete. Only Content-Length bodies (an S3
    PUT answer): a chunked or unbounded answer raises PutFailed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep = -1, not lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep = value.strip().lower() != b"close"
    if length < 0:
        raise PutFailed(f"answer without Content-Length: {bytes(buf[:200])!r}")
    if len(buf) < end + 4 + length:
        return None
    return status, end + 4, keep


class MinimalSigV4:
    """A signed PUT on a kept-alive http.client connection, one connection per thread."""

    def __init__(self, endpoint: str, bucket: str, checksum: bool = False) -> None:
        self.signer = Signer(endpoint, bucket, checksum)
        self._local = threading.local()

    def _conn(self) -> Any:
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            s = self.signer
            conn = http.client.HTTPConnection(s.hostname, s.port, timeout=20)
            self._local.conn = conn
        return conn

    def put(self, key: str, body: bytes) -> None:
        path, h = self.signer.sign(key, body)
        conn = self._conn()
        conn.request("PUT", path, body=body, headers=h)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise PutFailed(f"minimal SigV4 PUT: HTTP {r.status}: {answer[:200]!r}")


class RawPut:
    """A signed PUT on a kept-alive socket, one per thread; the answer read by parse_answer."""

    def __init__(self, endpoint: str, bucket: str, checksum: bool = False) -> None:
        self.signer = Signer(endpoint, bucket, checksum)
        self._local = threading.local()

    def _sock(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            s = self.signer
            sock = socket.create_connection((s.hostname, s.port), timeout=20)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.sock = sock
        return sock

    def put(self, key: str, body: bytes) -> None:
        sock = self._sock()
        sock.sendall(self.signer.request(key, body))
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                self._local.sock = None
                sock.close()
                raise PutFailed("connection closed before the answer")
            buf += data
            answer = parse_answer(buf)
            if answer is not None:
                break
        status, body_at, keep = answer
        if not keep:
            self._local.sock = None
            sock.close()
        if status != 200:
            raise PutFailed(f"raw SigV4 PUT: HTTP {status}: {buf[body_at : body_at + 200]!r}")


class AsyncPut:
    """A signed PUT on a kept-alive trio stream (one per uploader task: the caller owns it)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.stream: trio.SocketStream | None = None

    async def put(self, key: str, body: bytes) -> None:
        if self.stream is None:
            # trio's SocketStream sets TCP_NODELAY itself.
            self.stream = await trio.open_tcp_stream(self.signer.hostname, self.signer.port)
        stream = self.stream
        await stream.send_all(self.signer.request(key, body))
        buf = bytearray()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                self.stream = None
                await stream.aclose()
                raise PutFailed("connection closed before the answer")
            buf += data
            answer = parse_answer(buf)
            if answer is not None:
                break
        status, body_at, keep = answer
        if not keep:
            self.stream = None
            await stream.aclose()
        if status != 200:
            raise PutFailed(f"async SigV4 PUT: HTTP {status}: {bytes(buf[body_at:])[:200]!r}")
