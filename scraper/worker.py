"""N workers in one process: claim by rename, fetch, write + fsync into tmp/, commit by rename.

Threads, not processes: a worker spends its time in FUSE calls and HTTP waits, both of which
release the GIL, and threads share one rate limiter and one lease keeper for free. The keeper
renews the claims of live workers (`touch claimed/REL`), so a slow source never loses its claim,
while the claims of a killed process simply expire after the lease.

A failing task is given back at once (`rm claimed/REL`) so no claim outlives its worker's
interest in it; this process retries it after a growing cool-down, at most `attempts` times,
then reports it and leaves it pending for another run.

A claim refused with EAGAIN (strict claims while the mount cannot reach S3) is no failure of the
task: the workers back off, exponentially with jitter up to CLAIM_BACKOFF_MAX, report it once
per outage, and carry on when S3 answers again.
"""

from __future__ import annotations

import errno
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .schema import DescriptorError, TaskInfo, to_csv
from .source import Source, SourceError, Stopped
from .walk import walk_pending

MOUNT_GONE = {errno.ENOTCONN, errno.ENODEV, errno.ECONNABORTED}
DEFAULT_LEASE = 900.0
STOP_GRACE = 5.0  # seconds in-flight tasks get to finish after a stop request
CLAIM_BACKOFF_FIRST = 0.5  # seconds before the first retry of a claim refused with EAGAIN
CLAIM_BACKOFF_MAX = 30.0  # the longest wait between claim tries while S3 is unreachable


