"""Turning a finished file into a witness: validate, link without replacing, record.

One path for both ways of completing a task (`mv tmp/X done/REL` and a direct write closed in
done/). The blocking part (read for validation, fsync, link, fsync of the directory) runs in a
worker thread; the state update happens on the trio thread right after, so a listing made after
the committing call returns never shows the task as pending.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio
from pyroaring import BitMap

from fusefs.engine.facts import Content, Facts
from fusefs.engine.status import StatusBoard
from fusefs.model.state import MissionState
from fusefs.model.witness import InvalidWitness, check_stream
from fusefs.statedir.journal import Journal
from fusefs.statedir.ratelog import log_coalesced
from fusefs.statedir.store import LocalStore

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
            if self.batched and synced and self.store.commit_is_quick(path, rel):
                # No fsync left to do (the file was fsync'd, the directory's fsync is batched):
                # a few small syscalls, cheaper inline than a hop to a worker thread and back.
                rows, content = self._commit_blocking(path, rel, False)
            else:
                rows, content = await trio.to_thread.run_sync(
                    self._commit_blocking, path, rel, not synced
                )
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

    def _commit_blocking(self, path: Path, rel: str, fsync_file: bool) -> tuple[int, Content]:
        # Validated and hashed in one streamed pass (constant memory, whatever the size). The
        # mount refuses writes to the file from the start of the commit (MissionFS freezes its
        # handles), so the bytes hashed here are the bytes linked below: same inode, and a
        # link changes neither its size nor its mtime (the digest's hash cache keys on both).
        with open(path, "rb") as f:
            checked = check_stream(f)
            st = os.fstat(f.fileno())
        self.store.commit(path, rel, fsync_file=fsync_file, sync_dir=not self.batched)
        return checked.rows, Content(checked.sha256, checked.size, st.st_mtime_ns, st.st_ino)

    def _refuse(self, code: int, where: str, reason: str, *, final: bool = True) -> CommitRefused:
        log_coalesced(log, logging.WARNING, f"refused commit of {where}: {reason}")
        self.status.refused(where, reason)  # journalled there, with every other refusal
        return CommitRefused(code, reason, final)

    def learn_local_fact(self, task: int) -> None:
        """A witness found on disk that the index did not know (see Facts.learn_local)."""
        self.facts.learn_local(task)
