"""Work affinity: which share of the mission each live worker prefers.

With optimistic claims a worker cut off from S3 keeps claiming locally; two workers that both
pick from the whole pending set then do the same tasks twice. So each worker prefers a share:
the intent is cut into CHUNKS ranges of equal size (quantiles of the intent bitmap, so a sparse
intent tree is balanced as well as a grid) and each chunk goes to the live worker with the highest
rendezvous hash of (worker, chunk). Every worker computes the same owners from the same members;
a worker joining or leaving moves only its own chunks. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pyroaring import BitMap

CHUNKS = 1024


def _score(worker: str, chunk: int) -> bytes:
    return hashlib.blake2b(f"{worker}\0{chunk}".encode(), digest_size=8).digest()


def owner(chunk: int, workers: Iterable[str]) -> str:
    return max(workers, key=lambda w: _score(w, chunk))


def chunk_bounds(intent: BitMap, chunks: int = CHUNKS) -> list[int]:
    """Task ids where chunks start: chunk c is [bounds[c], bounds[c + 1])."""
    n = len(intent)
    k = max(1, min(chunks, n))
    starts = [intent[c * n // k] for c in range(1, k)] if n else []
    return [0, *starts, (intent.max() + 1) if n else 0]


def shares(intent: BitMap, workers: Iterable[str], chunks: int = CHUNKS) -> dict[str, BitMap]:
    """Every worker's share of the intent (they partition it)."""
    members = sorted(set(workers))
    out = {w: BitMap() for w in members}
    if not members:
        return out
    bounds = chunk_bounds(intent, chunks)
    for c in range(len(bounds) - 1):
        if bounds[c] < bounds[c + 1]:
            out[owner(c, members)].add_range(bounds[c], bounds[c + 1])
    return {w: s & intent for w, s in out.items()}


def others_share(intent: BitMap, workers: Iterable[str], me: str, chunks: int = CHUNKS) -> BitMap:
    """The tasks of the chunks owned by other workers than `me` (empty if `me` is alone)."""
    members = set(workers) | {me}
    if len(members) == 1:
        return BitMap()
    return intent - shares(intent, members, chunks)[me]
