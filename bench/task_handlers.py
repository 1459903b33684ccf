"""The FUSE handlers of one worker's task, in process: missionfs's own CPU per task, no kernel.

bench/cpu_per_task.py measures the whole daemon (pyfuse3, trio, threads, the kernel's share);
this calls the MissionFS handlers directly (the engine-tier driver, tests/engine/driver.py) with
the requests the kernel sends for one task of bench/fleet.py's Python worker, as counted on a
real mount: the miss of claimed/NAME and the claim's rename, a getattr, open/read/flush/release
of the descriptor, the miss of tmp/NAME, create/write/flush/release, the miss of done/NAME, the
commit's rename and the forget of the descriptor's inode. Directory lookups are made once per
tile (the kernel caches them). Invalidations go to a queue nobody reads (their cost in the
daemon is the hand-off to the notifier's thread and that thread, not measured here).

The commit's fsyncs are awaited through Linux AIO, as in the daemon (fusefs/engine/durable.py);
`--thread-fsync` sends them to a worker thread instead (the daemon's way before, and its
fallback where AIO is missing), to show what that hop costs.

    .venv/bin/python bench/task_handlers.py [--tasks N] [--rounds R] [--thread-fsync]
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent)]

import pyfuse3  # noqa: E402
import trio  # noqa: E402

from fusefs.engine.durable import Fsyncer  # noqa: E402
from fusefs.fuse.notifier import Notifier  # noqa: E402
from fusefs.model.mission import load_mission  # noqa: E402
from tests.engine.driver import EngineNode, FakeClock, readdir_reply  # noqa: E402
from tests.support.mounts import write_mission  # noqa: E402

BODY = b"name,worker,bytes\nx,1,2\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks per round (2000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the median is printed (3)")
    ap.add_argument("--thread-fsync", action="store_true", help="fsyncs in a worker thread")
    args = ap.parse_args()
    pyfuse3.readdir_reply = readdir_reply  # the driver's token, as in the engine tier
    pending: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()

    def invalidate(_: Notifier, inode_p: int, name: bytes) -> None:
        pending.put((inode_p, name))

    Notifier.add = invalidate  # type: ignore[method-assign]
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            node = node_over(Path(d), args.tasks)
            if args.thread_fsync:
                node.ws.committer.fsyncer = Fsyncer(use_aio=False)
            try:
                results.append(trio.run(run, node, args.tasks))
            finally:
                node.close()
    results.sort()
    hop = "fsyncs in a worker thread" if args.thread_fsync else "fsyncs through AIO"
    print(
        f"{1000 * results[len(results) // 2]:.3f} ms CPU per task (median of {args.rounds},"
        f" {1000 * results[0]:.3f}-{1000 * results[-1]:.3f}); {hop}"
    )


def node_over(d: Path, tasks: int) -> EngineNode:
    phrases = tuple(f"p{i}" for i in range(20))
    side = max(2, int((tasks / len(phrases)) ** 0.5) + 1)
    north, east = f"{10 + side / 10:.1f}", f"{20 + side / 10:.1f}"
    path = write_mission(
        d / "m.toml", name="flow", south="10.0", west="20.0", north=north, east=east, step="0.1",
        phrases=phrases,
    )  # fmt: skip
    node = EngineNode(load_mission(path), d / "state", FakeClock())
    node.ops.kcache.enabled = True  # as in the daemon: invalidations are decided and queued
    return node


async def run(node: EngineNode, n: int) -> float:
    ops, ctx, sp = node.ops, node.ctx, node.mission.space
    tasks = list(node.mission.intent)[:n]

    async def ino(parent: int, name: str) -> int:
        return int((await ops.lookup(parent, name.encode(), ctx)).st_ino)

    views = {v: await ino(1, v) for v in ("pending", "claimed", "done", "tmp")}
    dirs: dict[tuple[str, str], tuple[int, int, int]] = {}
    names: dict[int, tuple[int, int, int, bytes, int]] = {}
    for task in tasks:  # what the kernel has cached when the worker starts: dirs and listings
        lat, lon, fname = sp.rel(task).split("/")
        if (lat, lon) not in dirs:
            tiles = []
            for v in ("pending", "claimed", "done"):
                tiles.append(await ino(await ino(views[v], lat), lon))
            dirs[lat, lon] = (tiles[0], tiles[1], tiles[2])
        pt, ct, dt = dirs[lat, lon]
        names[task] = (pt, ct, dt, fname.encode(), await ino(pt, fname))
    t0 = time.process_time()
    for i, task in enumerate(tasks):
        pt, ct, dt, name, desc = names[task]
        await miss(ops, ct, name, ctx)
        await ops.rename(pt, name, ct, name, 0, ctx)
        await ops.getattr(desc, ctx)
        fi = await ops.open(desc, os.O_RDONLY, ctx)
        await ops.read(fi.fh, 0, 4096)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        tname = f"py{i % 4}".encode()
        await ops.lookup(views["tmp"], tname, ctx)  # a cached miss
        fi, _ = await ops.create(views["tmp"], tname, 0o644, os.O_WRONLY | os.O_CREAT, ctx)
        await ops.write(fi.fh, 0, BODY)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        await ops.lookup(dt, name, ctx)  # a cached miss
        await ops.rename(views["tmp"], tname, dt, name, 0, ctx)
        await ops.forget([(desc, 1)])
    return (time.process_time() - t0) / len(tasks)


async def miss(ops: Any, parent: int, name: bytes, ctx: Any) -> None:
    try:
        await ops.lookup(parent, name, ctx)
    except pyfuse3.FUSEError:
        pass


if __name__ == "__main__":
    main()
