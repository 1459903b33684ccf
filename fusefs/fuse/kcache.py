"""The kernel's caches of a mount: which computed inodes it holds, and dropping stale names.

Names and attributes of the views are cached by the kernel (entry and attribute timeouts in
attrs.py); when a task changes view, every cached name of it must go, or a worker would list or
open a task that is no longer there. Only names the kernel may hold are invalidated: it holds a
name of a computed inode only while it has a reference to it (a lookup or a listed entry, until
its forget), so those references are tracked, one bitmap of payloads per inode kind code: a
`find` over a national mission leaves millions of inodes in the kernel, a dict of counts would
cost ~100 bytes each. The kernel forgets an inode with its whole lookup count at once (partial
forgets happen only on its allocation-failure paths), so membership is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyfuse3
import trio
from pyroaring import BitMap

from fusefs.fuse import inodes
from fusefs.fuse.inodes import VIEWS, Kind
from fusefs.model.state import MissionState, View, groups

log = logging.getLogger("missionfs")

BULK_INVALIDATION = 256  # above this many changed tasks, invalidate rows, not names


class KernelCache:
    """Kernel references to computed inodes, and the invalidations a state change needs.

    `enabled` is False without a kernel (handler tests): nothing is invalidated."""

    def __init__(self, state: MissionState, *, enabled: bool = True) -> None:
        self.state = state
        self.space = state.space
        self.enabled = enabled
        self.refs: dict[int, BitMap] = {}
        # Tasks being committed through this mount: the kernel itself turns done/REL positive.
        self.committing: set[int] = set()
        self._dropping: set[int] = set()  # inodes whose cached pages are being dropped
        self.phrase_bytes = [n.encode("utf-8", "surrogatepass") for n in state.space.phrase_names]
        state.subscribe(self.on_change)

    # -- kernel references --------------------------------------------------------------------
    def ref(self, ino: int) -> None:
        """The kernel took a reference to computed inode `ino` (a lookup or a listed entry)."""
        k = ino >> inodes.SHIFT
        if 0 < k < Kind.TMP:
            self.refs_of(k).add(ino & inodes.MASK)

    def refs_of(self, k: int) -> BitMap:
        bm = self.refs.get(k)
        if bm is None:
            bm = self.refs[k] = BitMap()
        return bm

    def held(self, ino: int) -> bool:
        """May the kernel hold a name of computed inode `ino`?"""
        bm = self.refs.get(ino >> inodes.SHIFT)
        return bm is not None and (ino & inodes.MASK) in bm

    def forget(self, ino: int) -> None:
        bm = self.refs.get(ino >> inodes.SHIFT)
        if bm is not None:
            bm.discard(ino & inodes.MASK)

    # -- invalidation -------------------------------------------------------------------------
    def on_change(self, tasks: Iterable[int]) -> None:
        """A task changed view: drop every cached name of it so no listing or lookup is stale."""
        if not self.enabled:
            return
        sp = self.space
        if isinstance(tasks, BitMap) and len(tasks) > BULK_INVALIDATION:
            # Bulk change (reconcile, remote facts): drop whole rows, which drops their subtrees.
            for row in groups(tasks, 0, sp.size, sp.row_size, 0):
                name = sp.lat.name(row).encode()
                for v in (View.PENDING, View.CLAIMED, View.DONE):
                    self.invalidate(inodes.VIEW_ROOTS[v], name)
            return
        # Only names the kernel may hold are invalidated: a positive name is backed by a
        # kernel reference to one of the task's inodes (a claim by mv moves the pending one
        # under claimed/); done/ names may also be cached misses, except for a commit made
        # through this mount, where the kernel turned the name positive itself.
        held = self.held
        tiles_seen: set[int] = set()
        for task in tasks:
            tile, phrase = divmod(task, sp.nphr)
            name = self.phrase_bytes[phrase]
            if task not in self.committing:
                self.invalidate(inodes.make(Kind.TILE, View.DONE, tile), name)
            if any(held(inodes.make(Kind.FILE, v, task)) for v in VIEWS):
                for v in VIEWS:
                    self.invalidate(inodes.make(Kind.TILE, v, tile), name)
            if tile not in tiles_seen:
                tiles_seen.add(tile)
                self._tile_left_pending(tile)

    def _tile_left_pending(self, tile: int) -> None:
        """The last pending task of a tile (or row) left: drop the tile's (row's) name."""
        sp = self.space
        row, col = divmod(tile, sp.lon.n)
        if self.state.tile_has(View.PENDING, row, col):
            return
        if self.held(inodes.make(Kind.TILE, View.PENDING, tile)):
            self.invalidate(inodes.make(Kind.ROW, View.PENDING, row), sp.lon.name(col).encode())
        row_ino = inodes.make(Kind.ROW, View.PENDING, row)
        if self.held(row_ino) and not self.state.row_has(View.PENDING, row):
            self.invalidate(inodes.VIEW_ROOTS[View.PENDING], sp.lat.name(row).encode())

    def invalidate(self, parent: int, name: bytes) -> None:
        if self.enabled and parent:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    def drop_cached_pages(self, ino: int) -> None:
        """After refusing a write to a committed inode, drop the kernel's pages of it: a refused
        mmap writeback leaves the modified page cached (clean), and a reader of that inode
        would see bytes the witness does not hold. Done in a thread once this reply is sent
        (the kernel waits for the reply before it lets the invalidation through)."""
        if not self.enabled or ino in self._dropping:
            return  # one at a time per inode, however fast a hostile mapping writes
        self._dropping.add(ino)

        async def later() -> None:  # a system task: nothing may escape it
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
            except Exception as e:  # only a stale cache is at stake
                log.debug("cached pages of inode %d not dropped: %s", ino, e)
            finally:
                self._dropping.discard(ino)

        trio.lowlevel.spawn_system_task(later)
