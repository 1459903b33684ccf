"""Listing speed of a mount: `find pending -type f | wc -l` on a 100k-task mission and `ls`/`ls -l`
of a 10k-entry directory, against the same tree as real files on tmpfs (the physical limit) and
against bench/minimal_fs.py (a static pyfuse3 tree: the Python FUSE floor).

Issue target: missionfs <= 1.5x the minimal pyfuse3 tree. The kernel caches entries for 60 s, so
each test reports the first run after a fresh mount, "cold" runs (dentries and inodes dropped
with `echo 2 > /proc/sys/vm/drop_caches` before each) and warm runs, separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common as c

from fusefs.model.mission import load_mission

TARGET = 1.5
SYSTEMS = ("native", "minimal", "missionfs")


@dataclass
class Test:
    name: str
    mission: Path
    command: Callable[[Path], str]  # mount root -> bash command
    expect: str | None = None  # expected stdout (sanity check that the trees agree)
    results: dict[str, dict[str, float]] = field(default_factory=dict)


def materialise(mission: Path, root: Path) -> int:
    """The pending tree as real ~200-byte files (same names as the mount shows)."""
    m = load_mission(mission)
    body = b"x" * 199 + b"\n"
    made: set[str] = set()
    n = 0
    for task in m.intent:
        rel = m.space.rel(task)
        d = rel.rsplit("/", 1)[0]
        if d not in made:
            os.makedirs(root / "pending" / d, exist_ok=True)
            made.add(d)
        fd = os.open(root / "pending" / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, body)
        os.close(fd)
        n += 1
    return n


def measure(cmd: str, expect: str | None) -> float:
    dt, out = c.shell_time(cmd)
    if expect is not None and out != expect:
        raise RuntimeError(f"{cmd!r} printed {out!r}, expected {expect!r}")
    return dt


def run_test(t: Test, work: Path, native_root: Path, reps: int, warm_reps: int) -> None:
    """Fresh mounts for this test; first run, then cold and warm runs interleaved by system."""
    c.log(f"{t.name}: mounting minimal + missionfs")
    tag = t.name.split()[0].replace("-", "")
    with (
        c.mounted(lambda: c.start_minimal(t.mission, work / f"min-{tag}")) as mini,
        c.mounted(
            lambda: c.start_missionfs(t.mission, work / f"mfs-{tag}", work / f"state-{tag}")
        ) as mfs,
    ):
        roots = {"native": native_root, "minimal": mini.mnt, "missionfs": mfs.mnt}
        res: dict[str, dict[str, list[float]]] = {
            s: {"first": [], "cold": [], "warm": []} for s in SYSTEMS
        }
        for s in SYSTEMS:
            res[s]["first"].append(measure(t.command(roots[s]), t.expect))
        c.log(f"{t.name}: cold runs (drop_caches before each)")
        for rep in range(reps + 1):  # first round is the warm-up
            for s in SYSTEMS:
                c.drop_caches()
                dt = measure(t.command(roots[s]), t.expect)
                if rep:
                    res[s]["cold"].append(dt)
        c.log(f"{t.name}: warm runs")
        for s in SYSTEMS:
            measure(t.command(roots[s]), t.expect)  # warm-up
        for _ in range(warm_reps):
            for s in SYSTEMS:
                res[s]["warm"].append(measure(t.command(roots[s]), t.expect))
        t.results = {s: {k: statistics.median(v) for k, v in ph.items()} for s, ph in res.items()}
        t.results["missionfs"]["mount"] = mfs.mount_seconds
        t.results["minimal"]["mount"] = mini.mount_seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4k-task find, 1k-entry dir, 3 reps")
    p.add_argument("--reps", type=int, default=3, help="cold repetitions (after one warm-up)")
    p.add_argument("--warm-reps", type=int, default=5, help="warm repetitions")
    args = p.parse_args(argv)
    if args.quick:
        find_shape, dir_entries = (20, 20, 10), 1000
    else:
        find_shape, dir_entries = (100, 100, 10), 10_000
    rows, cols, nph = find_shape
    n_find = rows * cols * nph
    with c.tmpfs("8G") as work:
        fm = c.write_mission(work / "find.toml", "bench-find", rows, cols, c.phrases(nph))
        lm = c.write_mission(work / "ls.toml", "bench-ls", 1, 1, c.phrases(dir_entries))
        c.log(f"materialising native trees on tmpfs ({n_find} + {dir_entries} files)")
        native_find, native_ls = work / "native-find", work / "native-ls"
        assert materialise(fm, native_find) == n_find
        assert materialise(lm, native_ls) == dir_entries
        tile = "pending/10.00/20.00"
        tests = [
            Test(
                f"find {n_find // 1000}k",
                fm,
                lambda r: f"find '{r}/pending' -type f | wc -l",
                str(n_find),
            ),
            Test(
                f"ls -l {dir_entries // 1000}k-dir", lm, lambda r: f"ls -l '{r}/{tile}' >/dev/null"
            ),
            Test(f"ls {dir_entries // 1000}k-dir", lm, lambda r: f"ls '{r}/{tile}' >/dev/null"),
        ]
        for t in tests:
            run_test(
                t, work, native_ls if "ls" in t.name else native_find, args.reps, args.warm_reps
            )

    print(
        f"\nbench_mount: {n_find} tasks ({rows}x{cols} tiles x {nph} phrases) for find, "
        f"1 tile x {dir_entries} phrases for ls; native = real files on tmpfs"
    )
    print(
        f"first = first run after a fresh mount; cold = median of {args.reps} after drop_caches "
        f"(1 warm-up); warm = median of {args.warm_reps} (1 warm-up)\n"
    )
    table = []
    for t in tests:
        for phase in ("first", "cold", "warm"):
            r = {s: t.results[s][phase] for s in SYSTEMS}
            ratio = r["missionfs"] / r["minimal"]
            table.append(
                [
                    t.name,
                    phase,
                    c.fmt_s(r["native"]),
                    c.fmt_s(r["minimal"]),
                    c.fmt_s(r["missionfs"]),
                    f"{r['minimal'] / r['native']:.1f}x",
                    f"{r['missionfs'] / r['native']:.1f}x",
                    f"{ratio:.2f}x",
                    f"<= {TARGET}x",
                    "ok" if ratio <= TARGET else "MISS",
                ]
            )
    c.print_table(
        [
            "test",
            "run",
            "native",
            "minimal",
            "missionfs",
            "min/nat",
            "mfs/nat",
            "mfs/min",
            "target",
            "",
        ],
        table,
    )
    mounts = ", ".join(
        f"{t.name}: missionfs {c.fmt_s(t.results['missionfs']['mount'])} / "
        f"minimal {c.fmt_s(t.results['minimal']['mount'])}"
        for t in tests
    )
    print(f"\nmount times (spawn -> mounted): {mounts}")
    print("note: tmpfs keeps its dentries pinned, so native cold == warm by construction.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
