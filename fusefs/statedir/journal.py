"""Append-only JSON-lines journal of every state change: history, not truth.

    STATE/journal/journal-{seq:06d}.jsonl    rotated at ROTATE_BYTES; readable with `jq`

One line per event: {"t": epoch seconds, "ev": ..., "rel": ..., "worker": ..., "host": ..., ...}.
Events: claim, renew, release, expire, lost_claim, commit (sha256, size, rows, source), refused
(reason), upload, remote (learned from S3: a segment, a listing), checkpoint (a checkpoint's
facts learned at once: window, facts, learned; no `remote` line each, remotefacts.py), fetch,
conflict (loser_sha256, winner_sha256), and fsck (a repair made by `missionfs fsck --repair`).

Ordering with the change it records — the witness wins: a commit line is appended after the
witness is linked and its directory fsync'd, then the start-up index line. After `kill -9` (the
page cache survives) both lines exist or neither does; a witness whose lines were lost (power
loss) is found by the start-up reconcile and journalled then with "recovered": true. So the
journal never names a commit whose witness is missing, and every witness gets its line (except
on a full disk: a line that cannot be written is dropped whole, logged, and the change stands).

Writers: the trio thread (claims, commits, ...) and, for the `remote` lines of a segment's
thousands of facts, a worker thread (remotefacts.py) with one write for all of them
(`append_many`): a lock keeps each write whole and the file's size (what a failed write is cut
back to) right; a batch that cannot be written whole is dropped whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fusefs.statedir.layout import StateLayout
from fusefs.statedir.store import append_whole

log = logging.getLogger("missionfs")

ROTATE_BYTES = 64 * 2**20


class Journal:
    def __init__(self, directory: Path, worker: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.host = socket.gethostname()
        self._tail = f',"worker":{_string(worker)},"host":{_string(self.host)}}}\n'
        self._file: IO[bytes] | None = None
        self._size = 0
        self._dirty = False
        # Called when the first line after an fsync is written (any thread): the daemon's
        # fsync loop parks while the journal is clean (fusefs/engine/wakeup.py).
        self.on_dirty: Callable[[], None] | None = None
        self.error: OSError | None = None  # the last append failed with this
        self.lost = 0  # lines not written since
        # Held for one write (never across an fsync): the trio thread and a worker thread
        # (append_many) may append at once.
        self._lock = threading.Lock()
        # Files rotated away whose last lines are not fsync'd yet: sync() fsyncs and closes them
        # (the appending thread, maybe trio's, never waits for a disk).
        self._rotated: list[IO[bytes]] = []

    def _open(self) -> IO[bytes]:
        if self._file is None or self._size >= ROTATE_BYTES:
            if self._file is not None:
                self._rotated.append(self._file)
            files = journal_files(self.dir)
            seq = int(files[-1].stem.split("-")[1]) if files else 0
            path = self.dir / f"journal-{seq:06d}.jsonl"
            if path.exists() and path.stat().st_size >= ROTATE_BYTES:
                path = self.dir / f"journal-{seq + 1:06d}.jsonl"
            # Unbuffered: each line is one write, cut back whole if the disk is full.
            self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - long-lived
            self._size = path.stat().st_size
        return self._file

    def append(self, ev: str, rel: str | None = None, **fields: Any) -> bool:
        """One line; whether it was written (`error` may be changed meanwhile by a batch of
        another thread's: a caller that must know reads this)."""
        return self._write(self._line(ev, rel, fields), 1)

    def append_many(self, ev: str, rels: Iterable[str], **fields: Any) -> int:
        """One `ev` line per rel (same fields), in one write: thousands of lines from a worker
        thread without a write call each (a segment's `remote` lines). Returns how many."""
        return self.append_each(ev, ((rel, fields) for rel in rels))

    def append_each(self, ev: str, items: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """One `ev` line per (rel, fields), in one write (a batch of uploads); how many."""
        lines = [self._line(ev, rel, fields) for rel, fields in items]
        if lines:
            self._write(b"".join(lines), len(lines))
        return len(lines)

    def _line(self, ev: str, rel: str | None, fields: dict[str, Any]) -> bytes:
        """One JSON line. The usual line (names and values of plain ASCII, numbers) is
        written by hand: json.dumps cost more than the rest of a journal append (the same
        bytes: tests/unit/test_journal_line.py)."""
        t = round(time.time(), 6)
        if RESERVED.isdisjoint(fields):
            parts = [f'{{"t":{t!r},"ev":{_name(ev)}']
            if rel is not None:
                parts.append(f',"rel":{_string(rel)}')
            for key, value in fields.items():
                parts.append(f",{_name(key)}:{_value(value)}")
            parts.append(self._tail)
            line = "".join(parts)
        else:
            line = self._dumped(t, ev, rel, fields)
        # A name with bytes that are not UTF-8 (surrogates) is written as a JSON \uDCxx escape,
        # which json.loads turns back into the same surrogate: the line stays valid JSON.
        return line.encode("utf-8", "backslashreplace")

    def _dumped(self, t: float, ev: str, rel: str | None, fields: dict[str, Any]) -> str:
        """The line as json.dumps writes it (what _line's own writing must equal)."""
        entry: dict[str, Any] = {"t": t, "ev": ev}
        if rel is not None:
            entry["rel"] = rel
        entry.update(fields)
        entry["worker"] = self.worker
        entry["host"] = self.host
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"

    def _write(self, data: bytes, lines: int) -> bool:
        # In the page cache: survives kill -9; fsync'd by sync(). On a full disk the lines are
        # not written at all: never half a line, never one written later.
        with self._lock:
            try:
                f = self._open()
                append_whole(f.fileno(), data, self._size)
            except OSError as e:
                self._failed(e, lines)
                return False
            self._size += len(data)
            was_dirty, self._dirty = self._dirty, True
            if not was_dirty and self.on_dirty is not None:
                self.on_dirty()
            if self.error is not None:
                log.warning("journal writable again; %d line(s) were not written", self.lost)
                self.error, self.lost = None, 0
            return True

    def _failed(self, e: OSError, lines: int = 1) -> None:
        """A line could not be written (full disk, quota). The journal is history, not truth:
        the change it records stands, so this is logged once per streak, not raised; a caller
        that must not go on without its line (a claim) reads `error` after append()."""
        if self.error is None:
            log.error("journal line(s) not written: %s", e)
        self.error = e
        self.lost += lines

    @property
    def dirty(self) -> bool:
        """Lines written since the last fsync."""
        return self._dirty

    def sync(self) -> None:
        """fsync the current file and any rotated away since the last call (the daemon calls
        this about a second after a line is written, in a thread)."""
        with self._lock:
            rotated, self._rotated = self._rotated, []
        for old in rotated:
            with contextlib.suppress(OSError):
                os.fsync(old.fileno())
            old.close()
        f = self._file
        if f is not None and self._dirty:
            self._dirty = False
            try:
                os.fsync(f.fileno())
            except (OSError, ValueError):  # closed by close() meanwhile, which synced it
                pass

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


RESERVED = frozenset(("t", "ev", "rel", "worker", "host"))  # fields json.dumps would merge


def _string(s: str) -> str:
    """A JSON string as json.dumps(s, ensure_ascii=False) writes it."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return json.dumps(s, ensure_ascii=False)


_NAMES: dict[str, str] = {}  # events and field names (a few dozen) as JSON strings


def _name(s: str) -> str:
    """_string of an event or field name, kept."""
    q = _NAMES.get(s)
    if q is None:
        q = _string(s)
        if len(_NAMES) < 256:
            _NAMES[s] = q
    return q


def _value(v: Any) -> str:
    """A JSON value as json.dumps(v, ensure_ascii=False, separators=(",", ":")) writes it."""
    if type(v) is str:
        return _string(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if type(v) is int:
        return str(v)
    if type(v) is float and math.isfinite(v):
        return repr(v)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


def read_journal(directory: Path) -> Iterator[dict[str, Any]]:
    """Every entry, oldest first; a torn last line (crash) is skipped."""
    for path in journal_files(directory):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def worker_id(state_dir: Path, override: str | None = None) -> str:
    """A stable id for this state dir (used in manifest and conflict names)."""
    path = StateLayout(state_dir).worker_id
    if override:
        path.write_text(override + "\n")
        return override
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        host = "".join(c if c.isalnum() or c in "-." else "-" for c in os.uname().nodename)
        wid = f"{host}-{os.urandom(3).hex()}"
        path.write_text(wid + "\n")
        return wid
