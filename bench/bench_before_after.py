"""bench_mount and bench_commit for two checkouts side by side in one run: this one ("after")
and the commit before the layering of issue 14 ("before", 2407e2f by default).

Usage: python bench/bench_before_after.py [--before REF] [--quick] [--reps N] [-n COMMITS]

The before tree is `git archive REF` unpacked into a temp dir (no worktree is registered in the
repository); its daemon runs with PYTHONPATH pointing there, from bench/ (so `-m fusefs` does not
pick up ./fusefs). Both daemons are mounted at once on the same mission and are measured
alternately, round by round (the order flips every round), so machine load drifts over both
alike. Listing: `find pending -type f | wc -l` and `ls -l` of a big directory, cold (dentries
dropped before each run) and warm. Commits: the Maildir protocol of bench_commit.py (write
tmp/X + fsync + rename to done/REL) with 1 and 4 worker processes on one loop-mounted ext4.
Prints one table with medians and the after/before ratio; the spread of the rounds is the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import bench_commit
import bench_mount
import common as c

from fusefs.model.mission import load_mission

SIDES = ("before", "after")


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of `ref` in a temp dir (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix="bench-before-", dir="/var/tmp"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(c.ROOT), "archive", ref], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(d)], input=archive.stdout, check=True)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def spread(xs: list[float]) -> str:
    """Median and the relative half-range of the rounds: how noisy this cell was."""
    med = statistics.median(xs)
    half = (max(xs) - min(xs)) / 2 / med * 100 if med else 0.0
    return f"±{half:.0f}%"


def listing(work: Path, old: Path, reps: int, quick: bool) -> list[list[str]]:
    """Cold and warm `find` and `ls -l` on both daemons, alternating; table rows."""
    shape, entries = ((20, 20, 10), 1000) if quick else ((50, 50, 10), 5000)
    fm = c.write_mission(work / "find.toml", "ba-find", *shape[:2], c.phrases(shape[2]))
    lm = c.write_mission(work / "ls.toml", "ba-ls", 1, 1, c.phrases(entries))
    n_find = shape[0] * shape[1] * shape[2]
    rows: list[list[str]] = []
    rows += listing_test(work, old, reps, f"find {n_find // 1000}k", fm, FIND, str(n_find))
    rows += listing_test(work, old, reps, f"ls -l {entries // 1000}k-dir", lm, LS, str(entries))
    return rows


FIND = "find '{r}/pending' -type f | wc -l"
LS = "ls -l '{r}/pending/10.00/20.00' | tail -n +2 | wc -l"


def listing_test(
    work: Path, old: Path, reps: int, name: str, mission: Path, cmd: str, expect: str
) -> list[list[str]]:
    """One listing command on a fresh mount of each side: cold rounds, then warm rounds."""
    tag = name.split()[0].replace("-", "")
    times: dict[tuple[str, str], list[float]] = {}
    before = c.mounted(
        lambda: c.start_missionfs(mission, work / f"b-{tag}", work / f"sb-{tag}", checkout=old)
    )
    with (
        before as b,
        c.mounted(lambda: c.start_missionfs(mission, work / f"a-{tag}", work / f"sa-{tag}")) as a,
    ):
        roots = {"before": b.mnt, "after": a.mnt}
        for phase in ("cold", "warm"):
            for rnd in range(reps + 1):  # round 0 is the warm-up
                for side in SIDES if rnd % 2 else SIDES[::-1]:
                    if phase == "cold":
                        c.drop_caches()
                    dt = bench_mount.measure(cmd.format(r=roots[side]), expect)
                    if rnd:
                        times.setdefault((phase, side), []).append(dt)
        mounts = {"before": b.mount_seconds, "after": a.mount_seconds}
    c.log(f"{name}: done")
    rows = [
        row(f"{name} {ph}", times[(ph, "before")], times[(ph, "after")], c.fmt_s, "time")
        for ph in ("cold", "warm")
    ]
    ratio = f"{mounts['after'] / mounts['before']:.2f}x"
    mb, ma = c.fmt_s(mounts["before"]), c.fmt_s(mounts["after"])
    return [*rows, [f"{name} mount", mb, "", ma, "", ratio, "time (1 sample)"]]


def row(
    what: str, before: list[float], after: list[float], fmt: Callable[[float], str], unit: str
) -> list[str]:
    """Medians of both sides, their spread and the after/before ratio."""
    mb, ma = statistics.median(before), statistics.median(after)
    return [what, fmt(mb), spread(before), fmt(ma), spread(after), f"{ma / mb:.2f}x", unit]


def commits(old: Path, reps: int, n: int) -> list[list[str]]:
    """Commit rates (1 and 4 workers) on both daemons over one ext4, alternating; table rows."""
    configs = (1, 4)
    rates: dict[tuple[str, int], list[float]] = {}
    with c.loop_ext4("1G") as ext4:
        mission = c.write_mission(ext4 / "commit.toml", "ba-commit", 100, 100, c.phrases(10))
        m = load_mission(mission)
        rels = [m.space.rel(t) for t in m.intent]
        if n * len(configs) * (reps + 1) > len(rels):
            raise SystemExit(f"-n {n} needs more tasks than the mission has ({len(rels)})")
        with (
            c.mounted(
                lambda: c.start_missionfs(mission, ext4 / "mnt-b", ext4 / "st-b", checkout=old)
            ) as b,
            c.mounted(lambda: c.start_missionfs(mission, ext4 / "mnt-a", ext4 / "st-a")) as a,
        ):
            roots = {"before": b.mnt, "after": a.mnt}
            lo = 0
            for rnd in range(reps + 1):
                for w in configs:
                    chunk = rels[lo : lo + n]  # the same tasks on both sides: same tiles, dirs
                    lo += n
                    for side in SIDES if rnd % 2 else SIDES[::-1]:
                        r = bench_commit.commit_rate("missionfs", roots[side], chunk, w)
                        c.log(f"round {rnd} {side} x{w}: {r:.0f} commits/s")
                        if rnd:
                            rates.setdefault((side, w), []).append(r)
            done = {s: fp.status()["counts"]["done"] for s, fp in (("before", b), ("after", a))}
    expect = n * len(configs) * (reps + 1)
    if done != {"before": expect, "after": expect}:
        raise RuntimeError(f"done counts {done}, expected {expect} each")
    return [
        row(
            f"commit x{w}",
            rates[("before", w)],
            rates[("after", w)],
            lambda x: f"{x:.0f}/s",
            "commits/s",
        )
        for w in configs
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="2407e2f", help="the ref to compare with (2407e2f)")
    p.add_argument("--reps", type=int, default=5, help="measured rounds per cell (5)")
    p.add_argument("-n", type=int, default=300, help="commits per round and worker config")
    p.add_argument("--quick", action="store_true", help="small trees (for the test)")
    args = p.parse_args(argv)
    with checkout(args.before) as old, c.tmpfs("4G") as work:
        c.log(f"before = {args.before} in {old}")
        rows = listing(work, old, args.reps, args.quick) + commits(old, args.reps, args.n)
    print(
        f"\nbench_before_after: before = {args.before}, after = this checkout; medians of "
        f"{args.reps} alternating rounds (after 1 warm-up); ± = half the range of the rounds"
    )
    c.print_table(["test", "before", "±", "after", "±", "after/before", "unit"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
