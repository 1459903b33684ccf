"""The thread side of witness uploads: several witnesses per hand-off to a worker thread.

Why: every `trio.to_thread.run_sync` is a wake-up of trio's loop through its socketpair, a
thread-cache hand-off and an outcome delivered back, about as much CPU on the main thread as
the PUT itself once the PUT is thin (docs/benchmarks.md, "Issue 15: cost per task"). One hop
now reads and PUTs a chunk of witnesses and brings back one result per witness; the trio side
(sync.py's `upload`) does the bookkeeping (journal, synced log, manifest line, lease retire)
exactly as before, witness by witness.

Chunks: `split` spreads a batch over at most `threads` hops, each at least `per_hop` witnesses
(or all of them), so a large backlog still uploads in parallel (as many PUTs in flight as
before) while a trickle of commits costs one hop per handful. Within a chunk, the first
"S3 unavailable" stops it: the rest of the chunk is left queued (not attempted), so a dead
endpoint costs one timeout per thread, not one per witness in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fusefs.model.errors import S3Unavailable

PER_HOP = 8  # witnesses per hand-off at least, when a batch is big enough to split


@dataclass
class Uploaded:
    """What one witness's upload came to, in its thread. `created`: ours is the witness now.
    Else `remote_sha` is the SHA-256 of the witness that was there (None: it vanished between
    the create and the check). `error`: what failed (nothing else is set then, except `body`
    if it was read); `skipped`: not attempted, an earlier witness of the chunk found S3
    unavailable."""

    task: int
    rel: str
    body: bytes = b""
    created: bool = False
    remote_sha: str | None = None
    error: Exception | None = None
    skipped: bool = False


def split(tasks: list[int], threads: int, per_hop: int = PER_HOP) -> list[list[int]]:
    """`tasks` in at most `threads` chunks of at least `per_hop` (round robin, so each chunk
    holds tasks from the whole batch)."""
    if not tasks:
        return []
    n = max(1, min(threads, len(tasks) // max(1, per_hop)))
    return [tasks[i::n] for i in range(n)]


def upload_chunk(
    chunk: list[tuple[int, str, Path]],
    create: Callable[[str, bytes], bool],
    witness_sha: Callable[[str], str | None],
) -> list[Uploaded]:
    """Read and create each witness of the chunk (blocking: run in a worker thread); for a
    witness that was there already, its SHA-256 too (one HEAD), so the common "uploaded before
    a crash" case needs no second hop. Never raises: errors are per witness."""
    out: list[Uploaded] = []
    stopped = False
    for task, rel, path in chunk:
        up = Uploaded(task, rel)
        out.append(up)
        if stopped:
            up.skipped = True
            continue
        try:
            up.body = path.read_bytes()
            up.created = create(rel, up.body)
            if not up.created:
                up.remote_sha = witness_sha(rel)
        except S3Unavailable as e:
            up.error = e
            stopped = True
        except Exception as e:  # classified on the trio side, as one witness's failure
            up.error = e
    return out
