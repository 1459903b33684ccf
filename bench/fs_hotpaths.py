"""In-process micro-benchmark of the FUSE hot paths: lookup, getattr and readdir of pending tiles.

Calls the MissionFS handlers directly through the engine-tier driver (tests/engine/driver.py),
without a kernel, so it measures the handlers' own cost. Run from the repository root:

    .venv/bin/python bench/fs_hotpaths.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import pyfuse3
import trio

from tests.engine.conftest import small_mission
from tests.engine.driver import EngineNode, FakeClock, Listing, readdir_reply


def main(n: int) -> None:
    pyfuse3.readdir_reply = readdir_reply  # the driver's token, as in the engine tier
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        node = EngineNode(small_mission(Path(d)), Path(d) / "state", FakeClock(), readdir_room=64)
        try:
            trio.run(run, node, n)
        finally:
            node.close()


async def run(node: EngineNode, n: int) -> None:
    ops, ctx = node.ops, node.ctx
    tile = await node.resolve("pending/10.1/20.1")
    name = b"coffee shop.csv"
    ino = (await ops.lookup(tile, name, ctx)).st_ino
    fh = await ops.opendir(tile, ctx)

    async def lookup() -> None:
        await ops.lookup(tile, name, ctx)

    async def getattr_() -> None:
        await ops.getattr(ino, ctx)

    async def readdir() -> None:
        await ops.readdir(fh, 0, cast(Any, Listing(64)))

    for label, fn in (("lookup", lookup), ("getattr", getattr_), ("readdir", readdir)):
        best = min([await timed(fn, n) for _ in range(7)])
        print(f"{label:8s} {best / n * 1e9:8.0f} ns/call  ({n} calls, best of 7, CPU time)")


async def timed(fn: Any, n: int) -> float:
    # CPU time of this process: the machine is shared, wall time would measure the others.
    t = time.process_time()
    for _ in range(n):
        await fn()
    return time.process_time() - t


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
