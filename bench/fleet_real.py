"""Issue 15's real-server proof: 3 then 12 real mounts on ONE SeaweedFS, requests counted.

Each mount is a separate `missionfs mount` daemon (own state dir, `claims = "strict"`,
`--refresh R`) whose S3 traffic goes through its own counting proxy (tests/support/s3_proxy.py)
to one SeaweedFS server on 127.0.0.1; each mount runs W shell workers
(scraper/examples/worker.sh with a generator that "works" --task-seconds per task). Both runs
use the same tasks per mount, workers per mount and task time (tests/support/fleet_run.py says
why this makes the comparison fair). It prints, per completed task, the requests by kind and by
key area, the 12 vs 3 ratio (target: within 20 %), tasks/s, convergence (every mount knows
every fact) and staleness (per fact: its commit on one mount -> `done/REL` seen on each
other mount, at 0.5 s resolution).

    .venv/bin/python bench/fleet_real.py                       # 3 vs 12, 24 tasks per mount
    .venv/bin/python bench/fleet_real.py --mounts 3 12 --tasks 16 --refresh 2 --json out.json
    .venv/bin/python bench/fleet_real.py --table v1=before.json v2=after.json   # side by side

Everything it starts (SeaweedFS, proxies, daemons, workers) is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fleet_run import (  # noqa: E402
    AREAS,
    KINDS,
    FleetResult,
    FleetSpec,
    run_fleet,
    summary,
)
from tests.support.s3_servers import SeaweedServer  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _row(label: str, values: list[str]) -> str:
    return f"| {label} | " + " | ".join(values) + " |"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _spread(r: FleetResult) -> str:
    per = r.by(0)
    return f"{min(per.values(), default=0)} / {max(per.values(), default=0)}"


def table(results: list[FleetResult]) -> str:
    """Per-task requests by kind and by area, one column per fleet size, plus the ratio."""
    first, last = results[0], results[-1]
    head = [f"{r.spec.mounts} mounts" for r in results] + [
        f"{last.spec.mounts} vs {first.spec.mounts}"
    ]
    lines = [_row("per completed task", head), "|" + "---|" * (len(head) + 1)]

    def add(label: str, vals: list[float]) -> None:
        ratio = f"{vals[-1] / vals[0]:.2f}x" if vals[0] else "-"
        lines.append(_row(label, [f"{v:.3f}" for v in vals] + [ratio]))

    add("**all requests**", [r.requests_per_task for r in results])
    add("reads (GET+HEAD+LIST)", [r.reads_per_task for r in results])
    for kind in KINDS:
        add(kind, [r.per_task(1).get(kind, 0.0) for r in results])
    areas = list(AREAS) + sorted({a for r in results for a in r.by(2)} - set(AREAS))
    for area in areas:
        vals = [r.per_task(2).get(area, 0.0) for r in results]
        if any(vals):
            add(f"area {area}", vals)
    for label, fn in (
        ("tasks done / total", lambda r: f"{r.done}/{r.total}"),
        ("tasks/s (fleet)", lambda r: f"{r.rate:.2f}"),
        ("tasks/s per mount", lambda r: f"{r.rate / r.spec.mounts:.2f}"),
        ("work s (workers start -> last commit)", lambda r: f"{r.work_seconds:.1f}"),
        ("converged s (every mount knows every fact)", lambda r: f"{r.converge_seconds}"),
        (
            "requests per node-window",
            lambda r: f"{sum(r.run_counts.values()) / r.node_windows:.2f}",
        ),
        ("node-windows per task", lambda r: f"{r.node_windows / max(1, r.done):.2f}"),
        (
            "claim races lost per task",
            lambda r: f"{r.sync_totals['claims_lost'] / max(1, r.done):.2f}",
        ),
        ("run requests per mount min / max", _spread),
        (
            "start-up requests per mount",
            lambda r: f"{sum(r.start_counts.values()) / r.spec.mounts:.1f}",
        ),
        ("staleness p50 / p99 s", lambda r: f"{_s(r.staleness(0.5))} / {_s(r.staleness(0.99))}"),
    ):
        lines.append(_row(label, [fn(r) for r in results] + [""]))
    return "\n".join(lines)


def matrix(res: FleetResult) -> str:
    """Requests per task by area (rows) and kind (columns) of one run."""
    cells: dict[tuple[str, str], int] = {}
    for (_, kind, area), n in res.run_counts.items():
        cells[(area, kind)] = cells.get((area, kind), 0) + n
    areas = sorted({a for a, _ in cells})
    lines = [
        _row(f"{res.spec.mounts} mounts: area \\ kind", list(KINDS)),
        "|" + "---|" * (len(KINDS) + 1),
    ]
    for area in areas:
        lines.append(
            _row(area, [f"{cells.get((area, k), 0) / max(1, res.done):.3f}" for k in KINDS])
        )
    return "\n".join(lines)


def side_by_side(runs: dict[str, list[dict[str, Any]]]) -> str:
    """One table from the --json files of several runs (e.g. before / after): per completed
    task, by kind and by area, each fleet size and the ratio of the last to the first."""
    cols: list[tuple[str, dict[str, Any]]] = []
    for label, summaries in runs.items():
        for sm in summaries:
            cols.append((f"{label} {sm['mounts']}", sm))
    head = []
    for label, summaries in runs.items():
        head += [f"{label}: {sm['mounts']} mounts" for sm in summaries]
        head.append(f"{label}: {summaries[-1]['mounts']} vs {summaries[0]['mounts']}")
    lines = [_row("per completed task", head), "|" + "---|" * (len(head) + 1)]

    def num(get: Any, label: str) -> None:
        cells = []
        for summaries in runs.values():
            vals = [float(get(sm)) for sm in summaries]
            cells += [f"{v:.2f}" for v in vals]
            cells.append(f"{vals[-1] / vals[0]:.2f}x" if vals[0] else "-")
        if any(c not in ("0.00", "-") for c in cells):
            lines.append(_row(label, cells))

    def text(get: Any, label: str) -> None:
        cells = []
        for summaries in runs.values():
            cells += [str(get(sm)) for sm in summaries] + [""]
        lines.append(_row(label, cells))

    num(lambda sm: sm["requests_per_task"], "**all requests**")
    num(lambda sm: sm["reads_per_task"], "reads (GET+HEAD+LIST)")
    for kind in KINDS:
        num(lambda sm, k=kind: sm["per_task_by_kind"].get(k, 0.0), kind)
    found = {a for _, sm in cols for a in sm["per_task_by_area"]}
    for area in [a for a in AREAS if a in found] + sorted(found - set(AREAS)):
        num(lambda sm, a=area: sm["per_task_by_area"].get(a, 0.0), f"area {area}")
    num(lambda sm: sm["claims_lost_per_task"], "claim races lost")
    num(lambda sm: sm["windows_per_task"], "node-windows per task")
    text(lambda sm: f"{sm['done']}/{sm['tasks']}", "tasks done / total")
    text(lambda sm: sm["tasks_per_second"], "tasks/s (fleet)")
    text(lambda sm: f"{sm['tasks_per_second'] / sm['mounts']:.2f}", "tasks/s per mount")
    text(lambda sm: sm["converge_seconds"], "s until every mount knows every fact")
    text(lambda sm: sm["start_per_mount"], "start-up requests per mount")
    text(
        lambda sm: f"{_s(sm['staleness_p50'])} / {_s(sm['staleness_p99'])}",
        "staleness p50 / p99 (s)",
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mounts", type=int, nargs="+", default=[3, 12], help="fleet sizes (3 12)")
    ap.add_argument("--workers", type=int, default=2, help="shell workers per mount (2)")
    ap.add_argument("--tasks", type=int, default=24, help="tasks per mount (24)")
    ap.add_argument("--refresh", type=float, default=3.0, help="--refresh of every mount (3)")
    ap.add_argument("--task-seconds", type=float, default=6.0, help="work per task (6)")
    ap.add_argument("--full-refresh", type=float, default=None, help="--full-refresh (default)")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds per fleet (600)")
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    ap.add_argument(
        "--table",
        nargs="+",
        metavar="LABEL=JSON",
        help="run nothing: print one side-by-side table of earlier --json outputs",
    )
    args = ap.parse_args()
    if args.table:
        runs = {}
        for item in args.table:
            label, _, path = item.partition("=")
            runs[label] = json.loads(Path(path).read_text())
        print(side_by_side(runs))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fleet-real-"))
    server = SeaweedServer(tmp / "seaweed")
    results: list[FleetResult] = []
    try:
        server.start()
        log(f"SeaweedFS on {server.endpoint}; scratch {tmp}")
        for n in args.mounts:
            spec = FleetSpec(
                mounts=n,
                workers=args.workers,
                tasks=args.tasks,
                refresh=args.refresh,
                task_seconds=args.task_seconds,
                full_refresh=args.full_refresh,
                deadline=args.deadline,
            )
            results.append(run_fleet(server, spec, tmp / f"n{n}", log))
    finally:
        server.stop()
        if not args.keep:
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    for r in results:
        print()
        print(matrix(r))
    print()
    for r in results:
        for note in r.notes:
            print(f"- {r.spec.mounts} mounts: {note}")
    if args.json:
        args.json.write_text(json.dumps([summary(r) for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
