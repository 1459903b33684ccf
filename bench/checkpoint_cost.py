"""What a checkpoint costs (protocol v2, docs/protocol.md "Checkpoints"): encode and decode
seconds and bytes for K facts, and the modelled cost for a new node to learn every fact.

Usage: python bench/checkpoint_cost.py [--tasks 1000000,10000000] [--seed 1]

The facts are a mission 80 % done: K random task ids of a space of K / 0.8 tasks (a square
grid, 5 phrases a tile), every size known (200 B to 20 kB), and a digest for every tile that
holds a fact (random bytes: witnesses are hashed as they arrive, not at encode time). Encode = `encode()` of the checkpoint,
decode = `decode()` (sha256 check, bitmap, size and digest columns), one run each, wall clock
on this machine.

The new node's learning cost is modelled as the protocol does it: LIST checkpoints/, GET the
newest, LIST segments/ after it, GET the C = 10 segments written since (each window's facts at
the fleet's rate: 1,000 nodes x 8 workers / 10 s tasks, W = 30 s, one `rel<TAB>sha256<TAB>size`
line each) at 20 ms a request and 100 MB/s, plus the decode measured here. Next to it, what
today's start-up costs: a full listing of `scraped-tiles/` (one LIST per 1,000 keys).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from pyroaring import BitMap

from fusefs.model.checkpoint import (
    DIGEST_BYTES,
    Checkpoint,
    Sizes,
    TileDigests,
    decode,
    encode,
    fingerprint,
)
from fusefs.model.codec import Axis, TaskSpace

PHRASES = tuple(f"p{i}" for i in range(5))
DONE = 0.8  # the fraction of the mission that is done
REQUEST_S = 0.020
BYTES_PER_S = 100e6
C = 10  # windows per checkpoint
WINDOW_S = 30.0
FLEET_TASKS_PER_S = 1000 * 8 / 10  # N = 1,000 nodes x 8 workers x 10 s tasks
LINE_BYTES = len(f"{'40.123/-74.123'}/{PHRASES[0]}.csv\t{'0' * 64}\t1234\n")
LISTING_KEY_BYTES = 300  # bytes of ListObjectsV2 XML per key (a 45-byte key, ETag, size, date)


def space_for(k: int) -> TaskSpace:
    side = math.ceil(math.sqrt(k / DONE / len(PHRASES)))
    return TaskSpace(Axis(0, 1, side, 3), Axis(0, 1, side, 3), PHRASES)


def checkpoint(space: TaskSpace, k: int, rng: np.random.Generator) -> Checkpoint:
    ids = np.sort(rng.choice(space.size, k, replace=False)).astype(np.uint32)
    facts = BitMap(ids)
    sizes = Sizes(facts, rng.integers(200, 20_000, k, dtype=np.uint32))
    tiles = np.unique(ids // space.tile_size).astype(np.uint32)
    table = rng.integers(0, 256, (len(tiles), DIGEST_BYTES), dtype=np.uint8)
    digests = TileDigests.from_columns(space.tile_size, BitMap(facts), tiles, table)
    return Checkpoint(1000, facts, sizes, digests)


def measure(k: int, seed: int) -> dict[str, float]:
    space = space_for(k)
    cp = checkpoint(space, k, np.random.default_rng(seed))
    fp = fingerprint(space)
    t0 = time.perf_counter()
    body = encode(cp, fp, space.tile_size)
    t1 = time.perf_counter()
    back = decode(body, fp)
    t2 = time.perf_counter()
    assert back.facts == cp.facts and len(back.digests) == len(cp.digests)
    segment_bytes = FLEET_TASKS_PER_S * WINDOW_S * LINE_BYTES
    requests = 1 + 1 + 1 + C
    learn_bytes = len(body) + C * segment_bytes
    learn_s = requests * REQUEST_S + learn_bytes / BYTES_PER_S + (t2 - t1)
    lists = -(-k // 1000)
    return {
        "k": k,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        "mb": len(body) / 1e6,
        "bytes_per_fact": len(body) / k,
        "tiles": len(cp.digests),
        "requests": requests,
        "learn_mb": learn_bytes / 1e6,
        "learn_s": learn_s,
        "listing_requests": lists,
        "listing_s": lists * REQUEST_S + k * LISTING_KEY_BYTES / BYTES_PER_S,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="1000000,10000000", help="comma-separated fact counts")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rows = [measure(int(k), args.seed) for k in args.tasks.split(",")]
    print(
        f"{'facts':>10} {'tiles':>9} {'encode s':>9} {'decode s':>9} {'MB':>7} {'B/fact':>7} "
        f"{'learn req':>9} {'learn MB':>9} {'learn s':>8} | {'listing req':>11} {'listing s':>9}"
    )
    for r in rows:
        print(
            f"{r['k']:>10,.0f} {r['tiles']:>9,.0f} {r['encode_s']:>9.2f} {r['decode_s']:>9.2f} {r['mb']:>7.1f} "
            f"{r['bytes_per_fact']:>7.2f} {r['requests']:>9.0f} {r['learn_mb']:>9.1f} "
            f"{r['learn_s']:>8.2f} | {r['listing_requests']:>11,.0f} {r['listing_s']:>9.1f}"
        )
    print(
        f"model: {REQUEST_S * 1000:.0f} ms a request, {BYTES_PER_S / 1e6:.0f} MB/s; learning = "
        f"LIST + GET checkpoint + LIST + {C} segment GETs of {FLEET_TASKS_PER_S * WINDOW_S:,.0f} "
        f"lines ({LINE_BYTES} B) each, plus the decode measured here"
    )


if __name__ == "__main__":
    main()
