"""Local claims that survive a daemon restart: STATE/claims.log.

A worker holding `claimed/REL` must not see its task handed to another worker because the
daemon was restarted (or `kill -9`'d) under it. Fleet leases (S3) are adopted again at start;
this file does the same for every mount: one appended line per claim, renewal and end, written
to the page cache at once (it survives `kill -9`; a power cut may lose the last seconds of it,
as it loses the claims' workers too), replayed and compacted at start.

    claim<TAB>EXPIRES<TAB>REL      a claim or renewal until EXPIRES (epoch seconds)
    end<TAB><TAB>REL               released, expired or lost

A claim that ends because its task became a fact gets no end line (one write less per task):
the witness ends it, and a restart holds no claim of a fact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan
from fusefs.model.state import MissionState, NotPending
from fusefs.statedir.store import append_whole

log = logging.getLogger("missionfs")

COMPACT_LINES = 10_000  # rewrite the file when it holds this many more lines than live claims


class ClaimLog:
    def __init__(self, path: Path, state: MissionState) -> None:
        self.path = path
        self.state = state
        self.live: dict[int, float] = {}  # task -> expiry as written
        self._lines = 0
        self._fd = -1
        self._size = 0
        # Lines that a full disk kept out of the file, written first at the next change; and
        # the error of the last write (None once a write succeeded): a claim made while it is
        # set was not persisted, and the mount rolls it back (engine/claims.py).
        self._backlog: list[str] = []
        # Claims ended by their task's commit, with no end line; if the fact goes (a witness
        # removed), the line is written then, or a restart would hold the claim again.
        self._unended = BitMap()
        self.error: OSError | None = None

    def restore(
        self, now: float | None = None, refused: Callable[[str], None] | None = None
    ) -> int:
        """Claim again the tasks whose claims were live when the last daemon stopped; returns
        how many. Then rewrite the file with just those, and start recording. `refused` is told
        why a logged claim could not be held again (see claim_live)."""
        self.live = self.claim_live(now, "claim from before a restart", refused)
        try:
            self._rewrite()
        except OSError as e:  # a full disk: keep appending to the file as it is
            log.warning("cannot compact %s (%s); appending to it as it is", self.path, e)
            self._open_append()
        self.state.subscribe(self.changed)
        if self.live:
            log.info("%d claim(s) from before the restart are held again", len(self.live))
        return len(self.live)

    def claim_live(
        self,
        now: float | None = None,
        owner: str = "",
        refused: Callable[[str], None] | None = None,
    ) -> dict[int, float]:
        """Claim in the state (only there: the file is not touched) every task whose logged
        claim is still live; returns them with their expiry. Read-only users of a state dir
        (`status`, `pending` beside a running daemon) see the same claims as the mount.
        `refused(reason)` is told of a live logged claim not held again (metrics count it)."""
        now = time.time() if now is None else now
        live: dict[int, float] = {}
        space = self.state.space
        for rel, expires in sorted(self._read().items()):
            try:
                task = space.parse_rel(rel)
            except OutOfPlan:
                continue
            if expires <= now or task in self.state.fact:
                continue  # expired, or ended by its commit (which writes no end line)
            try:
                self.state.claim(task, now, expires - now, owner)
            except NotPending as e:
                if refused is not None:
                    refused(str(e))
                continue  # done meanwhile (or found done by the start-up walk)
            live[task] = expires
        return live

    def _read(self) -> dict[str, float]:
        found: dict[str, float] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return found
        except OSError as e:
            log.warning("cannot read %s (%s): claims from before are not held", self.path, e)
            return found
        # A last line without its newline is being written (a daemon appends beside `status`)
        # or was cut by a crash: a cut name could be another task's, so it is not read.
        for line in text.split("\n")[:-1]:
            kind, _, rest = line.partition("\t")
            expires, _, rel = rest.partition("\t")
            if kind == "claim":
                try:
                    found[rel] = float(expires)
                except ValueError:
                    continue  # a line cut by a crash
            elif kind == "end":
                found.pop(rel, None)
        return found

    def _rewrite(self) -> None:
        """Replace the file with just the live claims (the old one stays in use on failure)."""
        tmp = self.path.with_suffix(".tmp")
        rel = self.state.space.rel
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                for task, expires in sorted(self.live.items()):
                    f.write(f"claim\t{expires:.3f}\t{rel(task)}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._lines = len(self.live)
        self._unended.clear()  # the rewritten file holds no line of theirs
        self._open_append()

    def _open_append(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def changed(self, tasks: Iterable[int]) -> None:
        """State listener: record claims that began, were renewed or ended."""
        claims, fact, unended = self.state.claims, self.state.fact, self._unended
        if isinstance(tasks, BitMap) and len(tasks) > 64:  # bulk (remote facts): few claims
            tasks = tasks & (BitMap(self.live) | self.state.claimed | unended)
        out = []
        rel = self.state.space.rel
        for task in tasks:
            c = claims.get(task)
            if c is not None:
                if self.live.get(task) != c.expires_at:
                    self.live[task] = c.expires_at
                    out.append(f"claim\t{c.expires_at:.3f}\t{rel(task)}\n")
            elif self.live.pop(task, None) is not None:
                if task in fact:
                    unended.add(task)  # ended by its commit: no line (see above)
                else:
                    out.append(f"end\t\t{rel(task)}\n")
            elif task in unended and task not in fact:  # its witness went: the line is due
                unended.discard(task)
                out.append(f"end\t\t{rel(task)}\n")
        if not out or self._fd < 0:
            return
        self._write([*self._backlog, *out])
        if self.error is None and self._lines > COMPACT_LINES + 4 * len(self.live):
            try:
                self._rewrite()
            except OSError as e:  # try again after as many lines more
                log.warning("cannot compact %s: %s", self.path, e)
                self._lines = len(self.live)

    def _write(self, lines: list[str]) -> None:
        """Append `lines` whole (in the page cache: survives kill -9) or keep them for later.

        Never raises: this runs inside every state change (commits, expiries) and a full disk
        must not break those; the caller that must know (a claim) reads `error`."""
        data = "".join(lines).encode("utf-8", "surrogateescape")
        try:
            append_whole(self._fd, data, self._size)
        except OSError as e:
            if self.error is None:
                log.error("cannot write %s: %s (lines kept until it can be)", self.path, e)
            self.error = e
            self._backlog = lines
            return
        self._size += len(data)
        self._lines += len(lines)
        self._backlog = []
        self.error = None

    def close(self) -> None:
        if self._fd >= 0:
            if self._backlog:
                self._write(self._backlog)
            os.close(self._fd)
            self._fd = -1
