"""Durable task sets: a roaring snapshot plus append-only logs of additions.

Used for the start-up index of the local Fact tree ("facts") and, with S3, for what is known to
be in the bucket ("remote") and which local witnesses are confirmed there ("synced"). The
witness files are the truth; these sets only make mounting fast. Layout in STATE/index/:

    {name}.roaring    header line (JSON: universe fingerprint, log generation) + bitmap
    {name}-{g}.log    relative paths added since snapshot generation g, one a line
    {name}-{g}.sizes  (remote only) the sizes of the snapshot's tasks, see below

Loading = snapshot + every log of generation >= the snapshot's (about a millisecond for 1M
facts). A witness linked just before a `kill -9` but not yet logged is found by the reconcile
walk that the daemon runs in the background after mounting (and by the claim-time check).

The remote set also keeps the sizes of remote-only witnesses (what `stat` shows before the
first read, sizes.py), so that a restart of any kind shows them at once, without asking S3:
a log line may be `rel<TAB>size` (readers take the rel and may ignore the size; a rel ends in
`.csv`, so the suffix is unambiguous), and with each snapshot goes `{name}-{g}.sizes`: a JSON
header line (fingerprint, generation, count, sizes of 4 GiB and more) then one little-endian
uint32 per task of the snapshot bitmap in bitmap order, 0 for "not known" (4 bytes a remote
fact: 40 MB for 10M). It is written before the snapshot and old ones are deleted after it, so
a crash at any point leaves a snapshot with its own sizes file. A state dir written before
sizes were kept has none: those sizes stay unknown (the sync engine lists the bucket for them).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.sizes import RemoteSizes
from fusefs.statedir.store import fsync_dir


def split_sized(line: str) -> tuple[str, int | None]:
    """A log line without its newline: (rel, size), size None when the line has none."""
    rel, tab, size = line.rpartition("\t")
    if tab and size.isascii() and size.isdigit():
        return rel, int(size)
    return line, None


class FactIndex:
    def __init__(self, directory: Path, space: TaskSpace, name: str = "facts") -> None:
        self.dir = directory
        self.space = space
        self.name = name
        self.snapshot_name = f"{name}.roaring"
        self.generation = 0
        self._log: IO[str] | None = None
        self.appended = 0
        # Snapshots may be written by two worker threads at once (the daemon's periodic save
        # and a checkpoint load, remotefacts.py): one at a time, and never an older generation
        # over a newer one (it would drop the logs the newer one replaced).
        self._writing = threading.Lock()
        self._written = -1  # the newest generation snapshotted by this process
        # Log lines may be appended by the trio thread and a worker thread at once (a
        # segment's thousands of remote facts, remotefacts.py): each append is one write of
        # whole lines into one generation's log, never cut by a rotate().
        self._appending = threading.Lock()

    # -- loading -------------------------------------------------------------------------------
    def load(self, sizes: RemoteSizes | None = None) -> BitMap | None:
        """The indexed facts, or None if there is no usable snapshot (walk the tree instead).

        With `sizes`, also restores the sizes kept with them (the snapshot's sizes file, then
        the `rel<TAB>size` lines of the logs, later ones winning)."""
        try:
            raw = (self.dir / self.snapshot_name).read_bytes()
            header, _, body = raw.partition(b"\n")
            meta = json.loads(header)
            if meta.get("fingerprint") != self.space.fingerprint():
                return None
            facts = BitMap.deserialize(body)
            self.generation = int(meta["generation"])
        except (OSError, ValueError, KeyError):
            return None
        if sizes is not None:
            self._load_sizes(facts, sizes)
        for gen in self._log_generations():
            if gen >= self.generation:
                facts |= self._read_log(gen, sizes)
        return facts

    def _sizes_path(self, gen: int) -> Path:
        return self.dir / f"{self.name}-{gen}.sizes"

    def _load_sizes(self, facts: BitMap, sizes: RemoteSizes) -> None:
        """The snapshot's sizes file, if it has one that matches it (else nothing is known)."""
        try:
            raw = self._sizes_path(self.generation).read_bytes()
            header, _, body = raw.partition(b"\n")
            meta = json.loads(header)
            if (
                meta.get("fingerprint") != self.space.fingerprint()
                or int(meta["generation"]) != self.generation
                or int(meta["count"]) != len(facts)
                or len(body) != 4 * len(facts)
                or (facts and facts.max() >= self.space.size)
            ):
                return
            values = array("I", body)
            huge = {int(t): int(n) for t, n in meta.get("huge", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        if sys.byteorder != "little":
            values.byteswap()
        sizes.restore(facts.to_array(), values)
        for task, size in huge.items():
            if task in facts:
                sizes.set(task, size)

    def _log_generations(self) -> list[int]:
        gens = []
        for name in os.listdir(self.dir):
            if name.startswith(f"{self.name}-") and name.endswith(".log"):
                try:
                    gens.append(int(name[len(self.name) + 1 : -len(".log")]))
                except ValueError:
                    continue
        return sorted(gens)

    def _read_log(self, gen: int, sizes: RemoteSizes | None = None) -> BitMap:
        ids = BitMap()
        with open(
            self.dir / f"{self.name}-{gen}.log", encoding="utf-8", errors="surrogateescape"
        ) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn last line of a crash
                rel, size = split_sized(line[:-1])
                try:
                    task = self.space.parse_rel(rel)
                except OutOfPlan:
                    continue
                ids.add(task)
                if size is not None and sizes is not None:
                    sizes.set(task, size)
        return ids

    # -- writing -------------------------------------------------------------------------------
    def append(self, rels: Iterable[str]) -> None:
        """Record commits (no fsync: a lost line is recovered by the reconcile walk); a rel
        may carry its size as `rel<TAB>size` (remote facts). One write for all of them."""
        lines = [rel + "\n" for rel in rels]
        if not lines:
            return
        text = "".join(lines)
        with self._appending:
            if self._log is None:
                self._log = open(  # noqa: SIM115 - kept open across appends
                    self.dir / f"{self.name}-{self.generation}.log",
                    "a",
                    encoding="utf-8",
                    errors="surrogateescape",
                )
            self._log.write(text)
            self._log.flush()
            self.appended += len(lines)

    def rotate(self) -> int:
        """Start a new log generation; returns it. Call, then snapshot() the facts as of now."""
        with self._appending:
            if self._log is not None:
                self._log.close()
                self._log = None
            self.generation += 1
            self.appended = 0
            return self.generation

    def snapshot(self, facts: BitMap, generation: int, sizes: RemoteSizes | None = None) -> None:
        """Atomically write `facts` as the state at the start of log `generation` (blocking);
        with `sizes` (a copy nobody changes meanwhile), their sizes file first. A generation
        older than one already written by this process is skipped (the newer one holds it)."""
        with self._writing:
            if generation < self._written:
                return
            self._snapshot(facts, generation, sizes)
            self._written = generation

    def _snapshot(self, facts: BitMap, generation: int, sizes: RemoteSizes | None) -> None:
        facts = facts.copy()
        facts.run_optimize()
        if sizes is not None:
            self._write_sizes(facts, generation, sizes)
        header = json.dumps({"fingerprint": self.space.fingerprint(), "generation": generation})
        tmp = self.dir / (self.snapshot_name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(header.encode() + b"\n")
            f.write(facts.serialize())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / self.snapshot_name)
        fsync_dir(self.dir)
        for gen in self._log_generations():
            if gen < generation:
                os.unlink(self.dir / f"{self.name}-{gen}.log")
        keep = self._sizes_path(generation).name
        for name in os.listdir(self.dir):  # sizes files of older snapshots
            if name.startswith(f"{self.name}-") and name.endswith(".sizes") and name != keep:
                os.unlink(self.dir / name)

    def _write_sizes(self, facts: BitMap, generation: int, sizes: RemoteSizes) -> None:
        values, huge = sizes.gather(facts)
        if sys.byteorder != "little":
            values.byteswap()
        header = {
            "fingerprint": self.space.fingerprint(),
            "generation": generation,
            "count": len(facts),
            "huge": {str(t): n for t, n in huge.items()},
        }
        path = self._sizes_path(generation)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(values.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def replace(self, tasks: BitMap) -> None:
        """Make the index hold exactly `tasks` (fsck repairs): a new snapshot past every log
        generation on disk, so no older log is replayed over it; closes the index."""
        self.generation = max([self.generation, *self._log_generations()])
        self.snapshot(tasks, self.rotate())
        self.close()

    def close(self) -> None:
        with self._appending:
            if self._log is not None:
                self._log.close()
                self._log = None


def walk_facts(
    tiles: Iterable[tuple[str, str, list[str]]],
    space: TaskSpace,
    progress: Callable[[int], None] | None = None,
) -> tuple[BitMap, list[str]]:
    """Facts found by a full walk of the store, and the witness paths outside the universe.

    Takes (lat, lon, file names) per tile directory so coordinates are parsed once per tile,
    not once per file (a 1M-witness walk is bound by this loop).
    """
    ids: list[int] = []
    outside: list[str] = []
    n = 0
    phrase_of = space.phrase_of
    for lat, lon, names in tiles:
        row, col = space.row_of(lat), space.col_of(lon)
        n += len(names)
        if row is None or col is None:
            outside += [f"{lat}/{lon}/{name}" for name in names]
            continue
        base = space.task_id(row, col, 0)
        for name in names:
            p = phrase_of(name)
            if p is None:
                outside.append(f"{lat}/{lon}/{name}")
            else:
                ids.append(base + p)
        if progress is not None and n >= 4096 and n % 4096 < len(names):
            progress(n)
    if progress is not None:
        progress(n)
    return BitMap(ids), outside
