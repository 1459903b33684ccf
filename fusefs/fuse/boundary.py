"""The error boundary of the FUSE handlers: no request can kill the daemon.

pyfuse3 treats any exception a handler raises that is not a `pyfuse3.FUSEError` as fatal: the
main loop ends and the mount answers ENOTCONN to every worker until someone remounts by hand.
Handlers raise FUSEError for every refusal they know about; this module catches the rest (a full
disk, a name too long for the backing filesystem, a huge offset, a bug) at one place, for every
handler at once, and turns it into the errno the caller should see:

    OSError             its own errno (ENOSPC, EDQUOT, ENAMETOOLONG, EFBIG, EINVAL, ...)
    UnicodeError        EILSEQ (a name or text that is not what the encoding allows)
    anything else       EIO, the last resort (and a traceback in the log: it is a bug)

Each failure is counted by errno in `status` (`request_errors`) and logged with its handler and
arguments, at most once per minute for each (handler, errno, exception type): a worker looping
on a bad request must not flood the log or the disk (which may be the full one).
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from fusefs.statedir.ratelog import Coalescer

log = logging.getLogger("missionfs")

_SKIPPED_ARGS = {"ctx", "token", "attr", "fields"}  # not worth a log line

T = TypeVar("T", bound=type)


def errno_of(exc: BaseException) -> int:
    """The errno a request that raised `exc` answers with."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    if isinstance(exc, UnicodeError):
        return errno.EILSEQ
    return errno.EIO


class RequestErrors:
    """Counts and logs the exceptions the boundary turned into errnos: the first of a run of
    the same (handler, errno, exception type) at once, repeats counted by ratelog's Coalescer
    and written as one "repeated N times" line a minute."""

    def __init__(self, counts: dict[str, int], recent: Any = None) -> None:
        self.counts = counts  # errno name -> count (StatusBoard.request_errors)
        self.recent = recent  # StatusBoard.recent_errors (a deque), or None
        self._runs: Coalescer[tuple[str, str, str]] = Coalescer(self._summary)

    @staticmethod
    def _summary(key: tuple[str, str, str], repeats: int, seconds: float) -> None:
        handler, name, exc_type = key
        log.error(
            "request %s failed with %s (%s): repeated %s times in %.0f s",
            handler,
            name,
            exc_type,
            f"{repeats:,}",
            seconds,
        )

    def record(self, handler: str, context: str, exc: Exception) -> int:
        code = errno_of(exc)
        name = errno.errorcode.get(code, str(code))
        self.counts[name] = self.counts.get(name, 0) + 1
        if not self._runs.seen((handler, name, type(exc).__name__)):
            return code
        detail = f"{type(exc).__name__}: {exc}"
        log.error(
            "request %s failed with %s: %s",
            context,
            name,
            detail,
            exc_info=exc if code == errno.EIO and not isinstance(exc, OSError) else None,
        )
        if self.recent is not None:
            self.recent.append(
                {"time": round(time.time(), 3), "path": context, "error": f"{name}: {detail}"}
            )
        return code

    def flush(self) -> None:
        """Write the counts of runs whose minute has passed (the daemon's periodic flush)."""
        self._runs.flush()


def _describe(handler: str, params: list[str], args: tuple[Any, ...]) -> str:
    """`handler(name=value, ...)` with names shown safely (bytes as repr, cut at 80 chars)."""
    parts = []
    for pname, value in zip(params, args, strict=False):
        if pname in _SKIPPED_ARGS:
            continue
        if pname == "buf" and isinstance(value, bytes | bytearray):
            shown = f"<{len(value)} bytes>"
        elif isinstance(value, int | bytes | str):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
        else:
            continue
        parts.append(f"{pname}={shown}")
    return f"{handler}({', '.join(parts)})"


def _failed(
    self: Any, handler: str, params: list[str], args: tuple[Any, ...], exc: Exception
) -> pyfuse3.FUSEError:
    code: int = self.request_errors.record(handler, _describe(handler, params, args), exc)
    return pyfuse3.FUSEError(code)


def _guard(handler: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`fn` inside a try/except, as a coroutine with `fn`'s own parameters.

    Generated with the exact parameter list (as dataclasses and namedtuple do) rather than
    `*args`: packing and unpacking the arguments tripled the wrapper's cost per request."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # without self
    ns: dict[str, Any] = {"fn": fn, "FUSEError": pyfuse3.FUSEError, "failed": _failed}
    ns["handler"], ns["names"] = handler, [p.name for p in params]
    decl = []
    for p in params:
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise TypeError(f"{handler}: unsupported parameter {p}")
        if p.default is inspect.Parameter.empty:
            decl.append(p.name)
        else:
            ns[f"default_{p.name}"] = p.default
            decl.append(f"{p.name}=default_{p.name}")
    call = ", ".join(["self", *(p.name for p in params)])
    args = "".join(f"{p.name}, " for p in params)  # a tuple, also of one or none
    src = (
        f"async def guarded(self, {', '.join(decl)}):\n"
        f"    try:\n"
        f"        return await fn({call})\n"
        f"    except FUSEError:\n"
        f"        raise\n"
        f"    except Exception as e:\n"  # the whole point: nothing else may reach pyfuse3
        f"        raise failed(self, handler, names, ({args}), e) from None\n"
    )
    exec(src, ns)  # source built above from a signature: no outside input
    return functools.wraps(fn)(ns["guarded"])


def error_boundary(cls: T) -> T:
    """Class decorator: wrap every request handler (every coroutine of pyfuse3.Operations) that
    `cls` defines. Instances must have a `request_errors` (a RequestErrors).

    A class decorator rather than a try/except in each handler: a handler added later is
    covered without anyone remembering to, and the cost on the hot path (lookup, getattr,
    readdir) is one coroutine frame, no work unless something is raised."""
    for name, member in vars(pyfuse3.Operations).items():
        if not inspect.iscoroutinefunction(member):
            continue
        own = cls.__dict__.get(name)
        if own is not None and inspect.iscoroutinefunction(own):
            setattr(cls, name, _guard(name, own))
    return cls
