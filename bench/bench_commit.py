"""Commit rate through the mount (write tmp/X + fsync + rename to done/REL) against the same
Maildir protocol on native ext4 (write DIR/tmp/X + fsync + makedirs + rename into
DIR/scraped-tiles/REL), both on one fresh loop-mounted ext4, with 1 and 4 worker processes.

Issue target: missionfs >= 0.9x native. missionfs also validates the CSV and, by default
(--durability strict), fsyncs the witness directory on every commit (more durable than the
native protocol), so a column shows native + directory fsync, the protocol with the same
durability; `mfs-batched` is a second mount with --durability batched (directory fsyncs grouped
every 0.25 s: the same durability as the native protocol, which never fsyncs the directory).
`passthrough` runs the native protocol through bench/passthrough_fs.py, a minimal pyfuse3
passthrough of a directory: the floor any pyfuse3 filesystem starts from on this path.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import common as c

from fusefs.model.mission import load_mission

TARGET = 0.9
BODY = b"name,address,lat,lon,rating\n" + b"".join(
    f'"Place {i}","{i} Main St, Springfield",40.{i:04d},-74.{i:04d},4.{i % 10}\n'.encode()
    for i in range(4)
)
MODES = ("native", "native+dirsync", "passthrough", "missionfs", "mfs-direct", "mfs-batched")


def worker(
    mode: str, root: str, rels: list[str], wid: int, barrier: Barrier, out: mp.Queue
) -> None:
    """One scraper process: its share of commits, timed between a common start and its end."""
    tmp = f"{root}/tmp"
    done = f"{root}/done" if mode.startswith(("m", "p")) else f"{root}/scraped-tiles"
    barrier.wait()
    t0 = time.monotonic()
    for i, rel in enumerate(rels):
        if mode == "mfs-direct":  # the other commit path: write done/REL itself, close commits
            fd = os.open(f"{done}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, BODY)
                os.fsync(fd)
            finally:
                os.close(fd)
            continue
        src = f"{tmp}/w{wid}.{i}"
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, BODY)
            os.fsync(fd)
        finally:
            os.close(fd)
        dst = f"{done}/{rel}"
        parent = dst.rsplit("/", 1)[0]
        if mode.startswith("native"):
            os.makedirs(parent, exist_ok=True)
        os.rename(src, dst)
        if mode == "native+dirsync":
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    out.put((t0, time.monotonic()))


def commit_rate(mode: str, root: Path, rels: list[str], workers: int) -> float:
    """Commits per second of `workers` processes sharing `rels` (contiguous blocks each)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    out: mp.Queue = ctx.Queue()
    share = -(-len(rels) // workers)
    procs = [
        ctx.Process(
            target=worker,
            args=(mode, str(root), rels[i * share : (i + 1) * share], i, barrier, out),
        )
        for i in range(workers)
    ]
    for pr in procs:
        pr.start()
    try:
        spans = [out.get(timeout=600) for _ in procs]
    finally:
        for pr in procs:
            pr.join(timeout=60)
            if pr.is_alive():
                pr.kill()
                pr.join()
    if any(pr.exitcode != 0 for pr in procs):
        raise RuntimeError(f"{mode}: a worker failed")
    return len(rels) / (max(e for _, e in spans) - min(s for s, _ in spans))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000, help="commits per repetition (2000)")
    p.add_argument("--reps", type=int, default=3, help="repetitions after one warm-up")
    p.add_argument("--quick", action="store_true", help="200 commits per repetition")
    args = p.parse_args(argv)
    n = 200 if args.quick else args.n
    configs = (1, 4)
    with c.loop_ext4("2G") as ext4:
        mission = c.write_mission(ext4 / "commit.toml", "bench-commit", 100, 100, c.phrases(10))
        m = load_mission(mission)
        all_rels = [m.space.rel(t) for t in m.intent]
        per_round = n * len(configs)
        needed = per_round * (args.reps + 1)
        if 2 * needed > len(all_rels):
            raise SystemExit(f"-n {n} needs {needed} tasks, the mission has {len(all_rels)}")
        roots = {mo: ext4 / mo.replace("+", "-") for mo in MODES}
        for mo in ("native", "native+dirsync"):
            (roots[mo] / "tmp").mkdir(parents=True)
            (roots[mo] / "scraped-tiles").mkdir()
        backing = ext4 / "passthrough-backing"
        (backing / "tmp").mkdir(parents=True)
        for rel in all_rels[: 2 * needed]:  # the floor does no mkdir: every tile dir exists
            (backing / "done" / rel).parent.mkdir(parents=True, exist_ok=True)
        state = ext4 / "mfs-state"
        rates: dict[tuple[str, int], list[float]] = {}
        batched = c.mounted(
            lambda: c.start_missionfs(
                mission, ext4 / "mnt-b", ext4 / "mfs-state-b", extra=("--durability", "batched")
            )
        )
        with (
            c.mounted(lambda: c.start_missionfs(mission, ext4 / "mnt", state)) as mfs,
            batched as mfs_b,
            c.mounted(lambda: c.start_passthrough(backing, ext4 / "mnt-p")) as floor,
        ):
            roots["missionfs"] = roots["mfs-direct"] = mfs.mnt
            roots["mfs-batched"] = mfs_b.mnt
            roots["passthrough"] = floor.mnt
            for rep in range(args.reps + 1):
                for ci, workers in enumerate(configs):
                    lo = rep * per_round + ci * n
                    rels = all_rels[lo : lo + n]
                    for mo in MODES:
                        if mo == "mfs-direct":  # same mount as "missionfs": other tasks
                            rels = all_rels[needed + lo : needed + lo + n]
                        if mo == "mfs-batched":  # its own mount: the same tasks again
                            rels = all_rels[lo : lo + n]
                        r = commit_rate(mo, roots[mo], rels, workers)
                        c.log(f"rep {rep} {mo} x{workers}: {r:.0f} commits/s")
                        if rep:
                            rates.setdefault((mo, workers), []).append(r)
            st = mfs.status()
        done_files = sum(len(fs) for _, _, fs in os.walk(state / "scraped-tiles"))
        expect = 2 * needed  # missionfs and mfs-direct commit into the same mount
        assert st["counts"]["done"] == expect == done_files, (st["counts"], expect, done_files)

    print(
        f"\nbench_commit: {n} commits of a {len(BODY)}-byte CSV per repetition, median of "
        f"{args.reps} after 1 warm-up, loop-mounted ext4 (journaled), commits/s"
    )
    rows = []
    for w in configs:
        med = {mo: statistics.median(rates[(mo, w)]) for mo in MODES}
        ratio = med["missionfs"] / med["native"]
        ratio_b = med["mfs-batched"] / med["native"]
        rows.append(
            [
                f"{w} worker{'s' if w > 1 else ''}",
                f"{med['native']:.0f}",
                f"{med['native+dirsync']:.0f}",
                f"{med['passthrough']:.0f}",
                f"{med['missionfs']:.0f}",
                f"{med['mfs-direct']:.0f}",
                f"{med['mfs-batched']:.0f}",
                f"{med['passthrough'] / med['native']:.2f}x",
                f"{ratio:.2f}x",
                f"{med['missionfs'] / med['native+dirsync']:.2f}x",
                f"{ratio_b:.2f}x",
                f"{med['mfs-batched'] / med['passthrough']:.2f}x",
                f">= {TARGET}x native",
                "ok" if max(ratio, ratio_b) >= TARGET else "MISS",
            ]
        )
    c.print_table(
        [
            "workers",
            "native",
            "native+dirsync",
            "passthrough",
            "missionfs",
            "mfs direct write",
            "mfs batched",
            "passthrough/native",
            "mfs/native",
            "mfs/nat+dirsync",
            "batched/native",
            "batched/passthrough",
            "target",
            "",
        ],
        rows,
    )
    print(
        "\nnote: native = write tmp/X, fsync, makedirs(exist_ok), rename (no directory fsync).\n"
        "missionfs additionally reads back and validates the CSV and fsyncs the witness directory\n"
        "on every commit (link + dir fsync + unlink of the tmp name): it is more durable than\n"
        "`native`; `native+dirsync` adds that directory fsync to the native protocol.\n"
        "`mfs direct write` (informational) is the other commit path: open done/REL, write,\n"
        "fsync, close (the commit runs in flush, outside the kernel's rename lock).\n"
        "`passthrough` = the native protocol through a minimal pyfuse3 passthrough of a directory\n"
        "(bench/passthrough_fs.py: no validation, no state): the floor of any pyfuse3 filesystem.\n"
        f"missionfs status after the run: {st['counts']['done']} done, commits {st['commits']}, "
        f"refused {st['refused']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
