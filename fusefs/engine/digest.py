"""Merkle summary of the Fact tree: one digest per tile, per latitude row and for the mission.

Why: two nodes (or a node and the bucket) that should hold the same facts can prove it by
comparing one hex string, and when they do not, `missionfs diff` finds the differing tasks by
descending only into rows and tiles whose digests differ.

Definitions (names, never task ids, so the digest does not depend on the id layout):

    content hash   sha256 of the witness bytes (hex)
    tile digest    sha256 over the sorted lines "NAME\\0SHA\\n" of the tile's witnesses
    row digest     fold("row", n, sum of H("LON\\0TILE_DIGEST\\n") over its n non-empty tiles)
    mission root   fold("mission", n, sum of H("LAT\\0ROW_DIGEST\\n") over its n non-empty rows)

where H(x) = sha256(x) read as a 256-bit integer, sums are mod 2**256 and
fold(kind, n, acc) = sha256("KIND\\0n\\0ACC as 64 hex digits\\n") (hex). A tile has at most one
witness per phrase, so sorting it is cheap; rows and the mission use the order-independent sum so
that a change costs O(depth): recompute the tile (O(phrases)), subtract its old term from its row
and add the new one, then the same for the row in the mission: a few sha256 calls, whatever the
size of the mission. The sum is a set hash for cooperating nodes, not a defence against someone
who crafts witnesses to collide (that would need Wagner-style attacks on the 256-bit sum).

Where content hashes come from:
- A witness present in STATE/scraped-tiles is hashed from its bytes. The hashes are cached in
  STATE/index/hashes.sqlite keyed by relative path, with (size, mtime_ns, inode): a restart or a
  CLI run only stats the files, and a file that changed (e.g. a conflict winner replacing ours) is
  hashed again. A witness this daemon commits is never read back: the commit hashed it while
  validating it and hands over that hash with the stat of the linked inode (Facts'
  content listeners), and the keeper writes the cache row.
- A remote-only fact (known from S3, not downloaded) uses the object's `sha256` metadata (one HEAD
  per witness; objects written by other tools without it are read and hashed), cached for good in
  the same database: witnesses in S3 are create-once. Since the metadata is the SHA-256 of the
  uploaded bytes, a node that only knows the remote witness computes the same tile digest as a
  node holding the file. The writer's manifest line carries that hash too, so a fact learned
  from a manifest costs nothing; one learned from a full listing costs one HEAD, once per state
  dir.

The daemon keeps a `DigestKeeper` subscribed to the state: every changed task marks its tile
dirty; a trio loop, SETTLE_SECONDS after a change, recomputes a batch of dirty tiles (up to
BATCH_TILES) and applies the new tile digests on the trio thread. `status` shows the root and
whether it is current. At start the whole Fact tree is dirty (cache lookups and stats, O(facts)
once: files are the truth at start). After that the content hashes of the witnesses verified
since start stay in memory for the most recently changed tiles (at most MEMO_WITNESSES of
them), so a commit into a tile costs neither a read nor a stat of its witnesses: only the
hashes not in memory are verified (stat, cache, file or S3), in a worker thread that also
writes the commits' cache rows. Every state change of a fact other than a commit's (a conflict
winner replacing our witness: the sync engine's `notify`; a fact learned or lost) drops its
hash from memory, so that witness alone is verified again. A witness changed behind the
daemon's back (edited by hand in STATE) is not seen until the next start or `missionfs digest`.
Tiles whose hashes cannot be had (S3 unreachable) keep their previous digest and are retried
every RETRY_SECONDS; status then says "incomplete". Memory: one hex digest per non-empty tile,
one integer per non-empty row, and the bounded memory of content hashes (5-15 MB).

Commands: `missionfs digest MISSION.toml [--state DIR] [--depth mission|row|tile] [--json]`
computes the tree from a state dir without a mount and without its lock (cache + stats + HEADs
for uncached remote-only facts). Files are the truth, so it walks the witness tree in memory
(never writing the index or journal a running daemon owns) and also reads remote-fact logs that
the daemon has not snapshotted yet. Output: "DIGEST  PATH" lines, PATH "." for the root;
`missionfs diff A B [--mission MISSION.toml]` compares two state dirs, or a state dir and the
mission's bucket (`s3` or `s3://BUCKET/PREFIX`; one LIST of the witness tree plus one HEAD per
witness, never cached, since that is what an audit is for). It prints one line per differing
task: "only-in-a REL", "only-in-b REL" or "differs REL" (--json for an object); exit status 1
when the roots differ, 0 when they are equal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from pyroaring import BitMap

from fusefs.engine.facts import Content
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.errors import S3ConfigError, S3Unavailable
from fusefs.model.merkle import DigestTree, build_tree, tile_digest
from fusefs.model.state import MissionState
from fusefs.statedir.store import LocalStore

if TYPE_CHECKING:
    from fusefs.objects.s3store import S3Store

log = logging.getLogger("missionfs")

BATCH_TILES = 256
RETRY_SECONDS = 5.0
SETTLE_SECONDS = 0.5  # commits arriving together are hashed together, off the commit path
HEAD_THREADS = 16
MEMO_WITNESSES = 32768  # content hashes in memory: 5 MB (tiles of 10) to 15 MB (tiles of 1)


# -- content hashes -----------------------------------------------------------------------------
class HashCache:
    """STATE/index/hashes.sqlite: local hashes with the stat they were taken at, remote hashes.

    Opened on first use (so `status` without a mount creates nothing); shared by worker threads.
    Any database error disables the cache for this process: hashes are then only recomputed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._broken = False

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                # A cache (rebuilt from the files if lost): no fsync per write, which would
                # compete with the fsyncs of commits on the same disk.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS local (rel TEXT PRIMARY KEY, sha TEXT NOT NULL,"
                    " size INTEGER, mtime_ns INTEGER, ino INTEGER) WITHOUT ROWID"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS remote (rel TEXT PRIMARY KEY, sha TEXT NOT NULL)"
                    " WITHOUT ROWID"
                )
                db.commit()
                self._db = db
            except (sqlite3.Error, OSError) as e:
                log.warning("hash cache %s unusable (%s); hashing without it", self.path, e)
                self._broken = True
        return self._db

    def _select(self, table: str, cols: str, rels: list[str]) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        with self._lock:
            db = self._conn()
            if db is None:
                return out
            try:
                for i in range(0, len(rels), 500):
                    chunk = rels[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    q = f"SELECT rel, {cols} FROM {table} WHERE rel IN ({marks})"
                    for row in db.execute(q, chunk):
                        out[row[0]] = tuple(row[1:])
            except sqlite3.Error as e:
                log.warning("hash cache read failed (%s)", e)
        return out

    def local(self, rels: list[str]) -> dict[str, tuple[str, int, int, int]]:
        got = self._select("local", "sha, size, mtime_ns, ino", rels)
        return {k: (v[0], v[1], v[2], v[3]) for k, v in got.items()}

    def remote(self, rels: list[str]) -> dict[str, str]:
        return {k: v[0] for k, v in self._select("remote", "sha", rels).items()}

    def put(
        self, local: list[tuple[str, str, int, int, int]], remote: list[tuple[str, str]]
    ) -> None:
        if not local and not remote:
            return
        with self._lock:
            db = self._conn()
            if db is None:
                return
            try:
                db.executemany("INSERT OR REPLACE INTO local VALUES (?, ?, ?, ?, ?)", local)
                db.executemany("INSERT OR REPLACE INTO remote VALUES (?, ?)", remote)
                db.commit()
            except sqlite3.Error as e:
                log.warning("hash cache write failed (%s)", e)

    def put_remote(self, remote: list[tuple[str, str]]) -> None:
        """Hashes of remote witnesses learned without a HEAD (from the writers' manifests)."""
        self.put([], remote)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Hasher:
    """Content hashes of facts: local file (cached by stat), else the S3 object's sha256."""

    def __init__(
        self,
        space: TaskSpace,
        store: LocalStore,
        s3: S3Store | None,
        cache: HashCache | None = None,
    ) -> None:
        self.space = space
        self.store = store
        self.s3 = s3
        self.cache = cache if cache is not None else HashCache(store.layout.hash_cache)
        self.heads = 0  # HEADs of remote witnesses whose hash no manifest or cache gave

    def tile_files(
        self, jobs: Mapping[int, list[int]]
    ) -> tuple[dict[int, dict[str, str]], set[int]]:
        """{tile: [fact task ids]} -> ({tile: {name: sha}}, tiles whose hashes are unavailable).

        Blocking (file reads, sqlite, HEADs in parallel): call it from a worker thread.
        """
        shas = self.shas([t for tasks in jobs.values() for t in tasks])
        files: dict[int, dict[str, str]] = {}
        failed: set[int] = set()
        for tile, tasks in jobs.items():
            if all(t in shas for t in tasks):
                files[tile] = {self.space.phrase_names[t % self.space.nphr]: shas[t] for t in tasks}
            else:
                failed.add(tile)
        return files, failed

    def shas(
        self, tasks: list[int], given: Iterable[tuple[str, str, int, int, int]] = ()
    ) -> dict[int, str]:
        """{task: content sha} of the fact tasks whose hash could be had (a missing one: S3
        unavailable or the file unreadable). `given`: cache rows (rel, sha, size, mtime_ns,
        ino) of witnesses hashed elsewhere (commits), written with the new ones.

        Blocking (file reads, sqlite, HEADs in parallel): call it from a worker thread.
        """
        rels = {t: self.space.rel(t) for t in tasks}
        cached = self.cache.local(list(rels.values())) if rels else {}
        shas: dict[int, str] = {}
        new_local: list[tuple[str, str, int, int, int]] = list(given)
        absent: list[int] = []
        for task, rel in rels.items():
            path = self.store.witness_path(rel)
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                absent.append(task)
                continue
            except OSError as e:
                log.warning("digest: cannot stat %s (%s)", path, e)
                continue
            c = cached.get(rel)
            if c is not None and c[1:] == (st.st_size, st.st_mtime_ns, st.st_ino):
                shas[task] = c[0]
                continue
            try:
                sha, size, mtime_ns, ino = _hash_file(path)
            except FileNotFoundError:
                absent.append(task)
                continue
            except OSError as e:
                log.warning("digest: cannot read %s (%s)", path, e)
                continue
            shas[task] = sha
            new_local.append((rel, sha, size, mtime_ns, ino))
        new_remote: list[tuple[str, str]] = []
        if absent:
            known = self.cache.remote([rels[t] for t in absent])
            heads = []
            for t in absent:
                if rels[t] in known:
                    shas[t] = known[rels[t]]
                else:
                    heads.append(t)
            if heads and self.s3 is not None:
                with ThreadPoolExecutor(min(HEAD_THREADS, len(heads))) as ex:
                    got = ex.map(self._remote_sha, [rels[t] for t in heads])
                    for t, remote_sha in zip(heads, got, strict=True):
                        if remote_sha is not None:
                            shas[t] = remote_sha
                            new_remote.append((rels[t], remote_sha))
        self.cache.put(new_local, new_remote)
        return shas

    def _remote_sha(self, rel: str) -> str | None:
        assert self.s3 is not None
        self.heads += 1
        try:
            return self.s3.witness_sha(rel)
        except (S3Unavailable, S3ConfigError) as e:
            log.info("digest: no hash for remote witness %s yet (%s)", rel, e)
            return None


def _hash_file(path: Path) -> tuple[str, int, int, int]:
    """sha256 of the file and the stat of the very inode that was read."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    return sha, st.st_size, st.st_mtime_ns, st.st_ino


def _bulk_tiles(tasks: BitMap, nphr: int) -> BitMap:
    """The tiles holding `tasks`, without a Python step per task (10M facts learned from a
    checkpoint took 1.4 s of the trio thread one by one; ids are ascending, so are tiles)."""
    tiles = np.frombuffer(tasks.to_array(), dtype=np.uint32) // np.uint32(nphr)
    if not len(tiles):
        return BitMap()
    first = np.empty(len(tiles), dtype=bool)
    first[0] = True
    np.not_equal(tiles[1:], tiles[:-1], out=first[1:])
    return BitMap(array("I", tiles[first].tobytes()))


# -- the incremental keeper ---------------------------------------------------------------------
class DigestKeeper:
    """Keeps a DigestTree equal to the Fact tree as it changes (commits, remote facts, conflicts).

    The content hashes of recently verified tiles stay in memory (`_memo`, bounded by
    MEMO_WITNESSES): a commit hands over the hash it computed (`given`), so recomputing its tile
    reads no file and stats none of the tile's other witnesses. Any other change of a fact
    (a conflict winner replacing our witness, a fact learned or lost) drops that witness from
    the memo: it is verified again from its file, the cache or S3.
    """

    def __init__(self, state: MissionState, hasher: Hasher) -> None:
        self.state = state
        self.space = state.space
        self.hasher = hasher
        self.tree = DigestTree(self.space)
        self.known = BitMap()  # the facts the tree reflects
        self.dirty = BitMap()  # tile ids to recompute (a bitmap: millions at once, in bulk)
        self.failed: set[int] = set()  # tiles whose hashes were unavailable; retried
        self.inflight = 0
        self.started = False
        self.updates = 0
        self._wake = trio.Event()
        self._memo: OrderedDict[int, dict[int, str]] = OrderedDict()  # tile -> {phrase: sha}
        self._memo_size = 0  # witnesses in _memo
        self._given: list[tuple[str, str, int, int, int]] = []  # commits' rows for the cache
        self._touched: BitMap | None = None  # tiles changed while a batch is being hashed

    @classmethod
    def for_workspace(
        cls,
        state: MissionState,
        store: LocalStore,
        s3: S3Store | None,
        cache: HashCache | None = None,
    ) -> DigestKeeper:
        keeper = cls(state, Hasher(state.space, store, s3, cache))
        state.subscribe(keeper.changed)
        return keeper

    def changed(self, tasks: Iterable[int]) -> None:
        """State listener: a task changed view or content; its tile is recomputed if a fact,
        and its remembered hash is dropped (new content, unless `given` tells it next)."""
        fact, known, nphr = self.state.fact, self.known, self.space.nphr
        before = len(self.dirty)
        if isinstance(tasks, BitMap) and len(tasks) > 256:  # in bulk (a checkpoint's facts)
            tiles = _bulk_tiles((tasks & fact) | (tasks & known), nphr)
            self.dirty |= tiles
            if self._touched is not None:
                self._touched |= tiles
            for tile in [t for t in self._memo if t in tiles]:
                self._memo_size -= len(self._memo.pop(tile))
        else:
            for t in tasks:
                if t in fact or t in known:
                    tile = t // nphr
                    self.dirty.add(tile)
                    if self._touched is not None:
                        self._touched.add(tile)
                    memo = self._memo.get(tile)
                    if memo is not None and memo.pop(t % nphr, None) is not None:
                        self._memo_size -= 1
        if len(self.dirty) != before:
            self._wake.set()

    def given(self, task: int, content: Content) -> None:
        """Facts listener: the hash a commit computed of the witness it just linked (told
        after `changed`); remembered for its tile and written to the cache with the next batch."""
        tile, phrase = divmod(task, self.space.nphr)
        memo = self._memo.get(tile)
        if memo is None:
            memo = self._memo[tile] = {}
        else:
            self._memo.move_to_end(tile)
        if phrase not in memo:
            self._memo_size += 1
        memo[phrase] = content.sha256
        rel = self.space.rel(task)
        self._given.append((rel, content.sha256, content.size, content.mtime_ns, content.ino))
        self._trim()

    def _remember(self, tile: int, shas: dict[int, str]) -> None:
        """The verified {phrase: sha} of all of a tile's facts, most recently used last."""
        old = self._memo.pop(tile, None)
        self._memo_size -= len(old) if old is not None else 0
        if shas:
            self._memo[tile] = shas
            self._memo_size += len(shas)
            self._trim()

    def _trim(self) -> None:
        while self._memo_size > MEMO_WITNESSES and len(self._memo) > 1:
            self._memo_size -= len(self._memo.popitem(last=False)[1])

    def _tile_facts(self, tile: int) -> list[int]:
        lo = tile * self.space.nphr
        hi = lo + self.space.nphr
        out = []
        for t in self.state.fact.iter_equal_or_larger(lo):
            if t >= hi:
                break
            out.append(t)
        return out

    def _take(self) -> tuple[dict[int, list[int]], list[int]]:
        """A batch of dirty tiles with their facts, and the facts whose hash is not in memory."""
        nphr = self.space.nphr
        batch = [self.dirty.pop() for _ in range(min(BATCH_TILES, len(self.dirty)))]
        jobs = {tile: self._tile_facts(tile) for tile in batch}
        unknown = []
        for tile, tasks in jobs.items():
            memo = self._memo.get(tile)
            if memo is None:
                unknown += tasks
            else:
                unknown += [t for t in tasks if t % nphr not in memo]
        return jobs, unknown

    def _apply(
        self, jobs: Mapping[int, list[int]], shas: Mapping[int, str], touched: BitMap | None
    ) -> None:
        """Set the digests of the batch's tiles from memory and `shas` (what was verified)."""
        nphr, names = self.space.nphr, self.space.phrase_names
        for tile, tasks in jobs.items():
            if touched is not None and tile in touched:
                continue  # changed while hashed: dirty again, redone by the next batch
            memo = self._memo.get(tile, {})
            got: dict[int, str] = {}
            for t in tasks:
                sha = memo.get(t % nphr) or shas.get(t)
                if sha is None:
                    break
                got[t % nphr] = sha
            else:
                self.failed.discard(tile)
                self._remember(tile, got)
                tf = {names[p]: sha for p, sha in got.items()}
                if self.tree.set_tile(tile, tile_digest(tf) if tf else None):
                    self.updates += 1
                self.known.remove_range(tile * nphr, (tile + 1) * nphr)
                self.known.update(tasks)
                continue
            self.failed.add(tile)

    def build(self) -> DigestTree:
        """Compute the whole tree now, blocking (the CLI). Raises S3Unavailable if remote-only
        facts could not be hashed."""
        self.started = True
        self.dirty |= _bulk_tiles(self.state.fact, self.space.nphr)
        while self.dirty:
            jobs, unknown = self._take()
            self._apply(jobs, self.hasher.shas(unknown) if unknown else {}, None)
        if self.failed:
            n = sum(len(self._tile_facts(t)) for t in self.failed)
            raise S3Unavailable(
                f"{len(self.failed)} tile(s) ({n} witnesses) could not be hashed: "
                "remote-only witnesses need S3 (check --endpoint-url and the network)"
            )
        return self.tree

    async def run(self) -> None:
        """The daemon's loop; never takes the mount down (errors are logged and retried)."""
        self.started = True
        fact = self.state.fact.copy()
        self.dirty |= await trio.to_thread.run_sync(_bulk_tiles, fact, self.space.nphr)
        while True:
            if not self.dirty:
                self._wake = trio.Event()
                if self.failed:
                    with trio.move_on_after(RETRY_SECONDS):
                        await self._wake.wait()
                    self.dirty |= BitMap(self.failed)
                    self.failed.clear()
                else:
                    await self._wake.wait()
                continue
            await trio.sleep(SETTLE_SECONDS)
            await self.update()

    async def update(self) -> None:
        """Recompute one batch of dirty tiles: a worker thread verifies the hashes not in
        memory and writes the commits' hashes to the cache; none to do, no thread at all."""
        jobs, unknown = self._take()
        given, self._given = self._given, []
        shas: dict[int, str] = {}
        touched = None
        if unknown or given:
            self.inflight = len(jobs)
            self._touched = BitMap()
            try:
                shas = await trio.to_thread.run_sync(
                    self.hasher.shas, unknown, given, abandon_on_cancel=True
                )
            except Exception:
                log.exception("digest: hashing %d tile(s) failed; will retry", len(jobs))
            finally:
                self.inflight = 0
                touched, self._touched = self._touched, None
        self._apply(jobs, shas, touched)

    def info(self) -> dict[str, Any]:
        """The `digest` field of the status file."""
        if not self.started:
            return {"state": "not computed without a mount (run: missionfs digest MISSION)"}
        pending = len(self.dirty) + self.inflight
        rows, tiles = self.tree.counts()
        if pending:
            st = "updating"
        elif self.failed:
            st = "incomplete"
        else:
            st = "current"
        return {
            "root": self.tree.root(),
            "state": st,
            "facts": len(self.known),
            "rows": rows,
            "tiles": tiles,
            "pending_tiles": pending,
            "unhashed_tiles": len(self.failed),
            "updates": self.updates,
            "remote_heads": self.hasher.heads,
        }


def s3_of(ws: Any) -> S3Store | None:
    return ws.sync.s3 if ws.sync is not None else None


@dataclass
class StateSide:
    label: str
    keeper: DigestKeeper
    tree: DigestTree

    def files(self, tile: int) -> dict[str, str]:
        files, failed = self.keeper.hasher.tile_files({tile: self.keeper._tile_facts(tile)})
        if failed:
            raise S3Unavailable(f"{self.label}: tile {tile} could not be hashed")
        return files.get(tile, {})


@dataclass
class BucketSide:
    label: str
    tree: DigestTree
    by_tile: dict[int, dict[str, str]]

    def files(self, tile: int) -> dict[str, str]:
        return self.by_tile.get(tile, {})


def bucket_side(s3: S3Store, space: TaskSpace, label: str) -> BucketSide:
    """LIST the witness tree and HEAD every witness (in parallel): the bucket's Fact tree."""
    tasks: dict[int, str] = {}
    for rel in s3.scan():
        try:
            tasks[space.parse_rel(rel)] = rel
        except OutOfPlan:
            continue
    shas: dict[int, str] = {}
    if tasks:
        with ThreadPoolExecutor(HEAD_THREADS) as ex:
            for t, sha in zip(tasks, ex.map(s3.witness_sha, tasks.values()), strict=True):
                if sha is not None:  # deleted between LIST and HEAD: not a fact any more
                    shas[t] = sha
    by_tile: dict[int, dict[str, str]] = {}
    for t, sha in shas.items():
        by_tile.setdefault(t // space.nphr, {})[space.phrase_names[t % space.nphr]] = sha
    return BucketSide(label, build_tree(space, shas), by_tile)
