"""Builds the state, store and Operations, mounts them and runs the background loops.

Shape (after S3QL's mount.py): everything is built outside the Operations class and injected;
background work are small loops in one trio nursery; SIGINT/SIGTERM call pyfuse3.terminate(),
and the mount is always released on the way out, so no dead mount is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from .commit import Committer
from .fs import MissionFS
from .index import FactIndex, walk_facts
from .mission import Mission
from .state import MissionState
from .status import StatusBoard
from .store import LocalStore

log = logging.getLogger("missionfs")

SNAPSHOT_EVERY_COMMITS = 20_000
SNAPSHOT_EVERY_SECONDS = 60.0


def default_state_dir(mission: Mission) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "missionfs" / mission.name


@dataclass
class Loaded:
    state: MissionState
    store: LocalStore
    index: FactIndex
    outside_plan: list[str]
    from_index: bool


def load_state(
    mission: Mission, state_dir: Path, progress: Callable[[int], None] | None = None
) -> Loaded:
    """Facts from the start-up index if usable, else from a full walk (then indexed)."""
    store = LocalStore(state_dir)
    store.prepare()
    index = FactIndex(store.index_dir, mission.space)
    facts = index.load()
    outside: list[str] = []
    from_index = facts is not None
    if facts is None:
        facts, outside = walk_facts(store.scan(), mission.space, progress)
        gen = index.rotate()
        index.snapshot(facts, gen)
    state = MissionState(mission.space, mission.intent, facts)
    return Loaded(state, store, index, outside, from_index)


class Daemon:
    def __init__(
        self,
        mission: Mission,
        loaded: Loaded,
        mountpoint: Path,
        lease: float,
        allow_other: bool = False,
    ) -> None:
        self.mission = mission
        self.loaded = loaded
        self.state = loaded.state
        self.store = loaded.store
        self.index = loaded.index
        self.mountpoint = mountpoint
        self.lease = lease
        self.allow_other = allow_other
        self.status = StatusBoard(mission.name, self.state, str(self.store.root), lease)
        self.status.outside_plan = len(loaded.outside_plan)
        self.committer = Committer(self.state, self.store, self.index, self.status)
        self.ops = MissionFS(self.state, self.store, self.committer, self.status, lease)
        self._snapshot_lock = trio.Lock()

    def run(self) -> None:
        self._recover_staging()
        options = set(pyfuse3.default_options)
        options |= {f"fsname=missionfs:{self.mission.name}", "subtype=missionfs"}
        if self.allow_other:
            options.add("allow_other")
        pyfuse3.init(self.ops, str(self.mountpoint), options)
        log.info("mounted %s on %s (state %s)", self.mission.name, self.mountpoint, self.store.root)
        unmount = True
        try:
            trio.run(self._main)
        except BaseException:
            log.exception("daemon failed; unmounting")
            raise
        finally:
            pyfuse3.close(unmount=unmount)
            self._final_snapshot()
            log.info("unmounted %s", self.mountpoint)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(self._reconcile)
            nursery.start_soon(self._snapshot_loop)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for sig in signals:
                log.info("signal %s: unmounting", signal.Signals(sig).name)
                pyfuse3.terminate()
                return

    async def _expiry_loop(self) -> None:
        """Return tasks whose lease ended; sleeps until the next expiry (or a new claim)."""
        while True:
            now = time.time()
            expired = self.state.expire(now)
            if expired:
                self.status.expired += len(expired)
                log.info("lease expired for %d task(s), back to pending", len(expired))
            nxt = self.state.next_expiry()
            await trio.sleep(min(1.0, max(0.0, nxt - now)) if nxt is not None else 1.0)

    async def _reconcile(self) -> None:
        """Compare the index with the files (the truth) in the background after mounting."""
        self.status.reconcile = "running"
        loaded_facts = self.state.fact.copy()
        found, outside = await trio.to_thread.run_sync(
            lambda: walk_facts(self.store.scan(), self.mission.space)
        )
        new = self.state.add_facts(found)
        gone = self.state.remove_facts(loaded_facts - found)
        if new:
            self.index.append(self.mission.space.rel(t) for t in new)
        self.status.outside_plan = len(outside)
        self.committer.reconciled = True
        self.status.reconcile = "done"
        if new or gone:
            log.warning(
                "reconcile: %d witness(es) found that the index missed, %d indexed but "
                "missing on disk",
                len(new),
                len(gone),
            )
            await self._snapshot()

    async def _snapshot_loop(self) -> None:
        last = time.monotonic()
        while True:
            await trio.sleep(1.0)
            if self.index.appended >= SNAPSHOT_EVERY_COMMITS or (
                self.index.appended and time.monotonic() - last > SNAPSHOT_EVERY_SECONDS
            ):
                await self._snapshot()
                last = time.monotonic()

    async def _snapshot(self) -> None:
        async with self._snapshot_lock:
            gen = self.index.rotate()
            facts = self.state.fact.copy()  # taken together with the rotation: atomic here
            await trio.to_thread.run_sync(self.index.snapshot, facts, gen)

    def _final_snapshot(self) -> None:
        try:
            gen = self.index.rotate()
            self.index.snapshot(self.state.fact, gen)
            self.index.close()
        except OSError as e:
            log.error("could not save the start-up index (%s); next mount will walk the tree", e)

    def _recover_staging(self) -> None:
        """Direct writes cut short by a daemon crash are kept under rejected/, never dropped."""
        self.store.clean_tmp_leftovers()
        for entry in os.scandir(self.store.staging):
            kept = self.store.reject(
                Path(entry.path),
                entry.name,
                "the daemon stopped before this direct write was closed",
            )
            log.warning("kept unfinished direct write as %s", kept)


def is_dead_mount(path: Path) -> bool:
    # statfs always reaches the daemon; stat may be answered from the kernel's attribute cache.
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def release_dead_mount(path: Path) -> bool:
    """A mount left by a killed daemon answers ENOTCONN; detach it so it can be mounted again."""
    if not is_dead_mount(path):
        return False
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError):
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return True
    return False
