"""Verification listings spread over the fleet (protocol v2, docs/protocol.md).

A full listing of `scraped-tiles/` is no longer a periodic cost of every node: each period,
each node lists only the latitude shards that rendezvous hashing gives it among the crew it
knows, so the fleet lists the bucket about once in total. Rendezvous (highest random weight)
because a member joining or leaving moves only the shards it wins or held, and every node
computes the same assignment from the same crew without talking to the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.objects.s3store import S3Store


def weight(worker: str, shard: str) -> int:
    """The rendezvous weight of (worker, shard): blake2b of both, unambiguously joined."""
    data = worker.encode("utf-8", "surrogatepass") + b"\0" + shard.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def owner(shard: str, crew: Iterable[str]) -> str:
    """The crew member that lists `shard`: the highest weight (ties: the greatest name)."""
    return max(crew, key=lambda w: (weight(w, shard), w))


def my_shards(shards: list[str], worker: str, crew: Iterable[str]) -> list[str]:
    """The shards `worker` lists, in the given order. `worker` counts as a member even when
    `crew` does not name it (a node alone, or not yet seen by the others, lists them all)."""
    members = set(crew) | {worker}
    return [s for s in shards if owner(s, members) == worker]


@dataclass
class Verified:
    """What a verification listing found: `new` are the witnesses not in the known set, as
    (task, rel, size) in key order; they are to be learned and published in the node's next
    manifest, so the whole fleet learns them through the segments."""

    shards: int = 0
    listed: int = 0
    outside: int = 0  # keys under scraped-tiles/ that name no task of the space (ignored)
    new: list[tuple[int, str, int | None]] = field(default_factory=list)


def verify(s3: S3Store, space: TaskSpace, shards: Iterable[str], known: BitMap) -> Verified:
    """List the given shards (`S3Store.witness_shards()` prefixes; one LIST per 1,000 keys)
    and return the witnesses that `known` lacks. Blocking: run it in a worker thread."""
    out = Verified()
    for shard in shards:
        out.shards += 1
        for rel, size in s3.sized_rels_under(shard):
            out.listed += 1
            try:
                task = space.parse_rel(rel)
            except OutOfPlan:
                out.outside += 1
                continue
            if task not in known:
                out.new.append((task, rel, size))
    return out
