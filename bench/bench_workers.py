"""Worker overhead: tasks/s of the reference worker (synthetic source) with 1, 4 and 16
workers through a missionfs mount, against the same worker code on a native directory laid out
like a mount (pending/ holding the very same descriptor files, claimed/, done/, tmp/): the same
claim rename, descriptor read, write + fsync into tmp/ and commit rename, with nothing between
the worker and the kernel. That is the physical limit of the protocol on this machine.

The state dir and the native dir live on a tmpfs this script mounts (and unmounts in finally),
so neither side waits for a disk: the ratio is the cost of the FUSE round trips and the
daemon's bookkeeping (validation, link + fsyncs, state updates) per task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import common as c

from fusefs.model.mission import load_mission
from scraper.synthetic import SyntheticSource
from scraper.worker import Pool

MODES = ("native", "missionfs")


def materialise(mission: Path, root: Path) -> int:
    """A native 'mount': every pending descriptor as a real file, plan directories made."""
    m = load_mission(mission)
    made: set[str] = set()
    for view in ("pending", "claimed", "done", "tmp"):
        (root / view).mkdir(parents=True)
    for task in m.intent:
        rel = m.space.rel(task)
        d = rel.rsplit("/", 1)[0]
        if d not in made:
            for view in ("pending", "claimed", "done"):
                os.makedirs(root / view / d)
            made.add(d)
        (root / "pending" / rel).write_bytes(m.space.descriptor(task))
    return len(m.intent)


def run_pool(root: Path, workers: int, lease: float | None) -> float:
    """Tasks/s of `workers` threads completing every pending task under `root`."""
    pool = Pool(root, SyntheticSource(), workers, attempts=1, lease=lease)
    s = pool.run()
    if s.failed or s.error:
        raise RuntimeError(f"worker run failed under {root}: {s.error or s.failed}")
    return s.committed / s.seconds


def measure_native(mission: Path, root: Path, workers: int, n: int) -> float:
    materialise(mission, root)
    rate = run_pool(root, workers, None)
    # No daemon ends a native claim at commit: every task ends in done/ and (stale) claimed/.
    assert count_files(root / "done") == n == count_files(root / "claimed")
    assert count_files(root / "pending") == 0
    return rate


def measure_missionfs(mission: Path, state: Path, mnt: Path, workers: int, n: int) -> float:
    """A fresh mount (everything pending) per run; mount and unmount are not timed."""
    with c.mounted(lambda: c.start_missionfs(mission, mnt, state)) as mfs:
        rate = run_pool(mnt, workers, float(mfs.status()["lease_seconds"]))
        counts = mfs.status()["counts"]
    assert counts["done"] == n and counts["claimed"] == 0, counts
    assert count_files(state / "scraped-tiles") == n
    return rate


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20, help="mission rows (20 x 50 tiles x 2 phrases)")
    p.add_argument("--reps", type=int, default=3, help="repetitions after one warm-up (3)")
    p.add_argument("--quick", action="store_true", help="a 300-task mission, 1 repetition")
    args = p.parse_args(argv)
    rows, reps = (3, 1) if args.quick else (args.rows, args.reps)
    configs = (1, 4, 16)
    rates: dict[tuple[str, int], list[float]] = {}
    with c.tmpfs("4G", prefix="bench-workers-") as fs:
        mission = c.write_mission(fs / "workers.toml", "bench-workers", rows, 50, c.phrases(2))
        n = len(load_mission(mission).intent)
        for rep in range(reps + 1):
            for w in configs:
                for mode in MODES:  # side by side: the same moment of the machine
                    run_id = f"{rep}-{w}"
                    if mode == "native":
                        rate = measure_native(mission, fs / f"native-{run_id}", w, n)
                    else:
                        rate = measure_missionfs(
                            mission, fs / f"state-{run_id}", fs / f"mnt-{run_id}", w, n
                        )
                    c.log(f"rep {rep} {mode} x{w}: {rate:.0f} tasks/s")
                    if rep or reps == 0:
                        rates.setdefault((mode, w), []).append(rate)

    print(
        f"\nbench_workers: {n}-task mission, synthetic source, worker threads in one process, "
        f"tmpfs; tasks/s, median of {max(reps, 1)} after 1 warm-up"
    )
    table = []
    for w in configs:
        med = {mode: statistics.median(rates[(mode, w)]) for mode in MODES}
        table.append(
            [
                f"{w} worker{'s' if w > 1 else ''}",
                f"{med['native']:.0f}",
                f"{med['missionfs']:.0f}",
                f"{med['missionfs'] / med['native']:.2f}x",
            ]
        )
    c.print_table(["workers", "native dir", "missionfs", "mfs/native"], table)
    print(
        "\nper task: claim rename, descriptor read, synthetic rows, tmp/ write + fsync, commit\n"
        "rename; missionfs also validates the CSV, links it, fsyncs the witness directory and\n"
        "updates its bitmaps (and tmpfs makes every fsync free on both sides)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
