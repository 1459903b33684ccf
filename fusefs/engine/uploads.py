"""One witness's upload, from trio's thread: read it, create it in S3, and if one was there
already, the SHA-256 of that one.

Why on trio's thread: the daemon's CPU per completed task is the budget of a small node
(issue 15), and an upload through a worker thread cost a thread hand-off, a wake-up of trio's
loop and a GIL hand-off per socket call, more than the PUT itself once the PUT was signed by
hand (docs/benchmarks.md, "CPU per task"). The S3 store's `put_async` sends the PUT on a trio
stream (objects/streams.py); a store that cannot (the in-process one of the engine tests and
the simulator, boto3 for what the thin path steps aside from) runs it through `offload`, the
engine's worker threads. The witness is read inline when small (a page-cache read of a file
committed moments ago, cheaper than a hop), else in a thread.

`sync.py`'s `upload` runs `uploaders` of these at a time and does the bookkeeping on the
trio thread: each manifest line as its witness is created, the journal, synced and remote
lines and the lease retirements of up to RECORD_EVERY witnesses at once.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from fusefs.model.witness import read_small
from fusefs.objects.base import Offload
from fusefs.objects.s3store import S3Store, sha256_hex
from fusefs.statedir.store import INLINE_BYTES

LINGER_BELOW = 8  # a batch of fewer witnesses waits a moment for more commits (sync.py)


@dataclass
class Uploaded:
    """What one witness's upload came to. `created`: ours is the witness now. Else
    `remote_sha` is the SHA-256 of the witness that was there (None: it vanished between the
    create and the check). `error`: what failed (only `body` and `sha` may be set then)."""

    task: int
    rel: str
    body: bytes = b""
    sha: str = ""
    created: bool = False
    remote_sha: str | None = None
    error: Exception | None = None


async def upload_witness(
    task: int,
    rel: str,
    path: Path,
    s3: S3Store,
    offload: Offload,
    fresh: tuple[bytes, str] | None = None,
) -> Uploaded:
    """Read and create one witness; never raises (the error is in the result). `fresh`: its
    bytes and SHA-256 as its commit on this node had them (not read back then)."""
    up = Uploaded(task, rel)
    try:
        if fresh is not None:
            up.body, up.sha = fresh
        else:
            body = _read_small(path)
            up.body = body if body is not None else await offload(path.read_bytes)
            up.sha = sha256_hex(up.body)
        up.created = await s3.create_witness_async(rel, up.body, up.sha, offload)
        if not up.created:
            up.remote_sha = await offload(functools.partial(s3.witness_sha, rel))
    except Exception as e:  # classified on the caller's side, as this witness's failure
        up.error = e
    return up


def _read_small(path: Path) -> bytes | None:
    """The whole file if it holds at most INLINE_BYTES, else None (witness.read_small)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_small(fd, os.fstat(fd).st_size, INLINE_BYTES)
    finally:
        os.close(fd)
