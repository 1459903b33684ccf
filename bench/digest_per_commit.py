"""CPU of the digest keeper's own work per commit, in process (issue 15).

Why: the daemon's CPU per task (bench/cpu_per_task.py) moves by +-0.3 ms between rounds on this
shared machine, more than the keeper costs, so its before/after cannot show there. This runs
the same commits (Committer.commit over a tmpfs state dir, a mission of tiles of 10 phrases
like bench/fleet.py's, 4 interleaved workers' orders) and, after every CHUNK commits (the
commits of one SETTLE_SECONDS window at ~500 tasks/s), the keeper's work on the dirty tiles,
synchronously in this thread: the process CPU around that work alone, per commit.

    .venv/bin/python bench/digest_per_commit.py [--tasks 2100] [--rounds 5] [--old CHECKOUT]

`--old`: also the keeper of another checkout (a git worktree), imported through PYTHONPATH,
rounds interleaved. Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PHRASES = 10
CHUNK = 250
ROOT = Path(__file__).resolve().parent.parent


def measure(tasks: int) -> float:
    """ms of CPU of the keeper's work per commit, with the fusefs on sys.path."""
    import trio

    from fusefs.engine.workspace import open_workspace
    from fusefs.model.mission import load_mission

    tiles = max(1, round(tasks / PHRASES))
    rows = max(1, int(tiles**0.5))
    cols = -(-tiles // rows)
    tmp = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        phrases = ", ".join(f'"p{i}"' for i in range(PHRASES))
        (tmp / "m.toml").write_text(
            f'name = "digest-bench"\n[grid]\nsouth = 10.0\nwest = 20.0\n'
            f"north = {10 + rows / 10:.1f}\neast = {20 + cols / 10:.1f}\nstep = 0.1\n"
            f"phrases = [{phrases}]\n"
        )
        ws = open_workspace(load_mission(tmp / "m.toml"), tmp / "state")
        keeper: Any = ws.digest
        keeper.started = True
        ids = list(ws.state.intent)
        q = len(ids) // 4
        order = [ids[w * q + i] for i in range(q) for w in range(4)]
        spent = 0.0

        def work() -> None:
            while keeper.dirty:
                if hasattr(keeper, "_given"):  # this branch's keeper
                    jobs, unknown = keeper._take()
                    given, keeper._given = keeper._given, []
                    keeper._apply(jobs, keeper.hasher.shas(unknown, given), None)
                else:  # the keeper before it: every witness of a dirty tile
                    jobs = keeper._take()
                    files, failed = keeper.hasher.tile_files(jobs)
                    keeper._apply(jobs, files, failed)

        async def main() -> None:
            nonlocal spent
            for i in range(0, len(order), CHUNK):
                for t in order[i : i + CHUNK]:
                    staged = tmp / f"s{t}"
                    staged.write_bytes(b"name,addr\nx,%d\n" % t)
                    await ws.committer.commit(staged, t, synced=True, source="bench")
                c0 = time.process_time()
                work()
                spent += time.process_time() - c0

        trio.run(main)
        keeper.hasher.cache.close()
        ws.close()
        return spent * 1000 / len(order)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(checkout: Path, tasks: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--tasks", str(tasks)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old", type=Path, help="also measure the keeper of this checkout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(f"{measure(args.tasks):.4f}")
        return
    sides = [("this", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
    got: dict[str, list[float]] = {name: [] for name, _ in sides}
    for r in range(args.rounds):
        for name, checkout in sides:
            got[name].append(child(checkout, args.tasks))
            print(f"round {r + 1} {name:4s} {got[name][-1]:.4f} ms/commit", flush=True)
    for name, values in got.items():
        print(
            f"{name:4s} median {statistics.median(values):.4f} ms of keeper CPU per commit "
            f"[{min(values):.4f}-{max(values):.4f}], {args.rounds} rounds of {args.tasks} commits"
        )


if __name__ == "__main__":
    main()
