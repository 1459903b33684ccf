"""The kernel's caches of a mount: which computed inodes it holds, and dropping stale names.

Names and attributes of the views are cached by the kernel (entry and attribute timeouts in
attrs.py); when a task changes view, every cached name of it that is now wrong must go, or a
worker would open a task that is no longer there. Each invalidation is a write to /dev/fuse by
the notifier's thread (notifier.py: batched, a GIL hand-off per batch), a moment after the
request that caused it returns, so only names that may be stale are dropped: not the name a
rename through this mount moved (the kernel moved it), not a done/ miss of a task that is
still no fact. The kernel holds a
name of a computed inode only while it has a reference to it (a lookup or a listed entry, until
its forget), so those references are tracked, one bitmap of payloads per inode kind code: a
`find` over a national mission leaves millions of inodes in the kernel, a dict of counts would
cost ~100 bytes each. Membership is not quite enough, though: the FORGET of an inode the
kernel dropped may be handled after the LOOKUP that made a new one of the same number (requests
run concurrently), and that FORGET would then end a reference the kernel still holds (its
name then stayed cached, stale, for the entry timeout). So the lookups of an inode beyond its
first are counted in a dict (`_more`), and a FORGET takes its count off: rare, small entries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import pyfuse3
import trio
from pyroaring import BitMap

from fusefs.fuse import inodes
from fusefs.fuse.inodes import Kind
from fusefs.fuse.notifier import Notifier
from fusefs.model.state import MissionState, View, groups

log = logging.getLogger("missionfs")

BULK_INVALIDATION = 256  # above this many changed tasks, invalidate rows, not names
LINGERING = 1 << 16  # claimed/ names of done tasks left to the kernel at most (see lingering)


class KernelCache:
    """Kernel references to computed inodes, and the invalidations a state change needs.

    `enabled` is False without a kernel (handler tests): nothing is invalidated."""

    def __init__(self, state: MissionState, *, enabled: bool = True) -> None:
        self.state = state
        self.space = state.space
        self.enabled = enabled
        self.notifier = Notifier()  # the daemon runs its hand-off task and closes it
        self.refs: dict[int, BitMap] = {}
        self._more: dict[int, int] = {}  # inode -> kernel lookups of it beyond the first
        # Tasks being committed through this mount: the kernel itself turns done/REL positive.
        self.committing: set[int] = set()
        # Tasks committed by `mv tmp/NAME done/REL` through this mount: the kernel may hold
        # done/REL as a positive name on the tmp/ file's inode, which no reference tracks.
        self.aliased = BitMap()
        self._claimed = state.claimed.copy()  # the claims as of each task's last change
        self._renaming: dict[int, View] = {}  # see kernel_rename
        self._left_to_kernel: set[int] = set()
        # Tasks whose claim ended with their commit, whose claimed/ name the kernel may still
        # hold (see _stale_views): dropped a tile at a time when the tile is finished.
        self.lingering = BitMap()
        self._dropping: set[int] = set()  # inodes whose cached pages are being dropped
        self.phrase_bytes = [n.encode("utf-8", "surrogatepass") for n in state.space.phrase_names]
        state.subscribe(self.on_change)

    # -- kernel references --------------------------------------------------------------------
    def ref(self, ino: int) -> None:
        """The kernel took a reference to computed inode `ino` (a lookup or a listed entry)."""
        k = ino >> inodes.SHIFT
        if 0 < k < Kind.TMP:
            bm = self.refs_of(k)
            payload = ino & inodes.MASK
            if payload in bm:
                self._more[ino] = self._more.get(ino, 0) + 1
            else:
                bm.add(payload)

    def refs_of(self, k: int) -> BitMap:
        bm = self.refs.get(k)
        if bm is None:
            bm = self.refs[k] = BitMap()
        return bm

    def held(self, ino: int) -> bool:
        """May the kernel hold a name of computed inode `ino`?"""
        bm = self.refs.get(ino >> inodes.SHIFT)
        return bm is not None and (ino & inodes.MASK) in bm

    def forget(self, ino: int, nlookup: int = 1) -> None:
        """The kernel dropped `nlookup` of its references to `ino` (a FORGET)."""
        more = self._more.pop(ino, 0) - nlookup
        if more >= 0:  # references the kernel still holds
            if more:
                self._more[ino] = more
            return
        bm = self.refs.get(ino >> inodes.SHIFT)
        if bm is not None:
            bm.discard(ino & inodes.MASK)

    # -- invalidation -------------------------------------------------------------------------
    @contextlib.contextmanager
    def kernel_rename(self, task: int, dest: View) -> Iterator[None]:
        """Around a rename of `task` between pending/ and claimed/ through this mount (a claim or
        a release by `mv`): when it succeeds the kernel moves the name itself, so the change it
        makes needs no invalidation of the source or destination name (the kernel also drops
        the moved inode's cached attributes: the next stat asks again). If the rename fails
        after the change was made, the kernel keeps the old name: it is dropped then."""
        self._renaming[task] = dest
        try:
            yield
        except BaseException:
            if task in self._left_to_kernel:
                self._drop_task_names(task)
            raise
        finally:
            self._renaming.pop(task, None)
            self._left_to_kernel.discard(task)

    def on_change(self, tasks: Iterable[int]) -> None:
        """A task changed view: drop every cached name of it so no listing or lookup is stale."""
        if not self.enabled:
            return
        sp = self.space
        if isinstance(tasks, BitMap) and len(tasks) > BULK_INVALIDATION:
            # Bulk change (reconcile, remote facts): drop whole rows, which drops their subtrees.
            self._claimed -= tasks
            self._claimed |= tasks & self.state.claimed
            for row in groups(tasks, 0, sp.size, sp.row_size, 0):
                name = sp.lat.name(row).encode()
                for v in (View.PENDING, View.CLAIMED, View.DONE):
                    self.invalidate(inodes.VIEW_ROOTS[v], name)
                self.lingering.remove_range(row * sp.row_size, (row + 1) * sp.row_size)
            return
        tiles_seen: set[int] = set()
        for task in tasks:
            tile, phrase = divmod(task, sp.nphr)
            for v in self._stale_views(task):
                self.invalidate(inodes.make(Kind.TILE, v, tile), self.phrase_bytes[phrase])
            if tile not in tiles_seen:
                tiles_seen.add(tile)
                self._tile_left_pending(tile)
        if len(self.lingering) > LINGERING:
            self._drop_lingering_rows()

    def _stale_views(self, task: int) -> list[View]:
        """The views whose cached name of `task` may be stale after its change (see below).

        Only names the kernel may hold are dropped. A positive pending/ or claimed/ name is
        backed by a kernel reference to the task's pending or claimed inode (a claim by `mv`
        moves the pending one under claimed/, a release by `mv` moves it back), and exists
        only in the view the task was in before this change (`_claimed` remembers claims as of
        the last change): a claimed task has no pending/ name and a pending one no claimed/
        name (lookups refuse them, listings do not show them). Misses are cached only in done/:
        stale once the task is a fact, except after a commit through this mount, where the
        kernel turned the name positive itself. A positive done/ name (a reference to the done
        inode, or the tmp/ file committed under it) is stale when the fact goes or its content
        changes.

        A claim that ended because its task became a fact leaves its claimed/ name to the
        kernel (`lingering`) instead of one invalidation per task: every use of that name asks
        the mount (a claim's attributes are cached 5 ms at most, attrs.py) and is told ENOENT
        (fs.py `_task_shown`), listings never show it, and a fact never returns to pending/ (if
        its witness is removed, the name is dropped then, before `mv pending/REL claimed/REL`
        could find it). The names of a tile are dropped together, one invalidation, when the
        tile is finished (`_tile_left_pending`), or a row at a time past LINGERING."""
        state, held, claimed = self.state, self.held, self._claimed
        was_claimed = task in claimed
        now_claimed = task in state.claimed
        if now_claimed != was_claimed:
            if now_claimed:
                claimed.add(task)
            else:
                claimed.discard(task)
        stale: list[View] = []
        if task in self.lingering and task not in state.fact:
            self.lingering.discard(task)  # done no more (a rare repair): pending/ may list it
            stale.append(View.CLAIMED)
        moving = self._renaming.get(task)
        if held(inodes.make(Kind.FILE, View.PENDING, task)) or held(
            inodes.make(Kind.FILE, View.CLAIMED, task)
        ):
            if moving is View.CLAIMED and now_claimed and not was_claimed:
                self._left_to_kernel.add(task)  # claimed by `mv`: the kernel moved the name
            elif moving is View.PENDING and was_claimed and task in state.pending:
                self._left_to_kernel.add(task)  # released by `mv`: the kernel moved it back
            elif was_claimed and task in state.fact:
                self.lingering.add(task)  # ended by its commit: kept, see above
            elif was_claimed:
                stale.append(View.CLAIMED)  # ended, or renewed (its attributes changed)
            elif task not in state.pending:
                stale.append(View.PENDING)
        if task in state.fact:
            if task not in self.committing:
                stale.append(View.DONE)
        elif task in self.aliased or held(inodes.make(Kind.FILE, View.DONE, task)):
            self.aliased.discard(task)  # the fact went (or was never there): drop the name
            stale.append(View.DONE)
        return stale

    def _drop_task_names(self, task: int) -> None:
        """A rename through this mount failed after it changed the task: the kernel kept the
        source name, which may be stale now (see kernel_rename)."""
        tile, phrase = divmod(task, self.space.nphr)
        for v in (View.PENDING, View.CLAIMED):
            self.invalidate(inodes.make(Kind.TILE, v, tile), self.phrase_bytes[phrase])

    def _drop_lingering_rows(self) -> None:
        """Too many claimed/ names kept (tiles left unfinished): drop the rows that hold them
        (live claims there are looked up again)."""
        sp = self.space
        for row in groups(self.lingering, 0, sp.size, sp.row_size, 0):
            self.invalidate(inodes.VIEW_ROOTS[View.CLAIMED], sp.lat.name(row).encode())
        self.lingering.clear()

    def _tile_left_pending(self, tile: int) -> None:
        """The last task of a tile (or row) left pending/: drop the tile's (row's) name. Not
        while our claims remain there: lookups still resolve the directory then (the kernel
        needs it for `mv claimed/REL pending/REL`), so the name is not stale until the last
        claim ends (a claim of the tile's last pending task dropped it, only to look it up
        again)."""
        sp = self.space
        row, col = divmod(tile, sp.lon.n)
        if self.state.tile_reachable(View.PENDING, row, col):
            return
        lo = tile * sp.nphr
        if self.lingering.range_cardinality(lo, lo + sp.nphr):  # finished: its claimed/ too
            self.lingering.remove_range(lo, lo + sp.nphr)
            if self.held(inodes.make(Kind.TILE, View.CLAIMED, tile)):
                self.invalidate(inodes.make(Kind.ROW, View.CLAIMED, row), sp.lon.name(col).encode())
        if self.held(inodes.make(Kind.TILE, View.PENDING, tile)):
            self.invalidate(inodes.make(Kind.ROW, View.PENDING, row), sp.lon.name(col).encode())
        row_ino = inodes.make(Kind.ROW, View.PENDING, row)
        if self.held(row_ino) and not self.state.row_reachable(View.PENDING, row):
            self.invalidate(inodes.VIEW_ROOTS[View.PENDING], sp.lat.name(row).encode())

    def invalidate(self, parent: int, name: bytes) -> None:
        """Drop `name` in directory `parent` from the kernel's cache, soon (notifier.py)."""
        if self.enabled and parent:
            self.notifier.add(parent, name)

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
