"""Mounts a Workspace and runs its background loops until unmounted or signalled.

Shape (after S3QL's mount.py): everything is built outside the Operations class and injected;
background work are small loops in one trio nursery; SIGINT/SIGTERM call pyfuse3.terminate(),
and the mount is always released on the way out, so no dead mount is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import trio

from fusefs.engine.claims import Claims
from fusefs.engine.facts import walk as facts_walk
from fusefs.engine.wakeup import Wakeup
from fusefs.engine.workspace import Workspace
from fusefs.fuse import sdnotify
from fusefs.fuse.fs import MissionFS
from fusefs.fuse.fuseconn import (
    abort_fuse_connection,
    forget_mount,
    fuse_connection,
    record_mount,
    start_guardian,
)
from fusefs.statedir.claimlog import ClaimLog
from fusefs.statedir.ratelog import LOG_REPEATS
from fusefs.statedir.store import LocalStore, replace_text

log = logging.getLogger("missionfs")

SNAPSHOT_EVERY_COMMITS = 20_000
SNAPSHOT_EVERY_SECONDS = 60.0
DIR_SYNC_SECONDS = 0.25
IDLE_SECONDS = 60.0  # an idle mount's housekeeping loops wake at most this often


class Daemon:
    def __init__(
        self,
        ws: Workspace,
        mountpoint: Path,
        allow_other: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        claim_outcomes: Callable[[str], None] | None = None,
        invalidate: bool = True,
    ) -> None:
        """`clock` is the wall clock of leases (tests move it), `claim_outcomes` an observer of
        every claim's outcome (metrics), `invalidate` off when no kernel cache exists (tests)."""
        self.ws = ws
        self.mission = ws.mission
        self.state = ws.state
        self.store: LocalStore = ws.store
        self.index = ws.index
        self.mountpoint = mountpoint
        self.allow_other = allow_other
        self.status = ws.status
        self.committer = ws.committer
        self.sync = ws.sync
        self.claim_log = ClaimLog(ws.store.layout.claims_log, ws.state)
        self.claims = Claims(
            ws.state,
            ws.committer.journal,
            ws.lease,
            committer=ws.committer,
            store=ws.store,
            status=ws.status,
            claim_log=self.claim_log,  # a claim it cannot record is rolled back
            fleet=ws.sync.fleet if ws.sync is not None else None,
            clock=clock,
            outcomes=claim_outcomes,
        )
        self.ops = MissionFS(
            ws.state,
            ws.store,
            ws.committer,
            ws.status,
            self.claims,
            ws.sync,
            invalidate=invalidate,
        )
        self._snapshot_lock = trio.Lock()
        self._forced = 0
        # Housekeeping loops with nothing to do park here; any state change or the first
        # journal line after an fsync wakes them (fusefs/engine/wakeup.py).
        self.wakeup = Wakeup()
        ws.state.subscribe(self._changed)
        ws.committer.journal.on_dirty = self.wakeup.poke

    def run(self) -> None:
        self._recover_staging()
        self.claims.restore()  # claims held when the last daemon stopped, before serving
        if self.mission.space.size:
            self.mission.space.descriptor_size(0)  # per-phrase sizes: not in the first `ls`
        # Without allow_other only the mounting user can reach the mount, so the kernel's
        # permission checks (default_permissions) would only add GETATTR round trips.
        options = {f"fsname=missionfs:{self.mission.name}", "subtype=missionfs"}
        if self.allow_other:
            options |= {"allow_other", "default_permissions"}
        pyfuse3.init(self.ops, str(self.mountpoint), options)
        log.info("mounted %s on %s (state %s)", self.mission.name, self.mountpoint, self.store.root)
        conn = fuse_connection(self.mountpoint)
        record_mount(self.store.root, self.mountpoint, conn)  # for recovery after kill -9
        if conn is not None:
            start_guardian(self.store.root, self.mountpoint)
        try:
            trio.run(self._main)
        except BaseException:
            log.exception("daemon failed; unmounting")
            # Requests in flight (a rename waiting for its answer) would otherwise keep the
            # kernel, the invalidation thread and the workers stuck in D state forever.
            abort_fuse_connection(conn)
            raise
        finally:
            sdnotify.stopping(self.mountpoint)  # systemd: stopping, not crashed (Type=notify)
            self.ops.kcache.notifier.close()  # its thread uses the session closed next
            pyfuse3.close(unmount=True)
            forget_mount(self.store.root)
            self._final_snapshot()
            log.info("unmounted %s", self.mountpoint)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            nursery.start_soon(_guarded, self.ops.kcache.notifier.run)  # invalidations
            nursery.start_soon(sdnotify.ready_when_answering, self.mountpoint, self.mission.name)
            if self.ws.from_index:
                nursery.start_soon(self._reconcile)
            else:  # the tree was walked just before mounting: nothing to reconcile
                self.committer.reconciled = True
                self.status.reconcile = "done"
            self.housekeeping(nursery)
            if self.sync is not None:
                nursery.start_soon(_guarded, self.sync.run)
            if self.ws.digest is not None:
                nursery.start_soon(_guarded, self.ws.digest.run)
            await pyfuse3.main()
            if self.sync is not None:  # publish our last uploads now, not at the next mount
                with trio.move_on_after(5.0):
                    await self.sync.flush_manifest(now=True)
            nursery.cancel_scope.cancel()

    def housekeeping(self, nursery: trio.Nursery) -> None:
        """Start the local loops (lease expiry, journal fsync, index snapshots, batched
        directory fsyncs); each parks on `wakeup` while it has nothing to do."""
        self.wakeup.bind()
        nursery.start_soon(_guarded, self._expiry_loop)
        nursery.start_soon(_guarded, self._snapshot_loop)
        nursery.start_soon(_guarded, self._journal_loop)
        if self.committer.batched:
            nursery.start_soon(_guarded, self._dir_sync_loop)

    def _changed(self, tasks: object) -> None:
        """State listener: a claim, a commit, a fact learned... wakes the parked loops."""
        self.wakeup.poke()

    async def _signals(self) -> None:
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        with trio.open_signal_receiver(*sigs) as signals:
            async for sig in signals:
                if sig in (signal.SIGUSR1, signal.SIGUSR2):  # USR2: `missionfs sync --verify`
                    self._force_sync(verify=sig == signal.SIGUSR2)
                    continue
                log.info("signal %s: unmounting", signal.Signals(sig).name)
                pyfuse3.terminate()
                return

    def _force_sync(self, *, verify: bool = False) -> None:
        """`missionfs sync` on a mounted state dir: refresh + drain, then report in a file
        (`verify`: with a listing of every witness shard)."""
        if self.sync is None:
            return
        self._forced += 1
        generation = self._forced
        sync = self.sync

        def done() -> None:
            result = {"generation": generation, "pid": os.getpid(), **sync.info()}
            replace_text(self.store.layout.sync_result, json.dumps(result))

        sync.force(done, verify=verify)

    async def _expiry_loop(self) -> None:
        """Return tasks whose lease ended; sleeps until the next expiry (at most a second:
        tests move the lease clock), and while nothing is claimed until a claim."""
        while True:
            now = self.claims.clock()
            self.claims.expire(now)
            nxt = self.claims.next_expiry()
            if nxt is None:
                await self.wakeup.wait(IDLE_SECONDS)
            else:
                await trio.sleep(min(1.0, max(0.0, nxt - now)))

    async def _reconcile(self) -> None:
        """Compare the index with the files (the truth) in the background after mounting."""
        self.status.reconcile = "running"
        loaded = self.ws.facts.local.copy()
        found, outside = await trio.to_thread.run_sync(facts_walk, self.store, self.mission.space)
        drift = self.ws.facts.reconcile(found, loaded)  # journals and indexes what it finds
        self.status.outside_plan = len(outside)
        self.committer.reconciled = True
        self.status.reconcile = "done"
        if not drift.clean:
            log.warning(
                "reconcile: %d witness(es) found that the index missed, %d indexed but "
                "missing on disk",
                len(drift.new),
                len(drift.gone),
            )
            await self._snapshot()

    async def _dir_sync_loop(self) -> None:
        """Durability "batched": new witness links become durable within DIR_SYNC_SECONDS."""
        while True:
            if not self.store.dirty_dirs:
                await self.wakeup.wait(IDLE_SECONDS)  # a commit changes the state: poked
                continue
            await trio.sleep(DIR_SYNC_SECONDS)
            await trio.to_thread.run_sync(self.store.flush_dirs)

    async def _journal_loop(self) -> None:
        """The journal is flushed on every line (kill -9 safe) and fsync'd about a second after
        a line is written; the counts of repeated refusals and errors (ratelog.py) are written
        about once a second while lines come, and within IDLE_SECONDS when they stop."""
        journal = self.committer.journal
        while True:
            if not journal.dirty:
                await self.wakeup.wait(IDLE_SECONDS)  # until a line is written
            await trio.sleep(1.0)
            self.status.flush_refusals()
            LOG_REPEATS.flush()
            self.ops.request_errors.flush()
            if journal.dirty:
                await trio.to_thread.run_sync(journal.sync)

    async def _snapshot_loop(self) -> None:
        """A start-up index snapshot every SNAPSHOT_EVERY_COMMITS index lines, or within
        SNAPSHOT_EVERY_SECONDS of the first line since the last one; parks while there is none."""
        last = trio.current_time()
        while True:
            if not self.index.appended:
                await self.wakeup.wait(IDLE_SECONDS)  # index lines come with state changes
                continue
            await trio.sleep(1.0)
            appended = self.index.appended  # 0 if the reconcile has just snapshotted
            if appended >= SNAPSHOT_EVERY_COMMITS or (
                appended and trio.current_time() - last > SNAPSHOT_EVERY_SECONDS
            ):
                await self._snapshot()
                last = trio.current_time()

    async def _snapshot(self) -> None:
        async with self._snapshot_lock:
            gen = self.index.rotate()
            facts = self.committer.local.copy()  # taken together with the rotation: atomic here
            await trio.to_thread.run_sync(self.index.snapshot, facts, gen)
            if self.sync is not None:
                await trio.to_thread.run_sync(self.sync.write_save, self.sync.prepare_save())

    def _final_snapshot(self) -> None:
        try:
            self.claim_log.close()
            self.store.flush_dirs()
            self.committer.journal.close()
            gen = self.index.rotate()
            self.index.snapshot(self.committer.local, gen)
            self.index.close()
            if self.sync is not None:
                self.sync.save()
                self.sync.close()
        except OSError as e:
            log.error("could not save the start-up index (%s); next mount will walk the tree", e)

    def _recover_staging(self) -> None:
        """Direct writes cut short by a daemon crash are kept under rejected/, never dropped."""
        self.store.clean_tmp_leftovers()
        for entry in os.scandir(self.store.staging):
            if entry.name.startswith("fetch."):
                os.unlink(entry.path)  # an interrupted download: S3 still has it
                continue
            kept = self.store.reject(
                Path(entry.path),
                entry.name,
                "the daemon stopped before this direct write was closed",
            )
            log.warning("kept unfinished direct write as %s", kept)


async def _guarded(loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop forever: a bug in one loop is logged and the loop restarted, it
    never takes the mount (and the workers using it) down."""
    while True:
        try:
            await loop()
            return
        except Exception:
            log.exception(
                "background task %s failed; restarting it in 5 s",
                getattr(loop, "__qualname__", loop),
            )
            await trio.sleep(5.0)