def read_small(path: str) -> bytes:
    """Read a descriptor with plain read(2) calls: Python's open() adds an fstat, an lseek and
    an isatty ioctl, each one more round trip to the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class MountGone(Exception):
    """The mount stopped answering (daemon killed or unmounted): nothing more can be done."""


class ClaimsUnavailable(Exception):
    """A claim got EAGAIN: strict claims need S3 and the mount cannot reach it right now."""


@dataclass
class Summary:
    """What one run did; printed for people, or as JSON (`--json`) for scripts and tests."""

    workers: int
    source: str
    committed: int = 0
    lost_races: int = 0  # claim renames that got ENOENT: another worker was first
    already_done: int = 0  # our commit got EEXIST: another worker finished it first
    released: int = 0  # claims given back after a failure or a stop
    claims_lost: int = 0  # lease renewal found the claim gone (expired)
    claims_refused: int = 0  # claim renames that got EAGAIN (S3 unreachable, strict claims)
    failed: dict[str, str] = field(default_factory=dict)  # given up: REL -> last error
    seconds: float = 0.0
    stopped: str = "done"  # done | a signal name | error
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Report = Callable[[str], None]


class Pool:
    """`workers` threads plus a lease keeper over one mount (or a directory laid out like one)."""

    def __init__(
        self,
        root: Path | str,
        source: Source,
        workers: int,
        *,
        follow: bool = False,
        poll: float = 5.0,
        attempts: int = 3,
        retry_delay: float = 5.0,
        lease: float | None = None,
        report: Report | None = None,
    ) -> None:
        self.root = str(root)
        self.pending, self.claimed = f"{self.root}/pending", f"{self.root}/claimed"
        self.done, self.tmp = f"{self.root}/done", f"{self.root}/tmp"
        self.source = source
        self.workers = workers
        self.follow = follow
        self.poll = poll
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.renew_every = min(60.0, max(0.1, (lease or DEFAULT_LEASE) / 3))
        self.report = report or (lambda msg: None)
        self.stop = threading.Event()
        self.summary = Summary(workers, source.name)
        self.host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
        self._lock = threading.Lock()
        self._held: set[str] = set()  # claims of live workers, renewed by the keeper
        self._tries: dict[str, int] = {}
        self._cool_until: dict[str, float] = {}
        self._running = 0
        self._seq = 0
        self._finished = threading.Event()
        self._refusals = 0  # EAGAIN claims in the current outage (0: claims work)
        self._outage_start = 0.0

    # -- control -------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Stop claiming; in-flight tasks get STOP_GRACE seconds, then their claims are released."""
        with self._lock:
            if not self.stop.is_set():
                self.summary.stopped = reason
        self.stop.set()

    def _fatal(self, message: str) -> None:
        with self._lock:
            if self.summary.error is None:
                self.summary.error = message
                self.summary.stopped = "error"
        self.stop.set()

    def run(self, on_tick: Callable[[], None] | None = None, tick: float = 0.5) -> Summary:
        """Run the workers until nothing is pending (or forever with follow) or a stop."""
        t0 = time.monotonic()
        self._running = self.workers
        threads = [
            threading.Thread(target=self._worker, args=(i,), name=f"worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        keeper = threading.Thread(target=self._keeper, name="lease-keeper", daemon=True)
        for t in threads:
            t.start()
        keeper.start()
        stop_deadline: float | None = None
        try:
            while not self._finished.wait(tick):
                if on_tick is not None:
                    on_tick()
                if self.stop.is_set():
                    stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE
                    if time.monotonic() > stop_deadline:
                        break  # a worker is stuck in a request: its claim is released below
        finally:
            self.stop.set()
            with self._lock:
                stuck = sorted(self._held)
                self._held.clear()
            for rel in stuck:
                self._release(rel)
            self.summary.seconds = time.monotonic() - t0
        if on_tick is not None:
            on_tick()
        return self.summary

    # -- the worker loop -----------------------------------------------------------------------
    def _worker(self, i: int) -> None:
        key = f"{self.host}:{os.getpid()}:{i}"
        passes = idle = 0
        try:
            while not self.stop.is_set():
                passes += 1
                try:
                    saw, claimed, lost, cooling = self._pass(i, f"{key}#{passes}")
                except ClaimsUnavailable:
                    if self.stop.wait(self._backoff()):
                        return
                    continue
                if claimed:
                    idle = 0
                    continue
                if saw or lost:  # all taken meanwhile: look again elsewhere, then back off
                    idle += 1
                    wait = 0.0 if idle <= 3 else min(self.poll, 0.005 * 2 ** min(idle, 12))
                elif cooling is not None:  # only tasks we failed on recently are left
                    wait = min(cooling, self.poll) if self.follow else cooling
                elif self.follow:
                    wait = self.poll
                else:
                    return  # nothing pending for us
                if self.stop.wait(wait):
                    return
        except MountGone as e:
            self._fatal(str(e))
        except Exception as e:  # a bug must not leave the pool waiting forever
            self._fatal(f"worker {i} crashed: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._finished.set()

    def _pass(self, i: int, key: str) -> tuple[int, int, bool, float | None]:
        """Walk pending/ from this pass's offsets until the first lost race (the winner works
        right here, so following it would lose again: jump elsewhere instead). Returns
        (candidates seen, tasks claimed, a race was lost, seconds to the next cool-down end)."""
        saw = claimed = 0
        cooling: float | None = None
        try:
            for rel in walk_pending(self.pending, key):
                if self.stop.is_set():
                    break
                wait = self._cooling(rel)
                if wait is not None:
                    if wait > 0:
                        cooling = wait if cooling is None else min(cooling, wait)
                    continue
                saw += 1
                try:
                    os.rename(f"{self.pending}/{rel}", f"{self.claimed}/{rel}")
                except FileNotFoundError:
                    with self._lock:
                        self.summary.lost_races += 1
                    return saw, claimed, True, cooling
                except BlockingIOError as e:  # EAGAIN: every claim fails alike for now
                    self._refused(e)
                    raise ClaimsUnavailable from None
                self._claims_work()
                claimed += 1
                self._process(i, rel)
        except OSError as e:
            raise self._gone_or(e, "cannot walk or claim under pending/") from None
        return saw, claimed, False, cooling

    def _refused(self, e: OSError) -> None:
        """Count an EAGAIN claim; the first of an outage is reported (once, not per try)."""
        with self._lock:
            self.summary.claims_refused += 1
            self._refusals += 1
            first = self._refusals == 1
            if first:
                self._outage_start = time.monotonic()
        if first:
            self.report(
                f"claims refused for now ({e.strerror}): the mount cannot reach S3, which "
                f"strict claims need; retrying with backoff (at most {CLAIM_BACKOFF_MAX:.0f} s)"
            )

    def _backoff(self) -> float:
        """Exponential in the outage's refusals, with jitter (workers do not retry in step)."""
        with self._lock:
            n = self._refusals
        ceiling = min(CLAIM_BACKOFF_MAX, CLAIM_BACKOFF_FIRST * 2 ** min(max(n - 1, 0), 16))
        return random.uniform(ceiling / 2, ceiling)

    def _claims_work(self) -> None:
        with self._lock:
            n, self._refusals = self._refusals, 0
            seconds = time.monotonic() - self._outage_start
        if n:
            self.report(f"claims work again ({n} refused over {seconds:.0f} s)")

    def _cooling(self, rel: str) -> float | None:
        """None if we may try `rel` now; 0 if we gave up on it; else seconds to wait."""
        with self._lock:
            if rel in self.summary.failed:
                return 0.0
            until = self._cool_until.get(rel)
        if until is None:
            return None
        left = until - time.monotonic()
        return left if left > 0 else None

    def _process(self, i: int, rel: str) -> None:
        with self._lock:
            self._held.add(rel)
        tmp: str | None = None
        try:
            try:
                task = TaskInfo.parse(read_small(f"{self.claimed}/{rel}"))
            except FileNotFoundError:  # lease ended before we even read it
                self._count_lost(rel)
                return
            if task.rel != rel:
                raise DescriptorError(f"descriptor names {task.rel!r}")
            data = to_csv(self.source.fetch(task, self.stop))
            tmp = self._write_tmp(i, data)
            with self._lock:
                self._held.discard(rel)  # the commit ends the claim; no more renewals
            os.rename(tmp, f"{self.done}/{rel}")
            tmp = None
            with self._lock:
                self.summary.committed += 1
                self._cool_until.pop(rel, None)
        # A failure is recorded before the claim is given back: once released, the task is
        # pending for our other threads too, which must already see its cool-down or give-up.
        except Stopped:
            self._release(rel)
        except SourceError as e:
            self._failed(rel, str(e), final=False)
            self._release(rel)
        except DescriptorError as e:
            self._failed(rel, f"bad task descriptor: {e}", final=True)
            self._release(rel)
        except FileExistsError:  # EEXIST on commit: finished by someone else meanwhile
            with self._lock:
                self.summary.already_done += 1
        except OSError as e:
            if e.errno in MOUNT_GONE:
                raise self._gone_or(e, "") from None
            what = "the mount refused our CSV" if e.errno == errno.EBADMSG else "I/O error"
            self._failed(rel, f"{what}: {e.strerror or e}", final=e.errno == errno.EBADMSG)
            self._release(rel)
        finally:
            with self._lock:
                self._held.discard(rel)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _write_tmp(self, i: int, data: bytes) -> str:
        """tmp/NAME, unique per process and worker, fsync'd before the commit rename."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        path = f"{self.tmp}/{self.host}.{os.getpid()}.{i}.{seq}.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _release(self, rel: str) -> None:
        """`rm claimed/REL`: the task is pending again for every worker at once."""
        try:
            os.unlink(f"{self.claimed}/{rel}")
        except FileNotFoundError:
            return  # expired already
        except OSError:
            return  # mount gone: the lease will end it
        with self._lock:
            self.summary.released += 1

    def _failed(self, rel: str, reason: str, final: bool) -> None:
        with self._lock:
            n = self._tries[rel] = self._tries.get(rel, 0) + 1
            give_up = final or n >= self.attempts
            if give_up:
                self.summary.failed[rel] = reason
                self._cool_until.pop(rel, None)
            else:
                self._cool_until[rel] = time.monotonic() + self.retry_delay * 2 ** (n - 1)
        if give_up:
            self.report(f"gave up on {rel} after {n} attempt(s), left pending: {reason}")
        else:
            self.report(f"{rel}: {reason}; claim released, retry {n + 1}/{self.attempts} later")

    def _count_lost(self, rel: str) -> None:
        with self._lock:
            self.summary.claims_lost += 1
        self.report(f"{rel}: our claim expired before we finished; another worker may have it")

    def _gone_or(self, e: OSError, what: str) -> Exception:
        if e.errno in MOUNT_GONE:
            return MountGone(f"{self.root}: the mount is gone ({e.strerror})")
        return MountGone(f"{self.root}: {what}: {e.strerror or e}")

    # -- leases --------------------------------------------------------------------------------
    def _keeper(self) -> None:
        """Renew every claim a live worker holds, a few times per lease."""
        while not self._finished.wait(self.renew_every):
            with self._lock:
                held = list(self._held)
            for rel in held:
                try:
                    os.utime(f"{self.claimed}/{rel}")
                except FileNotFoundError:
                    with self._lock:
                        still = rel in self._held  # not just committed by its worker
                        self._held.discard(rel)  # not ours any more: never release it
                    if still:
                        self._count_lost(rel)
                except OSError:
                    pass  # mount gone: the workers report it
