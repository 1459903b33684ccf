"""The fleet duties of a window's compactor (protocol v2, docs/protocol.md): checkpoints every
C windows and retention of old node manifests and segments; and the engine seam of the fact log.

A mixin of FactLog (factlog.py), split off so that each module stays readable: the fact log
decides *when* (it wrote window w's segment and applied every segment through w), this module
does *what*. Both are a few requests per C windows for the whole fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import trio

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.engine.threads import blocking as _s3
from fusefs.model import segment as sg
from fusefs.model.checkpoint import Checkpoint, CheckpointBuilder
from fusefs.model.errors import S3ConfigError, S3Unavailable

if TYPE_CHECKING:
    from fusefs.engine.fleet import FleetClaims
    from fusefs.model.codec import TaskSpace
    from fusefs.objects.s3store import S3Store

log = logging.getLogger("missionfs")

C = 10  # a checkpoint every C windows; a cursor further behind starts from a checkpoint
KEEP_SECONDS = 3600.0  # node manifests are kept this long (a deleted segment is recompacted)


Listed = list[tuple[str, int | None]]  # (rel, size) of witnesses from a listing


class Counters(Protocol):
    last_full_refresh: float


class FactHost(Protocol):
    """What the fact log uses of its engine (SyncEngine: remotefacts.py and sync.py)."""

    s3: S3Store
    worker: str
    space: TaskSpace
    uploaders: int
    claims_mode: str  # "local" (no fleet), "strict" or "optimistic"

    @property
    def counters(self) -> Counters: ...

    fleet: FleetClaims | None
    _manifest: list[str]  # lines not yet published (the upload side appends to it)

    async def learn_facts(self, facts: list[sg.Fact]) -> int: ...

    async def learn_checkpoint(self, cp: Checkpoint) -> int: ...

    async def _list_shards(self, shards: list[str] | None) -> tuple[Listed, Listed]: ...


class FactDuties:
    """Checkpoint writing and retention; mixed into FactLog, which sets these up."""

    engine: FactHost
    s3: S3Store
    book: CheckpointBook
    builder: CheckpointBuilder | None
    checkpoints_written: int

    @property
    def w(self) -> float:
        raise NotImplementedError

    def _task(self, rel: str) -> int | None:
        raise NotImplementedError

    async def _compactor_duties(self, w: int) -> None:
        """The compactor's duties for the fleet, once segment w is applied: a checkpoint every
        C windows, retention (a few requests) every C windows in between."""
        try:
            if w % C == 0:
                await self._checkpoint(w)
            elif w % C == C // 2:
                await self._retention(w)
        except (S3Unavailable, S3ConfigError) as e:
            log.info("checkpoint or retention of window %d not done (%s)", w, e)

    async def _checkpoint(self, w: int) -> None:
        """Write checkpoint w (If-None-Match) from the chain: the checkpoint we started from
        and every segment after it, through w."""
        if self.builder is None and not await self._chain(w):
            return
        assert self.builder is not None
        cp = await trio.to_thread.run_sync(self.builder.build, w)
        if await _s3(self.book.write, cp):
            self.checkpoints_written += 1
            log.info("wrote checkpoint %d (%d facts)", w, len(cp.facts))
        await _s3(self.book.prune)

    async def _chain(self, w: int) -> bool:
        """Rebuild the chain after a restart: the newest checkpoint and the segments after it
        through w (at most 3 C GETs, once per process); False if a link is missing."""
        cp = await _s3(self.book.latest, -1, w)
        if cp is None or cp.window > w or w - cp.window > 3 * C:
            return False
        builder = CheckpointBuilder(self.engine.space, cp)
        for x in range(cp.window + 1, w + 1):
            found = await _s3(self.s3.get_segment, x)
            try:
                seg = sg.decode(found[0], x) if found is not None else None
            except sg.CorruptSegment:
                seg = None
            if seg is None:
                return False
            await trio.to_thread.run_sync(self._build, builder, seg.facts)  # per fact
        self.builder = builder
        return True

    def _build(self, builder: CheckpointBuilder, facts: Iterable[sg.Fact]) -> None:
        for f in facts:
            task = self._task(f.rel)
            if task is not None:
                builder.add(task, f.rel, f.sha256 or None, f.size)

    async def _retention(self, w: int) -> None:
        """Delete node manifests of windows older than KEEP whose segment exists, protocol v1's
        manifests older than KEEP, and segments older than the oldest checkpoint kept (a page of
        each: a few requests)."""
        keep_from = w - int(KEEP_SECONDS / self.w)
        old = await _s3(self.s3.log_windows_before, keep_from)
        if old:
            have = await _s3(self._segments_between, old[0][0], old[-1][0])
            doomed = [key for win, key in old if win in have]
            if doomed:
                await _s3(self.s3.delete_many, doomed, "node manifests")
                log.info("deleted %d node manifests older than %.0f s", len(doomed), KEEP_SECONDS)
        v1 = await _s3(self.s3.prune_manifests, int((keep_from * self.w) * 1000))
        if v1:
            log.info("deleted %d manifests of protocol v1", v1)
        kept = await _s3(self.book.windows)
        if kept:
            stale = await _s3(self._segments_between, -1, kept[0] - 1)
            if stale:
                keys = [self.s3.segment_key(x) for x in sorted(stale)]
                await _s3(self.s3.delete_many, keys, "segments")

    def _segments_between(self, first: int, last: int, limit: int = 1000) -> set[int]:
        """Windows first..last that have a segment (blocking: a LIST page or so)."""
        out: set[int] = set()
        for x in self.s3.segment_windows(first - 1):
            if x > last or len(out) >= limit:
                break
            out.add(x)
        return out
