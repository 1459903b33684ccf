"""A tiny TCP proxy on 127.0.0.1 in front of a test S3 server, that a test can make misbehave.

Modes:
    pass     bytes flow both ways
    hang     the server looks alive but silent: connections are accepted and requests read,
             nothing is forwarded and nothing ever answered (a hung S3, not a refusing one)
    mute     requests reach the server (their effects happen) but the answers are dropped: the
             client cannot know whether its request was applied
    slow     requests reach the server at once, its answers reach the client `delay` s late

`fail(n, status, code)` answers the next `n` requests itself with that S3 error (an XML body,
`Connection: close`) without forwarding them, whatever the mode: a 503 SlowDown, say.

Switching to `hang` or `mute` poisons the connections open at that moment (they stay silent
until the client closes them), so a client's pooled connection cannot carry a half-forwarded
request into the next mode. One thread, non-blocking sockets, a selector.

Counting: give the proxy a `RequestCounts` (shared by several proxies if you like, each with its
own `tag`, e.g. one proxy per mount) and every request a client sends is parsed from the byte
stream (request line, headers, a Content-Length or chunked body) and counted by kind (PUT, GET,
HEAD, LIST, DELETE, POST) and by area: the first path segment of the key (or of a LIST's
`prefix=`, or of a DeleteObjects body's first key) after the mission's base prefix.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


class RequestCounts:
    """Requests seen by one or more counting proxies: (tag, kind, area) -> count, thread-safe.

    `base` is the key prefix under which areas live (`runs/MISSION`), so that `runs/M/claims/x`
    counts under area `claims`; a key outside it counts under `(other)`, the bucket itself (a
    LIST of the base, a HEAD of the bucket) under `(root)`."""

    def __init__(self, bucket: str, base: str) -> None:
        self.bucket = bucket
        self.base = base.strip("/")
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def area(self, key: str) -> str:
        key = key.lstrip("/")
        if self.base:
            if key.rstrip("/") == self.base or not key:
                return "(root)"
            if not key.startswith(self.base + "/"):
                return "(other)"
            key = key[len(self.base) + 1 :]
        head, _, _ = key.partition("/")
        return head or "(root)"

    def classify(self, method: str, target: str, body: bytes = b"") -> tuple[str, str]:
        """(kind, area) of one request (path-style addressing: /BUCKET/KEY?QUERY)."""
        parts = urlsplit(target)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query, keep_blank_values=True)
        if bucket != self.bucket:
            return ("LIST" if method == "GET" and not key else method), "(other)"
        if method == "GET" and not key:
            return "LIST", self.area(query.get("prefix", [""])[0])
        if method == "POST" and "delete" in query:
            m = re.search(rb"<Key>([^<]*)</Key>", body)
            return "POST", self.area(m.group(1).decode("utf-8", "replace")) if m else "(root)"
        if not key:
            return method, "(root)"
        return method, self.area(key)

    def add(self, tag: str, method: str, target: str, body: bytes = b"") -> None:
        kind, area = self.classify(method, target, body)
        with self._lock:
            self.counts[(tag, kind, area)] += 1

    def snapshot(self) -> Counter[tuple[str, str, str]]:
        with self._lock:
            return self.counts.copy()


class _RequestParser:
    """Splits a client's byte stream into HTTP/1.1 requests (keep-alive, pipelining, bodies by
    Content-Length or chunked) and reports each one's method, target and (POST) body."""

    BODY_KEPT = 65536  # enough of a DeleteObjects body to read its first key

    def __init__(self, counts: RequestCounts, tag: str) -> None:
        self.counts, self.tag = counts, tag
        self.buf = b""
        self.state = "head"  # head | body | chunk-size | chunk-data | trailer
        self.left = 0  # body bytes (or chunk bytes + CRLF) still to come
        self.method, self.target, self.body = "", "", b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
            lines = head.split("\r\n")
            first = lines[0].split(" ")
            if len(first) < 2:
                return True  # not a request line: skip it
            self.method, self.target, self.body = first[0].upper(), first[1], b""
            hdr = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            if "chunked" in hdr.get("transfer-encoding", "").lower():
                self.state = "chunk-size"
            else:
                self.left = int(hdr.get("content-length", "0") or 0)
                self.state = "body"
            return True
        if self.state in ("body", "chunk-data"):
            take = min(self.left, len(self.buf))
            if self.method == "POST" and len(self.body) < self.BODY_KEPT:
                self.body += self.buf[:take]
            self.buf, self.left = self.buf[take:], self.left - take
            if self.left:
                return False
            if self.state == "chunk-data":
                self.state = "chunk-size"
                return True
            self._done()
            return True
        end = self.buf.find(b"\r\n")
        if end < 0:
            return False
        line, self.buf = self.buf[:end], self.buf[end + 2 :]
        if self.state == "trailer":
            if not line:
                self._done()
            return True
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            self.state = "trailer"
        else:
            self.state, self.left = "chunk-data", size + 2  # the chunk and its CRLF
        return True

    def _done(self) -> None:
        self.counts.add(self.tag, self.method, self.target, self.body)
        self.state, self.body = "head", b""


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    mode: str  # the mode this connection keeps: "pass", "slow", "hang" or "mute"
    answers: deque[tuple[float, bytes]] = field(default_factory=deque)  # (when due, bytes)
    server_done: bool = False  # the server closed; the client is closed once answers are out
    parser: _RequestParser | None = None  # set when the proxy counts requests


