"""Sends the kernel the entry invalidations of the mount, a batch per thread wake-up.

An invalidation is a write to /dev/fuse that may block: the kernel takes the parent
directory's lock first, and a request on that directory (a LOOKUP, a RENAME) may hold it while
it waits for our answer. So it is never written from the trio thread (which answers those
requests: deadlock), but from a thread of its own. pyfuse3's `invalidate_entry_async` does that
with a queue.Queue read by its notify thread: one wake-up of the thread, and a GIL hand-off,
per name. Here the trio thread collects the names and hands the whole batch over at once: the
names of one trio tick share a wake-up, and under load (a hand-off less than LINGER_SECONDS
ago) the next hand-off waits until LINGER_SECONDS after the last one, so the commits of those
milliseconds share it too. An invalidation therefore reaches the thread at most LINGER_SECONDS
after the call that queued it (at once when the mount was quiet), and the kernel as soon as the
thread gets to it (it waits while a request on the same directory is in flight).
"""

from __future__ import annotations

import logging
import queue
import threading

import pyfuse3
import trio

log = logging.getLogger("missionfs")

LINGER_SECONDS = 0.005  # the most a hand-off waits for later names under load (SEMANTICS.md)

Entry = tuple[int, bytes]  # (parent inode, name)


class Notifier:
    """The entry invalidations of the mount: collected on the trio thread, sent by one thread.

    `run` (a task of the daemon's nursery) does the lingering hand-off; without it (no trio
    loop of the mount running, or a call from another thread) a name goes to the thread at once.
    Never loses a name: an error sending one is logged and the thread goes on to the next."""

    def __init__(self, linger: float = LINGER_SECONDS) -> None:
        self.linger = linger
        self.handoffs = 0  # batches given to the thread
        self.wakeups = 0  # times the thread woke up to find names to send
        self.sent = 0  # names sent (or found already gone: ENOENT)
        self._batch: list[Entry] = []  # collected on the trio thread, not yet handed over
        self._loop_thread: int | None = None  # the trio thread while `run` hands over
        self._scheduled = False  # a hand-off is due (`run` is awake or about to be)
        self._lot = trio.lowlevel.ParkingLot()
        # Batches handed over, for the thread to send (None: stop). A SimpleQueue: a put and a
        # get are C calls, the get waits without the GIL.
        self._ready: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the thread's start and the closing flag
        self._thread: threading.Thread | None = None
        self._closing = False
        self.thread_id = 0  # the sending thread's kernel id (its CPU: /proc/PID/task/ID/stat)

    def add(self, parent: int, name: bytes) -> None:
        """Invalidate `name` in directory `parent`, soon. Never blocks."""
        if threading.get_ident() == self._loop_thread:
            self._batch.append((parent, name))
            if not self._scheduled:
                self._scheduled = True
                self._lot.unpark()
        else:
            self._hand_over([(parent, name)])

    async def run(self) -> None:
        """Hand the names collected on this trio thread to the sending thread: once the tasks
        that ran with the first of them are done, or LINGER_SECONDS after the last hand-off if
        that was more recent. Until cancelled (the unmount); what is left is handed over then."""
        self._loop_thread = threading.get_ident()
        last = -self.linger
        try:
            while True:
                if not self._scheduled:
                    await self._lot.park()
                delay = last + self.linger - trio.current_time()
                if delay > 0:
                    await trio.sleep(delay)  # under load: later names join this batch
                self._scheduled = False
                last = trio.current_time()
                self._flush()
        finally:
            self._loop_thread = None
            self._scheduled = False
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._hand_over(batch)

    def _hand_over(self, batch: list[Entry]) -> None:
        if self._thread is None:
            with self._lock:
                if self._closing:
                    return  # unmounted: the kernel holds no name of the mount any more
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._send_loop, name="missionfs-invalidate", daemon=True
                    )
                    self._thread.start()
        elif self._closing:
            return
        self.handoffs += 1
        self._ready.put(batch)  # wakes the thread only if it waits

    def _send_loop(self) -> None:
        """The sending thread: every batch handed over, name by name, until `close`."""
        self.thread_id = threading.get_native_id()
        while True:
            batch = self._ready.get()
            if batch is None or self._closing:
                return
            while True:  # the batches handed over meanwhile too, in one wake-up
                try:
                    more = self._ready.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
                batch.extend(more)
            self.wakeups += 1
            for parent, name in batch:
                if self._closing:
                    return  # pyfuse3's session is about to go
                self._send(parent, name)

    def _send(self, parent: int, name: bytes) -> None:
        try:
            pyfuse3.invalidate_entry(parent, name)  # may block: see the module docstring
        except FileNotFoundError:
            pass  # the kernel holds no such name: nothing was stale
        except Exception:  # the thread must outlive any error: the next names still go
            log.exception("could not invalidate name %r in directory inode %d", name, parent)
        self.sent += 1

    def close(self, timeout: float = 2.0) -> None:
        """At unmount, before pyfuse3's session is destroyed: stop the thread (names not sent
        yet are moot, the mount is gone). A thread stuck in the kernel is left behind after
        `timeout` (a daemon thread: it does not hold the exit up)."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._ready.put(None)
        if self.handoffs:
            log.info(
                "kernel invalidations: %d name(s) in %d hand-off(s), %d wake-up(s) of thread %d",
                self.sent,
                self.handoffs,
                self.wakeups,
                self.thread_id,
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the invalidation thread is stuck in the kernel; left behind")
