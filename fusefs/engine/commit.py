"""Turning a finished file into a witness: validate, link without replacing, record.

One path for both ways of completing a task (`mv tmp/X done/REL` and a direct write closed in
done/). Everything runs on the trio thread: the check of a small witness (a page-cache read),
the link, and the fsyncs, which are awaited without blocking the loop (durable.py: Linux AIO,
else a worker thread); then the state update, so a listing made after the committing call
returns never shows the task as pending.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import trio
from pyroaring import BitMap

from fusefs.engine.durable import Fsyncer
from fusefs.engine.facts import Content, Facts
from fusefs.engine.status import StatusBoard
from fusefs.model.state import MissionState
from fusefs.model.witness import Checked, InvalidWitness, check_small, check_stream
from fusefs.statedir.journal import Journal
from fusefs.statedir.ratelog import log_coalesced
from fusefs.statedir.store import INLINE_BYTES, LocalStore

log = logging.getLogger("missionfs")


@dataclass
class CommitRefused(Exception):
    errno: int
    reason: str
    final: bool = True  # False: the writer may still fix it (more writes before the last close)


class Committer:
    """Turns finished files into witnesses; the fact sets and the records a new local witness
    gets (index line, listeners such as the S3 upload queue) belong to `facts` (facts.py)."""

    def __init__(
        self,
        state: MissionState,
        store: LocalStore,
        status: StatusBoard,
        facts: Facts,
        journal: Journal,
        *,
        batched: bool = False,
    ) -> None:
        self.state = state
        self.journal = journal
        self.store = store
        self.status = status
        self.facts = facts
        self.reconciled = False
        self.batched = batched  # durability "batched": directory fsyncs grouped by the daemon
        self._in_flight: set[int] = set()
        self.fsyncer = Fsyncer()  # closed with the workspace
        self._making: dict[str, trio.Event] = {}  # new tile dirs being made durable (_new_tile)
        self._parents_due: dict[str, list[str]] = {}  # their parents left unsynced by an error

    @property
    def local(self) -> BitMap:
        """The local witnesses (facts.local: the one set, shared with the sync engine)."""
        return self.facts.local

    async def commit(
        self, path: Path, task: int, *, synced: bool, source: str, final: bool = True
    ) -> int:
        """Commit `path` as the witness of `task`; returns its data row count.

        With final=False (a close that may not be the last one) an invalid CSV is not reported:
        the writer may still complete it.
        """
        rel = self.state.space.rel(task)
        where = f"done/{rel}"
        if task not in self.state.intent:
            raise self._refuse(errno.EACCES, where, "not a task of the mission plan")
        if task in self.state.fact or task in self._in_flight:
            raise self._refuse(errno.EEXIST, where, "a witness exists and is immutable")
        self._in_flight.add(task)
        try:
            rows, content = await self._make_witness(path, rel, synced)
        except InvalidWitness as e:
            reason = f"not a well-formed CSV: {e}"
            if not final:
                raise CommitRefused(errno.EBADMSG, reason, final=False) from None
            raise self._refuse(errno.EBADMSG, where, reason) from None
        except FileExistsError:
            self.facts.learn_local(task)
            raise self._refuse(errno.EEXIST, where, "a witness exists and is immutable") from None
        finally:
            self._in_flight.discard(task)
        # The witness is durable: now its journal line, then its start-up index line (on a full
        # disk either may be missing: history and a cache; the commit stands).
        self.journal.append(
            "commit", rel, sha256=content.sha256, size=content.size, rows=rows, source=source
        )
        self.facts.record_local(task, content)
        self.status.committed(source)
        return rows

    async def _make_witness(self, path: Path, rel: str, synced: bool) -> tuple[int, Content]:
        """Check `path` and make it the witness of `rel`, durably; returns its rows and content.

        The mount refuses writes to the file from the start of the commit (MissionFS freezes
        its handles), so the bytes checked and hashed here are the bytes linked: same inode, and
        a link changes neither its size nor its mtime (the digest's hash cache keys on both).
        A witness of up to INLINE_BYTES (the usual one) is read and checked on the event loop,
        like any small read of a page-cached file (a larger one streamed, in a worker thread)."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there by hand: no wait
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a file", str(path))
            checked = check_small(fd, st.st_size, INLINE_BYTES)
            if checked is None:
                checked = await trio.to_thread.run_sync(_check_large, fd)
            with trio.CancelScope(shield=True):  # linked: made durable and recorded, whatever
                await self._link_durably(-1 if synced else fd, str(path), rel)
        finally:
            os.close(fd)
        try:  # the witness stands: a staged name left over is dropped at the next start
            os.unlink(path)
        except OSError as e:
            log.warning("staged name of %s not removed (%s): dropped at the next start", rel, e)
        content = Content(checked.sha256, checked.size, st.st_mtime_ns, st.st_ino, checked.body)
        return checked.rows, content

    async def _link_durably(self, fd: int, path: str, rel: str) -> None:
        """fsync the file `fd` (-1: the writer did), link it as the witness, fsync the
        directory (durability "batched": later, by the daemon). The fsyncs are awaited, not run
        in a worker thread (durable.py); the link, like the open before it, is inline."""
        d = self.store.tile_dir(rel)
        if not self.store.dir_known(d):
            await self._new_tile(d)
        if fd >= 0:
            await self.fsyncer.fsync(fd)
        if self.batched:
            self.store.link(path, rel)
            self.store.dirty_dirs.add(Path(d))
            return
        dfd = self.store.dir_fds.acquire(d)  # before the link: nothing to take back if it fails
        try:
            dst = self.store.link(path, rel)
        except BaseException:
            self.store.dir_fds.release(dfd)
            raise
        try:
            await self.fsyncer.fsync(dfd)
        except OSError:
            # Not durable, and the caller is told the commit failed: take the link back (it
            # is ours, just made) so the task stays pending and the staged file is kept.
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        finally:
            self.store.dir_fds.release(dfd)

    async def _new_tile(self, d: str) -> None:
        """Make tile directory `d` durable: mkdir (inline), fsync of each new one's parent. One
        commit does it while the others into the same tile wait (they must not link into it
        before it is durable); parents whose fsync failed are fsync'd by the next commit."""
        while (making := self._making.get(d)) is not None:
            await making.wait()
        if self.store.dir_known(d):
            return
        self._making[d] = trio.Event()
        try:
            parents = self._parents_due.pop(d, None) or self.store.make_dir(d)
            for i, parent in enumerate(parents):
                try:
                    await self._fsync_dir(parent)
                except BaseException:
                    self._parents_due[d] = parents[i:]
                    raise
            self.store.known_dir(d)
        finally:
            self._making.pop(d).set()

    async def _fsync_dir(self, d: str) -> None:
        fd = self.store.dir_fds.acquire(d)
        try:
            await self.fsyncer.fsync(fd)
        finally:
            self.store.dir_fds.release(fd)

    def _refuse(self, code: int, where: str, reason: str, *, final: bool = True) -> CommitRefused:
        log_coalesced(log, logging.WARNING, f"refused commit of {where}: {reason}")
        self.status.refused(where, reason)  # journalled there, with every other refusal
        return CommitRefused(code, reason, final)

    def learn_local_fact(self, task: int) -> None:
        """A witness found on disk that the index did not know (see Facts.learn_local)."""
        self.facts.learn_local(task)


def _check_large(fd: int) -> Checked:
    """In a worker thread: check_stream over `fd` from its start (constant memory)."""
    with open(fd, "rb", closefd=False) as f:
        return check_stream(f)
