"""The fact sets of one node and the one reconcile of the witness files against the index.

Three sets say "this task is done", and this module owns them together so they cannot drift:

    local   tasks with a witness file in STATE/scraped-tiles (persisted by the start-up index)
    remote  tasks known to have a witness in the bucket (the sync engine persists it)
    fact    the state's set (MissionState.fact): local | remote, what the mount shows as done

The commit path, the sync engine and every audit change them through `Facts`; `local` and
`remote` are the same BitMap objects for the node's whole life (other parts hold them).

Reconcile: the files are the truth, the start-up index only makes mounting fast. `walk()` lists
the witness tree; `Drift.between(indexed, found)` says what the index missed (`new`) and what it
holds without a file (`gone`). Everyone uses these two: the daemon's background reconcile after a
mount from the index (journals and indexes what it finds; the daemon then snapshots), `digest` and
`diff` (in memory: they hold no lock, so they write nothing) and fsck's index check (which
rebuilds the index instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.state import MissionState
from fusefs.statedir.index import FactIndex, split_sized, walk_facts
from fusefs.statedir.journal import Journal
from fusefs.statedir.store import LocalStore

log = logging.getLogger("missionfs")


def walk(store: LocalStore, space: TaskSpace) -> tuple[BitMap, list[str]]:
    """(tasks with a witness file, names in the tree outside the plan): blocking, O(files)."""
    return walk_facts(store.scan_tiles(), space)


@dataclass(frozen=True)
class Drift:
    """How an index differs from a walk of the files."""

    new: BitMap  # witness files the index does not hold (a crash, an offline copy)
    gone: BitMap  # indexed tasks without a witness file (deleted while down)

    @classmethod
    def between(cls, indexed: BitMap, found: BitMap) -> Drift:
        return cls(found - indexed, indexed - found)

    @property
    def clean(self) -> bool:
        return not self.new and not self.gone


class Content(NamedTuple):
    """What a commit knows of the witness it made: the SHA-256 it computed while validating,
    and the stat of the linked inode (the key of the digest's hash cache), so the digest never
    reads the file back to hash it; and, for a small witness, its bytes, so its upload does
    not read it back either (sync.py keeps a bounded number of them)."""

    sha256: str
    size: int
    mtime_ns: int
    ino: int
    body: bytes | None = None  # the bytes, when the commit read them whole (small witnesses)


class Facts:
    """Owner of `local`, `remote` and (through the state) `fact`, and of the records a new
    local witness gets: its recovered journal line, its start-up index line, the listeners."""

    def __init__(
        self,
        state: MissionState,
        local: BitMap,
        index: FactIndex,
        journal: Journal,
        remote: BitMap | None = None,
    ) -> None:
        self.state = state
        self.local = local
        self.remote = remote if remote is not None else BitMap()
        self.index = index
        self.journal = journal
        self._listeners: list[Callable[[], None]] = []
        self._content_listeners: list[Callable[[int, Content], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Be called after new local witnesses (the sync engine's upload queue)."""
        self._listeners.append(listener)

    def subscribe_content(self, listener: Callable[[int, Content], None]) -> None:
        """Be told the content hash of a witness this node committed (the digest keeper)."""
        self._content_listeners.append(listener)

    # -- local ------------------------------------------------------------------------------
    def record_local(self, task: int, content: Content | None = None) -> None:
        """A new local witness (its commit line is the committer's): index, state, listeners.
        `content`: what the commit computed; told after the state's listeners, which treat a
        change without it as new content to read from the file."""
        self.local.add(task)
        self._index([self.state.space.rel(task)])
        self.state.add_fact(task)
        if content is not None:
            for listener in self._content_listeners:
                listener(task, content)
        self._tell()

    def learn_local(self, task: int) -> None:
        """A witness was found on disk that the index did not know (crash, offline copy, a
        fetch from the bucket)."""
        if task not in self.local:
            self.journal.append("commit", self.state.space.rel(task), recovered=True)
            self.record_local(task)

    def reconcile(self, found: BitMap, loaded: BitMap, *, write: bool = True) -> Drift:
        """Make `local` and the state agree with `found` (a walk of the files); `loaded` is the
        local set the walk started from. Returns (new, gone).

        write=False (digest, diff: no lock held): only the sets in memory change; no journal,
        no index line, no listener (nothing is uploaded)."""
        new = found - self.local  # a commit made during the walk is not new
        gone = loaded - found
        if new:
            self.local |= new
            if write:
                for t in new:
                    self.journal.append("commit", self.state.space.rel(t), recovered=True)
                self._index([self.state.space.rel(t) for t in new])
            self.state.add_facts(new)
            if write:
                self._tell()
        if gone:
            self.local -= gone
            self.state.remove_facts(gone - self.remote)
        return Drift(new, gone)

    # -- remote -----------------------------------------------------------------------------
    def add_remote(self, tasks: BitMap) -> None:
        """Facts learned from the bucket (the sync engine persists them)."""
        self.remote |= tasks
        self.state.add_facts(tasks)

    def add_remote_in_memory(self, index_dir: Path) -> None:
        """Audits: also count the remote facts a running daemon logged but not yet snapshotted."""
        self.add_remote(self.remote | remote_logs_without_snapshot(index_dir, self.state.space))

    # -- helpers ----------------------------------------------------------------------------
    def _tell(self) -> None:
        for listener in self._listeners:
            listener()

    def _index(self, rels: list[str]) -> None:
        """Start-up index lines: a cache. On a full disk they are skipped (logged), never
        raised: the next start's reconcile walk finds what they miss."""
        try:
            self.index.append(rels)
        except OSError as e:
            log.error("start-up index: %d line(s) not written: %s", len(rels), e)


def remote_logs_without_snapshot(index_dir: Path, space: TaskSpace) -> BitMap:
    """Remote facts a running daemon has logged but not yet snapshotted.

    FactIndex.load() ignores logs when there is no snapshot, and the sync engine writes its
    first `remote.roaring` only at its first periodic save or at unmount; until then a second
    process would not see what the daemon learned from S3. Without a snapshot every log counts.
    """
    ids = BitMap()
    remote = FactIndex(index_dir, space, "remote")
    if (index_dir / remote.snapshot_name).exists():
        return ids
    for log_path in index_dir.glob(f"{remote.name}-*.log"):
        try:
            lines = log_path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
        except OSError:
            continue
        for line in lines[:-1]:  # the last piece is "" or a torn line
            try:
                ids.add(space.parse_rel(split_sized(line)[0]))  # `rel<TAB>size`: the rel
            except OutOfPlan:
                continue
    return ids


def reconcile_in_memory(
    facts: Facts, store: LocalStore, *, with_remote: bool, walked: bool
) -> None:
    """Files are the truth: an audit must not trust the start-up index (a daemon may be down
    or files copied in by hand). Walks the witness tree like the daemon's reconcile, but only
    in memory: this process holds no lock, so it writes neither the index nor the journal.
    `walked`: the tree was just walked to open the workspace (nothing to compare)."""
    if with_remote:
        facts.add_remote_in_memory(store.index_dir)
    if walked:
        return
    found, _ = walk(store, facts.state.space)
    facts.reconcile(found, facts.local.copy(), write=False)