class S3Proxy:
    def __init__(self, upstream: str, counts: RequestCounts | None = None, tag: str = "") -> None:
        self.counts, self.tag = counts, tag
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.mode = "pass"
        self.request_lines: list[str] = []  # first lines of requests swallowed or muted
        self.accepted = 0  # connections accepted, in any mode
        self.delay = 0.0  # seconds answers are held back in "slow" mode
        self.failing = 0  # requests still to be answered with `_failure` (see `fail`)
        self.failed = 0  # requests answered that way so far
        self._failure = b""
        self.errors: list[str] = []  # what went wrong inside the proxy thread (for debugging)
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._pairs: set[_Pair] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="s3-proxy", daemon=True)

    def start(self) -> S3Proxy:
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "slow", "hang", "mute")
        with self._lock:
            self.mode = mode
            for pair in self._pairs:
                if mode in ("hang", "mute") and pair.mode in ("pass", "slow"):
                    pair.mode = mode  # poisoned for good
                elif mode in ("pass", "slow") and pair.mode in ("pass", "slow"):
                    pair.mode = mode

    def slow(self, delay: float) -> None:
        self.delay = delay
        self.set_mode("slow")

    def fail(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `n` requests with `status` and S3 error `code`, unforwarded."""
        body = f"<Error><Code>{code}</Code><Message>injected by the proxy</Message></Error>"
        head = (
            f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with self._lock:
            self._failure = (head + body).encode()
            self.failing = n

    def hang(self) -> None:
        self.set_mode("hang")

    def mute(self) -> None:
        self.set_mode("mute")

    def resume(self) -> None:
        self.set_mode("pass")

    def seen(self, needle: str) -> int:
        """How many swallowed or muted requests had `needle` in their first line."""
        with self._lock:
            return sum(needle in line for line in self.request_lines)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=10)
        for pair in list(self._pairs):
            self._drop(pair)
        self._listener.close()
        self._sel.close()

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            self._flush_due()
            for key, _ in self._sel.select(timeout=0.02):
                try:
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.fileobj, key.data)  # type: ignore[arg-type]
                except Exception as e:  # the proxy must outlive any one connection
                    self.errors.append(repr(e))

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        with self._lock:
            mode = self.mode
            self.accepted += 1
        upstream = None
        if mode != "hang":
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                return
            upstream.setblocking(False)
        client.setblocking(False)
        pair = _Pair(client, upstream, mode)
        if self.counts is not None:
            pair.parser = _RequestParser(self.counts, self.tag)
        with self._lock:
            self._pairs.add(pair)
        self._sel.register(client, selectors.EVENT_READ, pair)
        if upstream is not None:
            self._sel.register(upstream, selectors.EVENT_READ, pair)

    def _read(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if sock is pair.upstream and pair.answers:  # answers held back still go out first
                pair.server_done = True
                self._sel.unregister(sock)
                return
            self._drop(pair)
            return
        with self._lock:
            mode = pair.mode
            if sock is pair.client and mode != "pass" and data[:8].split(b" ")[0].isalpha():
                self.request_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
        if sock is pair.client and self._fail_one():
            self._send(pair.client, self._failure, pair)
            self._drop(pair)  # Connection: close; the rest of the request goes nowhere
            return
        if sock is pair.client:
            if pair.parser is not None:
                try:
                    pair.parser.feed(data)
                except ValueError as e:  # a stream we cannot frame: stop counting it
                    self.errors.append(f"request parser: {e!r}")
                    pair.parser = None
            if mode == "hang" or pair.upstream is None:
                return  # read, never forwarded
            self._send(pair.upstream, data, pair)
        elif mode in ("pass", "slow"):  # in order, after any answer still held back
            due = time.monotonic() + (self.delay if mode == "slow" else 0.0)
            pair.answers.append((due, data))
            self._flush_due()
        # mute: the server's answer is dropped

    def _fail_one(self) -> bool:
        with self._lock:
            if self.failing <= 0:
                return False
            self.failing -= 1
            self.failed += 1
            return True

    def _flush_due(self) -> None:
        now = time.monotonic()
        for pair in list(self._pairs):
            while pair.answers and pair.answers[0][0] <= now and pair.mode in ("pass", "slow"):
                self._send(pair.client, pair.answers.popleft()[1], pair)
            if pair.server_done and not pair.answers:
                self._drop(pair)

    def _send(self, sock: socket.socket, data: bytes, pair: _Pair) -> None:
        sock.setblocking(True)
        try:
            sock.sendall(data)
        except OSError:
            self._drop(pair)
        finally:
            if sock.fileno() >= 0:
                sock.setblocking(False)

    def _drop(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for s in (pair.client, pair.upstream):
            if s is None:
                continue
            try:
                self._sel.unregister(s)  # found by identity even once closed
            except (KeyError, ValueError):
                pass
            s.close()
