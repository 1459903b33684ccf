"""The thin PUT's transport on trio streams: the same requests as sigv4.Pool, from trio's thread.

Why: a PUT made in a worker thread costs, besides the request, a thread hand-off and a GIL
hand-off for every socket call while the FUSE handlers hold the interpreter; on the machine of
docs/benchmarks.md that was about a third of the daemon's CPU per task with S3. Here a PUT is a
send and a receive on a non-blocking socket that trio's epoll loop already watches: no thread.

What it keeps from sigv4.Pool (the thread transport, still used by boto3-less callers outside
trio): kept-alive connections reused last-in first-out, TCP_NODELAY (trio sets it), headers
and body in one send, a pooled connection the server closed while idle found before reuse,
one retry on a new connection when a reused one fails before any answer, `connect_timeout`
for the connection and TLS handshake, `read_timeout` for every later wait, certificates
checked with the same SSL context. The answer is received into a buffer and read by
sigv4.parse_answer, the one HTTP parser of both transports.

Connections belong to one trio run (a stream cannot outlive its run): the pool is kept per
run, so the CLI's short runs and the daemon's long one never share a socket.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from fusefs.objects.sigv4 import (
    RECEIVE,
    ConnectFailed,
    ConnectTimedOut,
    Disconnected,
    Pool,
    Reply,
    Target,
    closed_while_idle,
    request_bytes,
    take_answer,
)


class StreamPool:
    """Kept-alive trio streams to one endpoint, for the current trio run (see the module's
    docstring), with the settings of the thread transport `like` (endpoint, idle connections
    kept, timeouts, TLS context). Safe for concurrent tasks of one run."""

    def __init__(self, like: Pool) -> None:
        self.target: Target = like.target
        self.size = like.size
        self.connect_timeout = like.connect_timeout
        self.read_timeout = like.read_timeout
        self.context = like.ssl_context
        self._idle: trio.lowlevel.RunVar[list[trio.abc.Stream]] = trio.lowlevel.RunVar(
            f"idle streams {id(self)}"
        )
        self.opened = 0  # connections made so far, every run (the tests show reuse)

    def _idle_list(self) -> list[trio.abc.Stream]:
        try:
            return self._idle.get()
        except LookupError:
            idle: list[trio.abc.Stream] = []
            self._idle.set(idle)
            return idle

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        """One request and its whole answer; the errors of sigv4.Pool.request (ConnectFailed,
        ConnectTimedOut: not sent; TimeoutError: no answer in time; another OSError: broken)."""
        data = request_bytes(method, path, body, headers)
        stream = self._take()
        if stream is not None:
            try:
                return await self._exchange(stream, data)
            except (Disconnected, ConnectionResetError, BrokenPipeError):
                pass  # closed by the server while idle, unseen: once more, on a new connection
        return await self._exchange(await self._new(), data)

    async def _new(self) -> trio.abc.Stream:
        t = self.target
        stream: trio.abc.Stream
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(t.host, t.port)
                if self.context is not None:
                    tls = trio.SSLStream(stream, self.context, server_hostname=t.host)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        _close(tls)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise ConnectTimedOut(f"connect to {t.netloc}: timed out") from None
        except trio.BrokenResourceError as e:  # the TLS handshake failed (its cause says why)
            cause = e.__cause__
            if isinstance(cause, ssl.SSLError):
                raise cause from None
            raise ConnectFailed(f"TLS handshake with {t.netloc}: {cause or e}") from None
        except OSError as e:
            raise ConnectFailed(f"connect to {t.netloc}: {e}") from None
        self.opened += 1
        return stream

    def _take(self) -> trio.abc.Stream | None:
        """An idle connection still open, or None (sigv4.closed_while_idle, as the Pool)."""
        idle = self._idle_list()
        while idle:
            stream = idle.pop()
            if not closed_while_idle(_socket(stream)):
                return stream
            _close(stream)
        return None

    async def _exchange(self, stream: trio.abc.Stream, data: bytes) -> Reply:
        # One cancel scope per exchange, its deadline moved before each wait (a scope per
        # wait, through fail_after's context manager, cost more than the rest of the
        # exchange's bookkeeping).
        with trio.CancelScope() as scope:
            try:
                scope.deadline = trio.current_time() + self.read_timeout
                await stream.send_all(data)
                reply, keep = await self._receive(stream, scope)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                _close(stream)
                cause = e.__cause__
                if isinstance(cause, OSError):
                    raise cause from None
                raise ConnectionResetError(str(e)) from None
            except BaseException:  # cancelled (our deadline, or a shutdown): out of step
                _close(stream)
                raise
        if scope.cancelled_caught:
            raise TimeoutError("no answer in time")
        idle = self._idle_list()
        if keep and len(idle) < self.size:
            idle.append(stream)
        else:
            _close(stream)
        return reply

    async def _receive(
        self, stream: trio.abc.Stream, scope: trio.CancelScope
    ) -> tuple[Reply, bool]:
        buf = bytearray()
        while True:
            scope.deadline = trio.current_time() + self.read_timeout
            got = take_answer(buf, await stream.receive_some(RECEIVE))
            if got is not None:
                return got

    def close(self) -> None:
        """Close this run's idle connections (the daemon's end; other runs' are gone)."""
        try:
            idle = self._idle.get()
        except (LookupError, RuntimeError):  # no connection in this run, or outside trio
            return
        while idle:
            _close(idle.pop())


def _socket(stream: trio.abc.Stream) -> Any:
    inner: Any = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    return inner.socket


def _close(stream: trio.abc.Stream) -> None:
    """Close at once, without a TLS goodbye (no await: also from a cancelled task)."""
    try:
        _socket(stream).close()
    except OSError:
        pass
