"""The checkpoints of a bucket (protocol v2, docs/protocol.md): a new or returning node learns
every fact from the newest valid one (a LIST and a GET), then reads the segments after it.

Checkpoints are derived state: a corrupt one (altered, truncated), a foreign one (another task
space) or one deleted between the listing and the GET is skipped for the previous one, and
said so in `skipped` (for the log and fsck), never trusted and never fatal. They are written
once per window with If-None-Match (two writers of the same window: the first one stays; both
hold every fact through that window, and extra facts are harmless since facts only grow), and
pruned to the last few, which keeps the listing to one page.

Blocking calls (S3 requests): callers on the trio loop use `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusefs.model.checkpoint import (
    Checkpoint,
    CorruptCheckpoint,
    ForeignCheckpoint,
    decode,
    encode,
    fingerprint,
)
from fusefs.model.codec import TaskSpace
from fusefs.objects.s3store import S3Store

KEEP = 3  # checkpoints kept by prune(): one LIST page, and two to fall back on


@dataclass(frozen=True)
class Examined:
    """One checkpoint as read: `checkpoint` if valid, else `problem` is "corrupt", "foreign",
    "missing" (listed, then gone) or "future" (see `latest`) and `detail` says why."""

    window: int
    checkpoint: Checkpoint | None
    problem: str | None = None
    detail: str = ""


class CheckpointBook:
    """The checkpoints of one mission's bucket for one task space."""

    def __init__(self, s3: S3Store, space: TaskSpace) -> None:
        self.s3 = s3
        self.space = space
        self.fingerprint = fingerprint(space)
        self.skipped: list[Examined] = []  # what the last latest() passed over, newest first

    def windows(self) -> list[int]:
        """Windows of the checkpoints in the bucket, ascending (a LIST)."""
        return self.s3.checkpoint_windows()

    def read(self, window: int) -> Examined:
        """GET and check the checkpoint of `window` (one GET)."""
        body = self.s3.get_checkpoint(window)
        if body is None:
            return Examined(window, None, "missing", "listed but gone (deleted?)")
        try:
            cp = decode(body, self.fingerprint)
        except ForeignCheckpoint as e:
            return Examined(window, None, "foreign", str(e))
        except CorruptCheckpoint as e:
            return Examined(window, None, "corrupt", str(e))
        if cp.window != window:
            what = f"its header names window {cp.window}"
            return Examined(window, None, "corrupt", what)
        return Examined(window, cp)

    def latest(self, newer_than: int = -1, now: int | None = None) -> Checkpoint | None:
        """The newest valid checkpoint of a window after `newer_than`, or None: a LIST and a
        GET, plus a GET per newer checkpoint that was corrupt, foreign or gone.

        `now` (the server's current window): a checkpoint named for a later window than
        `now + 1` is skipped as "future" without a GET (a node starting from it would skip
        every segment up to that window, and miss their facts)."""
        self.skipped = []
        for window in reversed(self.windows()):
            if window <= newer_than:
                break
            if now is not None and window > now + 1:
                self.skipped.append(Examined(window, None, "future", f"the window now is {now}"))
                continue
            found = self.read(window)
            if found.checkpoint is not None:
                return found.checkpoint
            self.skipped.append(found)
        return None

    def examine(self) -> list[Examined]:
        """Every checkpoint of the bucket read and checked, ascending (fsck): a LIST and a GET
        each (pruning keeps them few)."""
        return [self.read(w) for w in self.windows()]

    def write(self, cp: Checkpoint) -> bool:
        """Create the checkpoint of `cp.window` (If-None-Match); False if one is there."""
        body = encode(cp, self.fingerprint, self.space.tile_size)
        return self.s3.put_checkpoint(cp.window, body)

    def prune(self, keep: int = KEEP) -> int:
        """Delete all but the `keep` newest checkpoints (a LIST and one DeleteObjects);
        returns how many were deleted."""
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        old = self.windows()[:-keep]
        if old:
            self.s3.delete_checkpoints(old)
        return len(old)
