"""fsck's `checkpoints` check (protocol v2): the bucket's checkpoints against fsck's full
listing of the witnesses, which is the truth; checkpoints are derived state.

Found, one line each: a checkpoint that is corrupt (altered, truncated), foreign (another task
space), named for a window that has not come yet (it would hide every later segment from a new
node), behind (the listing holds witnesses written at least a window before the checkpoint's
window that it lacks: a node starting from it would never learn them) or holding facts without
a witness; and a v2 bucket without any checkpoint (a new node would list the whole bucket).

Repair: the damaged checkpoints are deleted (derived bytes, never a result) and a fresh one is
written from the listing, with If-None-Match, for window `window(T) - 2`, T the server time
when the listing began: every witness PUT at t >= T is in a node manifest of a window
>= window(t), hence in a segment after the checkpoint, so nothing falls between (the protocol's
bootstrap rule). Its sizes come from the listing; its tile digests count the witnesses whose
sha256 fsck knows (local good witnesses whose bucket ETag is their MD5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook, Examined
from fusefs.model.checkpoint import Checkpoint, TileDigests
from fusefs.model.codec import TaskSpace
from fusefs.objects.base import NotFound
from fusefs.objects.s3store import CHECKPOINTS, WITNESSES, S3Store, checkpoint_name

PROTOCOL_KEY = ".missionfs/protocol.json"  # {"version": 2, "window": W} (docs/protocol.md)
CONFIRM = 1000  # facts without a listed witness checked one by one (HEAD) before reporting


@dataclass(frozen=True)
class Listed:
    """One witness of fsck's listing: its size and LastModified (server clock, seconds)."""

    size: int
    modified: float


@dataclass
class Finding:
    kind: str
    where: str
    what: str
    window: int | None = None  # the damaged checkpoint's window (deleted by the repair)


def protocol_window(s3: S3Store) -> int | None:
    """The fleet's window W in seconds from `{base}/.missionfs/protocol.json`; None when the
    bucket has none (protocol v1) or it is unreadable (then no checkpoint can be judged)."""
    try:
        body, _ = s3.get(f"{s3.base}/{PROTOCOL_KEY}")
        doc = json.loads(body)
    except NotFound:
        return None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    window = doc.get("window") if isinstance(doc, dict) else None
    if type(window) is not int or not 0 < window <= 86400:
        return None
    return window


def where(window: int) -> str:
    return f"{CHECKPOINTS}/{checkpoint_name(window)}"


class CheckpointAudit:
    """One check of the bucket's checkpoints against a listing taken from server time
    `started` on; `findings` and `notes` after `run()`, `rebuild()` repairs."""

    def __init__(
        self,
        s3: S3Store,
        space: TaskSpace,
        listing: Mapping[int, Listed],
        started: float,
        known_sha: Mapping[int, str],
    ) -> None:
        self.s3 = s3
        self.space = space
        self.book = CheckpointBook(s3, space)
        self.listing = listing
        self.listed = BitMap(listing)
        self.started = started
        self.known_sha = known_sha
        self.period: int | None = None
        self.findings: list[Finding] = []
        self.notes: list[str] = []

    def run(self) -> None:
        self.period = protocol_window(self.s3)
        if self.period is None:
            self.notes.append(f"no {PROTOCOL_KEY}: a protocol v1 bucket, no checkpoints expected")
            return
        now = int(self.started // self.period)
        examined = self.book.examine()
        for e in examined:
            self._judge(e, now)
        if not examined:
            self.findings.append(
                Finding(
                    "checkpoint-missing",
                    f"{CHECKPOINTS}/",
                    "no checkpoint: a new node would have to list the whole bucket",
                )
            )
        valid = [e for e in examined if e.checkpoint is not None and e.window <= now + 1]
        if valid:
            self._compare(valid[-1])

    def _judge(self, e: Examined, now: int) -> None:
        if e.checkpoint is None:
            self.findings.append(
                Finding(f"checkpoint-{e.problem}", where(e.window), e.detail, e.window)
            )
        elif e.window > now + 1:
            what = f"named for window {e.window}, the server's is {now}: hides later segments"
            self.findings.append(Finding("checkpoint-future", where(e.window), what, e.window))

    def _compare(self, newest: Examined) -> None:
        """The newest valid checkpoint's facts against the listing."""
        assert newest.checkpoint is not None and self.period is not None
        facts = newest.checkpoint.facts
        absent = self.listed - facts
        cutoff = (newest.window - 1) * self.period  # written a window before it began
        behind = [t for t in absent if self.listing[t].modified < cutoff]
        extra = facts - self.listed
        self.notes.append(
            f"newest checkpoint {checkpoint_name(newest.window)}: {len(facts)} fact(s); the "
            f"listing: {len(self.listed)} witness(es), {len(absent)} not in it ({len(behind)} "
            f"written before its window), {len(extra)} of its facts without a witness"
        )
        at = where(newest.window)
        if behind:
            what = f"{len(behind)} witness(es) written before its window are not in it "
            what += f"(derived state behind; e.g. {self.space.rel(behind[0])})"
            self.findings.append(Finding("checkpoint-behind", at, what, newest.window))
        gone = self._confirmed_gone(extra)
        if gone:
            what = f"{len(gone)} fact(s) without a witness in the bucket "
            what += f"(e.g. {self.space.rel(gone[0])})"
            self.findings.append(Finding("checkpoint-extra", at, what, newest.window))

    def _confirmed_gone(self, extra: BitMap) -> list[int]:
        """The facts of `extra` whose witness a HEAD does not find either (up to CONFIRM): a
        checkpoint written during the listing may hold witnesses PUT after it, which is fine."""
        out = []
        for task in list(extra)[:CONFIRM]:
            if self.s3.head(self.s3.key(WITNESSES, self.space.rel(task))) is None:
                out.append(task)
        return out

    def fresh(self, window: int) -> Checkpoint:
        """The checkpoint of the listing: facts, sizes, and digests where the sha256 is known."""
        digests = TileDigests.for_space(self.space)
        for task, sha in self.known_sha.items():
            if task in self.listed:
                digests.add_task(task, self.space.rel(task), sha)
        sizes = {t: item.size for t, item in self.listing.items()}
        return Checkpoint(window, BitMap(self.listed), sizes, digests)

    def rebuild(self) -> tuple[bool, str]:
        """Delete the damaged checkpoints and write a fresh one from the listing; returns
        whether that worked and what was done (one line)."""
        assert self.period is not None
        damaged = sorted({f.window for f in self.findings if f.window is not None})
        if damaged:
            self.s3.delete_checkpoints(damaged)
        window = max(0, int(self.started // self.period) - 2)
        cp = self.fresh(window)
        if not self.book.write(cp):  # one is there: keep it if it holds the whole listing
            there = self.book.read(window).checkpoint
            if there is not None and self.listed <= there.facts:
                return True, f"{where(window)} (written meanwhile) holds every listed witness"
            self.s3.delete_checkpoints([window])
            if not self.book.write(cp):
                return False, f"{where(window)} was written again meanwhile: run fsck again"
        gone = f"; deleted {len(damaged)} damaged" if damaged else ""
        return True, f"wrote {where(window)} from the listing ({len(self.listed)} witnesses){gone}"
