"""Where witness files live. `Store` is the small interface; `LocalStore` the embedded default.

The local store is a state directory of plain files, readable without the daemon (its paths
come from layout.py): the Fact tree STATE/scraped-tiles/{lat}/{lon}/{phrase}.csv (witness files
only), tmp/ (the mount's scratch), staging/ (direct writes until committed), rejected/ (refused
direct writes, kept with a note: nothing is ever dropped) and conflicts/.

Commit = fsync the file, hard-link it under its witness name (link never replaces, so an existing
witness cannot be overwritten, not even by a racing commit), fsync the directory, drop the
staging name. All methods block. The daemon's commit (engine/commit.py) calls the metadata
steps (`link`, `tile_dir`, `dir_known`, `DirHandles.acquire`/`release`) on its trio thread
and awaits the fsyncs without a thread (engine/durable.py); everything else, `commit` (the
CLI's and the sync engine's adoptions) and `ensure_dir` of a new tile included, runs through
trio.to_thread or outside trio.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from fusefs.statedir.layout import StateLayout

KNOWN_DIRS = 4096
DIR_HANDLES = 64  # witness directories whose descriptors are kept open for their fsync
INLINE_BYTES = 64 * 1024  # a witness this small is read on the event loop (commit, upload)


def hidden(name: str) -> bool:
    """A dot-entry of the witness tree (`.git`, `.gitignore`, `.gitattributes`, an editor's
    swap file): never a witness, since no lat, lon or encoded phrase starts with '.' (the codec
    escapes a leading dot). Every walker skips them and fsck --repair never moves them, so a
    git repository kept in scraped-tiles/ stays intact."""
    return name.startswith(".")


class Store(Protocol):
    """What every witness store offers: write-once witnesses named by relative path."""

    def create(self, rel: str, body: bytes) -> bool:
        """Make `body` the witness of `rel` unless one exists; True if it was created."""
        ...

    def read(self, rel: str) -> bytes: ...

    def exists(self, rel: str) -> bool: ...

    def scan(self) -> Iterator[str]:
        """Relative paths of all witnesses in the store."""
        ...


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_whole(fd: int, data: bytes, size: int) -> None:
    """Append `data` to the file `fd` (opened with O_APPEND, `size` bytes long now) whole or
    not at all: on a full disk a short write is cut back to `size` and the OSError raised, so
    a log never holds half a line, and never a line its writer was told had failed."""
    try:
        done = os.write(fd, data)
        while done < len(data):  # a short write: the next one says why (ENOSPC, EDQUOT)
            done += os.write(fd, data[done:])
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def replace_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a reader never sees half of it): a sibling .tmp file,
    then rename over. Not fsync'd: for state that is cheap to lose to a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)


def replace_text_if_changed(path: Path, text: str) -> None:
    """replace_text, skipped when `path` already holds `text` (remembered settings are written
    by every command that locks the state dir: most runs change nothing)."""
    try:
        if path.read_text(encoding="utf-8", errors="surrogateescape") == text:
            return
    except OSError:
        pass
    replace_text(path, text)


class DirHandles:
    """Descriptors of witness directories kept open for their fsync (a commit's last step).

    An open and a close less per commit. At most `limit` are kept; one evicted while another
    user (a thread, or an AIO fsync awaited on trio's thread) fsyncs through it is closed by
    that user's `release`. A directory is never removed under a running daemon
    (witnesses are immutable), so a kept descriptor always names the directory of its path."""

    def __init__(self, limit: int = DIR_HANDLES) -> None:
        self.limit = limit
        self._fds: dict[str, int] = {}  # insertion order: the oldest is evicted first
        self._users: dict[int, int] = {}  # fd -> threads fsyncing through it now
        self._lock = threading.Lock()

    def fsync(self, d: str) -> None:
        fd = self.acquire(d)
        try:
            os.fsync(fd)
        finally:
            self.release(fd)

    def acquire(self, d: str) -> int:
        """A descriptor of directory `d`, kept open, to use until `release`."""
        with self._lock:
            fd = self._fds.get(d)
            if fd is not None:
                self._users[fd] += 1
                return fd
        new = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        with self._lock:
            fd = self._fds.get(d)
            if fd is None:  # ours is kept
                fd = self._fds[d] = new
                self._users[fd] = 0
                spare = self._evict()
            else:  # another thread kept one meanwhile
                spare = new
            self._users[fd] += 1
        if spare >= 0:
            os.close(spare)
        return fd

    def _evict(self) -> int:
        """Over the limit: forget the oldest kept descriptor; returns it if nobody uses it (to
        close), else -1 (its last user closes it)."""
        if len(self._fds) <= self.limit:
            return -1
        fd = self._fds.pop(next(iter(self._fds)))
        if self._users[fd]:
            return -1
        del self._users[fd]
        return fd

    def release(self, fd: int) -> None:
        with self._lock:
            self._users[fd] -= 1
            if self._users[fd] or fd in self._fds.values():
                return
            del self._users[fd]
        os.close(fd)

    def close(self) -> None:
        """Close the kept descriptors nobody uses (at the end of the daemon)."""
        with self._lock:
            fds = [fd for fd in self._fds.values() if not self._users[fd]]
            self._fds.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = StateLayout(root)
        self.tiles = self.layout.tiles
        self.tmp = self.layout.tmp
        self.staging = self.layout.staging
        self.rejected = self.layout.rejected
        self.index_dir = self.layout.index
        self.dirty_dirs: set[Path] = set()  # witness dirs whose new links await an fsync
        # Tile directories known to exist (their creation was fsync'd): most commits land in
        # a tile that already has witnesses, and a stat per commit is measurable. A plain set
        # of paths (commits run in several threads), emptied when it grows large.
        self._known_dirs: set[str] = set()
        self._tiles = str(self.tiles)
        self.dir_fds = DirHandles()

    def prepare(self) -> None:
        for d in self.layout.dirs():
            d.mkdir(parents=True, exist_ok=True)

    def witness_path(self, rel: str) -> Path:
        return self.tiles / rel

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.tiles / rel)

    def commit(
        self, staged: Path, rel: str, *, fsync_file: bool = True, sync_dir: bool = True
    ) -> None:
        """sync_dir=False defers the directory fsync to flush_dirs() (batched durability)."""
        fd = os.open(staged, os.O_RDONLY) if fsync_file else -1
        try:
            self.link_witness(fd, str(staged), rel, sync_dir=sync_dir)
        finally:
            if fd >= 0:
                os.close(fd)
        os.unlink(staged)

    def link_witness(self, fd: int, staged: str, rel: str, *, sync_dir: bool) -> None:
        """The durable part of a commit: fsync the open file `fd` (-1: already durable), link
        `staged` as the witness of `rel`, fsync its directory (sync_dir=False: later, in
        flush_dirs). The caller drops the staged name. Three syscalls in the usual case: in a
        worker thread each is a GIL hand-off, so the directory is fsync'd through a descriptor
        kept open (DirHandles)."""
        d = self.tile_dir(rel)
        self.ensure_dir(d)
        if fd >= 0:
            os.fsync(fd)
        dst = self.link(staged, rel)
        if sync_dir:
            try:
                self.dir_fds.fsync(d)
            except OSError:
                # Not durable, and the caller is told the commit failed: take the link back
                # (it is ours, just made) so the task stays pending and the staged file is kept.
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                raise
        else:
            self.dirty_dirs.add(Path(d))

    def link(self, staged: str, rel: str) -> str:
        """Link `staged` as the witness of `rel` (its directory exists); returns its path.
        FileExistsError: link never replaces, so a witness is never overwritten."""
        dst = f"{self._tiles}/{rel}"
        os.link(staged, dst)
        return dst

    def tile_dir(self, rel: str) -> str:
        return f"{self._tiles}/{rel}".rpartition("/")[0]

    def dir_known(self, d: str) -> bool:
        """Does tile directory `d` exist, made durable by this store? A commit into it needs
        no mkdir (ensure_dir, which may fsync its parents)."""
        return d in self._known_dirs

    def flush_dirs(self) -> int:
        """fsync the directories of commits made with sync_dir=False; returns how many."""
        n = 0
        while self.dirty_dirs:
            fsync_dir(self.dirty_dirs.pop())
            n += 1
        return n

    def ensure_dir(self, d: str) -> None:
        """Make tile directory `d` if missing, durably (its parents fsync'd); blocks."""
        for parent in self.make_dir(d):
            fsync_dir(parent)
        self.known_dir(d)

    def make_dir(self, d: str) -> list[str]:
        """Make tile directory `d` and its missing parents (metadata only, no fsync); returns
        the directories whose fsync makes them durable (each new one's parent), to fsync
        before `known_dir(d)`."""
        if d in self._known_dirs:
            return []
        created = []
        p = Path(d)
        while not p.is_dir():
            created.append(p)
            p = p.parent
        if created:
            os.makedirs(d, exist_ok=True)
        return [str(c.parent) for c in reversed(created)]

    def known_dir(self, d: str) -> None:
        """Tile directory `d` exists and is durable (see dir_known)."""
        if len(self._known_dirs) > KNOWN_DIRS:
            self._known_dirs.clear()
        self._known_dirs.add(d)

    def reject(self, staged: Path, rel: str, reason: str) -> Path:
        """Keep a refused result under rejected/ with a note of why; returns its new path."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = rel.replace("/", "_")
        dst = self.rejected / f"{stamp}.{os.getpid()}.{staged.name}.{name}"
        os.replace(staged, dst)  # a rename: works on a full disk too
        note = dst.with_name(dst.name + ".why")
        try:
            note.write_text(f"{rel}: {reason}\n", encoding="utf-8", errors="backslashreplace")
        except OSError:  # a full disk: the bytes are kept, the note (also in the log) is not
            with contextlib.suppress(OSError):
                note.unlink()
        return dst

    def _write_staged(self, body: bytes) -> Path:
        tmp = self.staging / f"fetch.{os.getpid()}.{os.urandom(6).hex()}"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, rel: str, body: bytes) -> bool:
        tmp = self._write_staged(body)
        try:
            self.commit(tmp, rel, fsync_file=False)
        except FileExistsError:
            os.unlink(tmp)
            return False
        return True

    def adopt(self, rel: str, body: bytes, mtime_ns: int | None = None) -> None:
        """Store a witness fetched from S3 as the local one (never over an existing witness),
        with the mtime the mount showed for it before the fetch (a `stat` before and after
        the first read must agree)."""
        tmp = self._write_staged(body)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        try:
            self.commit(tmp, rel, fsync_file=False)
        except FileExistsError:
            os.unlink(tmp)

    def read(self, rel: str) -> bytes:
        return (self.tiles / rel).read_bytes()

    def replace_with_winner(self, rel: str, winner: bytes, worker: str) -> Path:
        """After a lost race: keep our result under conflicts/, make the winner's the witness.

        The only replacement of a witness there is, done by the daemon, never through the mount.
        """
        local = self.tiles / rel
        keep = self.layout.conflicts / f"{rel.removesuffix('.csv')}.{worker}.csv"
        self.ensure_dir(str(keep.parent))
        if not keep.exists():
            os.link(local, keep)
            fsync_dir(keep.parent)
        tmp = self._write_staged(winner)
        os.replace(tmp, local)
        fsync_dir(local.parent)
        return keep

    def scan(self) -> Iterator[str]:
        for lat, lon, names in self.scan_tiles():
            for name in names:
                yield f"{lat}/{lon}/{name}"

    def scan_tiles(self) -> Iterator[tuple[str, str, list[str]]]:
        """(lat, lon, witness file names) for every tile directory of the Fact tree."""
        try:
            lat_entries = list(os.scandir(self.tiles))
        except FileNotFoundError:
            return
        for lat in lat_entries:
            if hidden(lat.name) or not lat.is_dir(follow_symlinks=False):
                continue
            for lon in os.scandir(lat.path):
                if not hidden(lon.name) and lon.is_dir(follow_symlinks=False):
                    names = [
                        f.name
                        for f in os.scandir(lon.path)
                        if not hidden(f.name) and f.is_file(follow_symlinks=False)
                    ]
                    yield lat.name, lon.name, names

    def clean_tmp_leftovers(self) -> int:
        """Drop tmp/ names left behind by a crash between link and unlink (still witnesses)."""
        n = 0
        for d in (self.tmp, self.staging):
            for e in os.scandir(d):
                if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_nlink > 1:
                    os.unlink(e.path)
                    n += 1
        return n
