"""Daemon memory and mount time for a 10M-task mission half done (issue target: <= 64 MiB of
state, mount <= 2 s), and mount time of a real 1M-witness state directory with and without the
start-up index (the "mounts in about a second" claim).

A 5M-witness tree is too slow to create here, so the half-done state is given to the daemon the
way it normally finds it at start-up: STATE/index/facts.roaring (header + roaring bitmap) with
no witness files. The files are the truth, so the daemon's background reconcile walk finds none
and drops those facts right after mounting: the daemon numbers below are taken right after the
mount (peak = VmHWM covers the moment the facts were loaded) and after `find -maxdepth 2`. The
half-done state model is also measured without a mount: bitmap sizes in this process and the RSS
of a process that loads it exactly like the daemon does (load_state + Daemon objects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import common as c
from pyroaring import BitMap

from fusefs.model.mission import load_mission
from fusefs.statedir.index import FactIndex
from fusefs.statedir.store import LocalStore

SNAPSHOT = getattr(FactIndex, "SNAPSHOT", "facts.roaring")  # STATE/index/facts.roaring
STATE_TARGET_MIB = 64.0
MOUNT_TARGET_S = 2.0


def inproc_rss(mission: str, state: str) -> None:
    """Child mode: load mission + state like `mount` does (no mount), print RSS as JSON."""
    from fusefs.fuse.daemon import Daemon

    m = load_mission(mission)
    try:
        from fusefs.engine.workspace import open_workspace
    except ImportError:  # the API before fusefs.engine.workspace existed
        from fusefs.fuse.daemon import load_state  # type: ignore[attr-defined]

        loaded = load_state(m, Path(state))
        d = Daemon(m, loaded, Path(state) / "unused-mnt", 900.0)  # type: ignore[call-arg]
    else:
        ws = open_workspace(m, Path(state), lock=False)
        d = Daemon(ws, Path(state) / "unused-mnt")
    print(json.dumps({**c.rss_kib(os.getpid()), "done": d.state.counts()["done"]}))


def measure_inproc(mission: Path, state: Path) -> dict[str, int]:
    out = c.run([c.PYTHON, __file__, "--_inproc", str(mission), str(state)], timeout=300)
    return json.loads(out)


def make_state(state: Path, snapshot: bytes | None) -> None:
    """A fresh state dir whose start-up index says `snapshot` (None: empty, no index)."""
    shutil.rmtree(state, ignore_errors=True)
    (state / "index").mkdir(parents=True)
    (state / "scraped-tiles").mkdir()
    if snapshot is not None:
        (state / "index" / SNAPSHOT).write_bytes(snapshot)


def wait_reconcile(fp: c.FuseProc, timeout: float = 300.0) -> tuple[float, dict]:
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while True:
        st = fp.status()
        if st["reconcile"] == "done" or time.monotonic() > deadline:
            return time.perf_counter() - t0, st
        time.sleep(0.01)


def mount_once(mission: Path, mnt: Path, state: Path, find: bool) -> dict[str, float | int | str]:
    """Spawn -> mounted time, RSS right after, reconcile, and optionally a find -maxdepth 2."""
    r: dict[str, float | int | str] = {}
    with c.mounted(lambda: c.start_missionfs(mission, mnt, state)) as fp:
        r["mount_s"] = fp.mount_seconds
        rss = c.rss_kib(fp.pid)
        st = fp.status()
        r["rss_mount"], r["hwm_mount"] = rss["VmRSS"], rss["VmHWM"]
        r["done_at_mount"], r["reconcile_at_mount"] = st["counts"]["done"], st["reconcile"]
        r["reconcile_s"], st = wait_reconcile(fp)
        r["done_after_reconcile"] = st["counts"]["done"]
        if find:
            dt, out = c.shell_time(f"find '{mnt}/pending' -maxdepth 2 | wc -l")
            rss = c.rss_kib(fp.pid)
            r["find_s"], r["find_lines"] = dt, int(out)
            r["rss_find"], r["hwm_find"] = rss["VmRSS"], rss["VmHWM"]
    return r


def med(runs: list[dict], key: str) -> float:
    return statistics.median(float(x[key]) for x in runs)


def bitmap_sizes(intent: BitMap, fact: BitMap) -> tuple[int, int, int, int]:
    """Serialized bytes of intent, fact, pending as held (and all three after run_optimize)."""
    pending = intent - fact
    held = len(intent.serialize()) + len(fact.serialize()) + len(pending.serialize())
    opt = 0
    for bm in (intent, fact, pending):
        b = bm.copy()
        b.run_optimize()
        opt += len(b.serialize())
    return len(intent.serialize()), len(fact.serialize()), held, opt


def build_witness_tree(state: Path, mission_path: Path, n: int) -> float:
    """n real witnesses (task ids 0..n-1, row by row) as hard links of one small CSV."""
    sp = load_mission(mission_path).space
    store = LocalStore(state)
    store.prepare()
    src = str(state / "one.csv")
    Path(src).write_bytes(b"name,address\n" + b'"A place","1 Main St"\n' * 4)
    t0 = time.perf_counter()
    for tile in range(-(-n // sp.nphr)):
        row, col = divmod(tile, sp.lon.n)
        d = f"{store.tiles}/{sp.lat.name(row)}/{sp.lon.name(col)}"
        os.makedirs(d, exist_ok=True)
        for ph in range(min(sp.nphr, n - tile * sp.nphr)):
            os.link(src, f"{d}/{sp.phrase_names[ph]}")
    os.unlink(src)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--_inproc":
        inproc_rss(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1M-task mission, no real-witness part")
    p.add_argument("--reps", type=int, default=3, help="repetitions after one warm-up")
    p.add_argument("--witnesses", type=int, default=1_000_000, help="real witnesses (1M)")
    args = p.parse_args(argv)
    rows = 100 if args.quick else 1000
    reps = args.reps
    with c.tmpfs("16G") as work:
        mission = c.write_mission(
            work / "scale.toml", "bench-scale", rows, 1000, c.phrases(10), step="0.001"
        )
        tiny = c.write_mission(work / "tiny.toml", "bench-tiny", 3, 4, c.phrases(2))
        t0 = time.perf_counter()
        m = load_mission(mission)
        load_s = time.perf_counter() - t0
        n = len(m.intent)
        c.log(f"mission: {n} tasks, parsed in {load_s:.2f} s; building half-done fact sets")
        rng = random.Random(20251125)
        patterns = {
            "stride": BitMap(range(0, n, 2)),
            "random": BitMap(rng.sample(range(n), n // 2)),
        }

        # -- baseline: the daemon for a tiny mission (interpreter + libraries) -----------------
        c.log("tiny mission daemon (baseline)")
        tiny_runs = []
        for i in range(reps + 1):
            make_state(work / "tiny-state", None)
            r = mount_once(tiny, work / "mnt-tiny", work / "tiny-state", find=True)
            if i:
                tiny_runs.append(r)
        make_state(work / "tiny-state", None)
        tiny_inproc = measure_inproc(tiny, work / "tiny-state")

        # -- 10M half done, from the start-up index ---------------------------------------------
        results: dict[str, dict] = {}
        for name, facts in patterns.items():
            c.log(f"{name}: {len(facts)} facts; writing the index, then {reps + 1} mounts")
            state = work / f"state-{name}"
            make_state(state, None)
            FactIndex(state / "index", m.space).snapshot(facts, 1)
            snap = (state / "index" / SNAPSHOT).read_bytes()
            inproc = measure_inproc(mission, state)
            runs = []
            for i in range(reps + 1):
                make_state(state, snap)
                # After the reconcile both patterns serve the same all-pending tree: one find.
                last = i == reps and name == list(patterns)[-1]
                r = mount_once(mission, work / f"mnt-{name}", state, find=last)
                if i:
                    runs.append(r)
            results[name] = {
                "facts": len(facts),
                "sizes": bitmap_sizes(m.intent, facts),
                "index_bytes": len(snap),
                "inproc": inproc,
                "runs": runs,
            }

        # -- a real 1M-witness state dir: index vs full walk --------------------------------------
        real: dict | None = None
        if not args.quick:
            nw = min(args.witnesses, n)
            state = work / "state-real"
            c.log(f"creating {nw} real witness files (hard links) on tmpfs")
            create_s = build_witness_tree(state, mission, nw)
            c.log(f"created in {create_s:.1f} s; native walks")
            find_runs = [
                c.shell_time(f"find '{state}/scraped-tiles' -type f | wc -l")[0]
                for _ in range(reps + 1)
            ][1:]
            scan_runs = [
                c.timed(lambda: sum(1 for _ in LocalStore(state).scan())) for _ in range(reps + 1)
            ][1:]
            walk_runs, index_runs = [], []
            c.log(f"real {nw}: warm-up mount (walks the tree, writes the index)")
            mount_once(mission, work / "mnt-real", state, find=False)
            for i in range(1, reps + 1):
                for mode in ("walk", "index"):
                    if mode == "walk":
                        for f in (state / "index").iterdir():
                            f.unlink()
                    c.log(f"real {nw}: mount with {mode} (rep {i})")
                    r = mount_once(mission, work / "mnt-real", state, find=False)
                    if i:
                        (walk_runs if mode == "walk" else index_runs).append(r)
            real = {
                "n": nw,
                "create_s": create_s,
                "find_s": statistics.median(find_runs),
                "scan_s": statistics.median(scan_runs),
                "walk": walk_runs,
                "index": index_runs,
            }

    # -- report ---------------------------------------------------------------------------------
    tiny_rss = med(tiny_runs, "rss_mount")
    label = f"{n / 1e6:g}M"
    print(
        f"\nbench_scale: {n} tasks ({rows}x1000 tiles x 10 phrases, step 0.001), half done; "
        f"median of {reps} mounts after 1 warm-up; state dirs on tmpfs"
    )
    print(f"mission parse + Intent bitmap in this process: {load_s * 1e3:.0f} ms\n")
    table = [
        [
            "tiny mission (24 tasks)",
            "-",
            c.fmt_s(med(tiny_runs, "mount_s")),
            c.mib(tiny_rss),
            c.mib(med(tiny_runs, "hwm_mount")),
            c.mib(tiny_runs[-1]["rss_find"]),
            "-",
            c.mib(tiny_inproc["VmRSS"]),
        ]
    ]
    for name, res in results.items():
        runs = res["runs"]
        table.append(
            [
                f"{label} half done, {name}",
                f"{res['index_bytes'] / 1024:.0f} KiB",
                c.fmt_s(med(runs, "mount_s")),
                c.mib(med(runs, "rss_mount")),
                c.mib(med(runs, "hwm_mount")),
                c.mib(runs[-1]["rss_find"]) if "rss_find" in runs[-1] else "(same tree)",
                c.mib(med(runs, "rss_mount") - tiny_rss),
                c.mib(res["inproc"]["VmRSS"]),
            ]
        )
    c.print_table(
        [
            "daemon",
            "index file",
            "mount",
            "RSS@mount",
            "peak@mount",
            "RSS after find",
            "RSS - tiny",
            "RSS loaded (no mount)",
        ],
        table,
    )
    print()
    srows = []
    for name, res in results.items():
        ib, fb, held, opt = res["sizes"]
        inproc_state = (res["inproc"]["VmRSS"] - tiny_inproc["VmRSS"]) / 1024
        srows.append(
            [
                name,
                f"{ib / 1024:.1f} KiB",
                f"{fb / 1024:.0f} KiB",
                f"{held / 2**20:.2f} MiB",
                f"{opt / 2**20:.2f} MiB",
                f"{inproc_state:.1f} MiB",
                f"<= {STATE_TARGET_MIB:.0f} MiB",
                "ok" if max(held / 2**20, inproc_state) <= STATE_TARGET_MIB else "MISS",
            ]
        )
    c.print_table(
        [
            "state model",
            "intent",
            "fact",
            "intent+fact+pending",
            "same, run_optimized",
            "loaded RSS - tiny",
            "target",
            "",
        ],
        srows,
    )
    print()
    mrows = []
    for name, res in results.items():
        runs = res["runs"]
        ms = med(runs, "mount_s")
        last = runs[-1]
        mrows.append(
            [
                f"{label} half done, {name}",
                c.fmt_s(ms),
                f"{c.fmt_s(med(tiny_runs, 'mount_s'))}",
                f"{ms / med(tiny_runs, 'mount_s'):.2f}x",
                f"<= {MOUNT_TARGET_S:.0f} s",
                "ok" if ms <= MOUNT_TARGET_S else "MISS",
                f"{last['done_at_mount']} -> {last['done_after_reconcile']}",
                f"{c.fmt_s(last['find_s'])} ({last['find_lines']} lines)"
                if "find_s" in last
                else "(same tree after reconcile)",
            ]
        )
    c.print_table(
        [
            "mount time",
            "missionfs",
            "tiny mission",
            "ratio",
            "target",
            "",
            "done: at mount -> after reconcile",
            "find pending -maxdepth 2",
        ],
        mrows,
    )
    print(
        "\nhonesty notes: the 5M witness files are NOT materialised; the half-done state is only\n"
        "in STATE/index/facts.roaring. The daemon's background reconcile walk (files are the truth)\n"
        "therefore finds no witness and drops those facts right after mounting (see 'done: at\n"
        "mount -> after reconcile'); 'RSS after find' is measured on that all-pending tree.\n"
        "'RSS loaded (no mount)' is a process that loads the same mission + index exactly like\n"
        "`mount` (open_workspace + Daemon objects) without mounting, so the half-done state stays\n"
        "in memory; 'loaded RSS - tiny' subtracts the same measurement for the tiny mission."
    )
    if real is not None:
        print()
        w, ix = real["walk"], real["index"]
        rrows = [
            [
                "index present",
                c.fmt_s(med(ix, "mount_s")),
                f"<= {MOUNT_TARGET_S:.0f} s",
                "ok" if med(ix, "mount_s") <= MOUNT_TARGET_S else "MISS",
                c.fmt_s(med(ix, "reconcile_s")),
                c.mib(med(ix, "rss_mount")),
                f"{ix[-1]['done_after_reconcile']}",
            ],
            [
                "index deleted (full walk)",
                c.fmt_s(med(w, "mount_s")),
                f"<= {MOUNT_TARGET_S:.0f} s",
                "ok" if med(w, "mount_s") <= MOUNT_TARGET_S else "MISS",
                c.fmt_s(med(w, "reconcile_s")),
                c.mib(med(w, "rss_mount")),
                f"{w[-1]['done_after_reconcile']}",
            ],
        ]
        print(
            f"real state dir: {real['n']} witness files in {real['n'] // 10} tile dirs on tmpfs "
            f"(hard links of one 60-byte CSV; created in {real['create_s']:.1f} s)"
        )
        c.print_table(
            [
                "mount of real state",
                "spawn -> mounted",
                "target",
                "",
                "background reconcile after mount",
                "RSS@mount",
                "done",
            ],
            rrows,
        )
        print(
            f"baseline walks of the same tree: `find -type f | wc -l` {c.fmt_s(real['find_s'])}, "
            f"LocalStore.scan() in-process {c.fmt_s(real['scan_s'])} (median of {reps})\n"
            "note: tmpfs pins its dentries, so these walks are warm; on a disk after a reboot "
            "the walk is several times slower (BASELINES: 5-11 s cold for 1M)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
