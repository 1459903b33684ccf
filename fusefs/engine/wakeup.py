"""Parking for the daemon's housekeeping loops while the mount is idle.

Why: a loop that wakes every second "in case" costs CPU for nothing, and on the nodes this is
for that adds up: every wake-up of the process is a trip through trio's run loop and, on a
virtual machine, through the hypervisor (measured here: about 10 ms of CPU a wake-up, so five
such loops kept an idle mount at 30-50 ms of CPU a second, docs/benchmarks.md). With a
`Wakeup`, a loop with nothing to do parks until something happens (a state change, a journal
line) or a long timeout passes, and works at its usual pace while there is work.

`poke` sits on hot paths (every state change, the first journal line after an fsync). On the
trio thread, while no loop is parked, it is a flag test: a loop checks its condition and parks
in one step, so a poke there comes either before the check (which then sees the work) or after
the park. From another thread (journal lines written by worker threads) the flag cannot be
trusted (the loop may be between its check and its park), so the poke always hands an
`unpark_all` to the trio thread through the run's token; it runs after the loop's step.
"""

from __future__ import annotations

import threading

import trio


class Wakeup:
    """Loops park here (`wait`) until `poke` or their timeout; bound to one trio run."""

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = 0  # the trio thread's id
        self._parked = False

    def bind(self) -> None:
        """Called on the trio thread of the run whose loops park here, before they do."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()

    def poke(self) -> None:
        """Something happened: wake the parked loops (any thread; on the trio thread a flag
        test when none is parked)."""
        if self._token is None:
            return
        if threading.get_ident() == self._thread:
            if not self._parked:
                return
            self._parked = False
        try:
            self._token.run_sync_soon(self._lot.unpark_all, idempotent=True)
        except trio.RunFinishedError:
            pass  # the daemon is stopping: nobody is left to wake

    async def wait(self, timeout: float) -> None:
        """Park until a poke or `timeout` seconds. A caller checks its condition and parks in
        the same step (no await in between), so a poke made after the check wakes it."""
        self._parked = True
        with trio.move_on_after(timeout):
            await self._lot.park()
