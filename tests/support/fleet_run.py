"""A fleet of real missionfs mounts on one S3 server, each behind its own counting proxy.

Used by bench/fleet_real.py (the issue-15 proof: 3 vs 12 mounts) and tests/mount/
test_fleet_scale.py (a smaller run that asserts the scale property). Every mount is a separate
daemon process with its own state dir, `claims = "strict"`, `--refresh R`; each has W shell
workers running the documented worker (scraper/examples/worker.sh: find pending/, mv to
claimed/, the generator writes into tmp/, mv into done/) with a generator that takes
`task_seconds` (the work, simulated by `sleep`: it makes every mount's task rate the same
at any fleet size, see `FleetSpec`).

The mission holds exactly `mounts x tasks` tasks: one latitude row of `tasks / PHRASES` tiles
per mount, PHRASES phrases per tile, so the mission (and the bucket) grows with the fleet as
a real one would. Requests are counted by the proxies from the byte stream (kind x area x
mount); the run phase counted per task is from the moment the workers start to the moment
every mount knows every fact (its `status` says done == intent), so the protocol's work to
spread the last facts is included. Mount start-up (until online) is counted apart.

Nothing here sleeps to synchronise: the loop polls with a deadline. Every process it starts
(daemons, worker process groups) is stopped by its PID in `finally`, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.fuseproc import FuseProc, start_missionfs
from tests.support.mounts import ROOT, write_mission
from tests.support.s3_proxy import RequestCounts, S3Proxy
from tests.support.s3_servers import Server, s3_env

PHRASES = 4  # tasks per tile
WORKER_SH = ROOT / "scraper" / "examples" / "worker.sh"
KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
AREAS = (
    "scraped-tiles",
    "claims",
    "log",
    "segments",
    "checkpoints",
    "manifests",
    ".missionfs",
)
SAMPLE_SECONDS = 0.5  # how often each mount's status and done/ are read (staleness resolution)

# The generator worker.sh runs per task: reads the descriptor, "works" $1 seconds, prints a CSV.
GENERATOR = [
    "bash",
    "-c",
    'read -r -d "" d; sleep "$1"; printf "task,bytes\\n%s,%s\\n" fleet "${#d}"',
    "gen",
]
# worker.sh's stdout ("done REL" per commit), each line stamped with the time it was read.
WORKER_WRAPPER = (
    '"$@" | while IFS= read -r line; do printf "%s %s\\n" "$EPOCHREALTIME" "$line"; done'
)


@dataclass
class FleetSpec:
    """One fleet run. `tasks` is per mount and `task_seconds` the work of one task, so each
    mount completes about workers / task_seconds tasks/s whatever the fleet size (as long as
    the machine keeps up: the report gives the measured rates), and every mount lives through
    about the same number of windows: per-window costs weigh the same per task at 3 and 12."""

    mounts: int
    workers: int = 2
    tasks: int = 24
    refresh: float = 3.0
    task_seconds: float = 6.0
    full_refresh: float | None = None  # None: the daemon's default
    deadline: float = 600.0
    extra: tuple[str, ...] = ()  # more `missionfs mount` options


@dataclass
class FleetResult:
    spec: FleetSpec
    total: int
    mission: str
    done: int = 0  # witnesses in the bucket at the end
    conflicts: int = 0  # results that lost a race (duplicate work), in the bucket at the end
    commits: list[float] = field(default_factory=list)  # commit times, from the worker logs
    work_seconds: float = 0.0  # workers' start -> last commit
    converge_seconds: float | None = None  # workers' start -> every mount knows every fact
    start_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    run_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    known: list[int] = field(default_factory=list)  # each mount's done count at the end
    lags: list[float] = field(default_factory=list)  # per (fact, other mount): commit -> seen
    notes: list[str] = field(default_factory=list)
    sync_totals: Counter[str] = field(default_factory=Counter)  # status.sync counters, summed

    @property
    def converged(self) -> bool:
        return self.converge_seconds is not None and all(k == self.total for k in self.known)

    @property
    def rate(self) -> float:
        return self.done / self.work_seconds if self.work_seconds > 0 else 0.0

    def by(self, index: int, counts: Counter[tuple[str, str, str]] | None = None) -> Counter[str]:
        """Run-phase requests summed by kind (index 1), area (2) or mount (0)."""
        out: Counter[str] = Counter()
        for key, n in (self.run_counts if counts is None else counts).items():
            out[key[index]] += n
        return out

    def per_task(self, index: int) -> dict[str, float]:
        return {k: n / max(1, self.done) for k, n in self.by(index).items()}

    @property
    def requests_per_task(self) -> float:
        return sum(self.run_counts.values()) / max(1, self.done)

    @property
    def reads_per_task(self) -> float:
        kinds = self.by(1)
        return sum(kinds[k] for k in ("GET", "HEAD", "LIST")) / max(1, self.done)

    @property
    def node_windows(self) -> float:
        """Windows lived by the fleet in the run phase (mounts x counted seconds / refresh)."""
        seconds = self.converge_seconds or self.work_seconds
        return self.spec.mounts * seconds / self.spec.refresh

    def staleness(self, q: float) -> float | None:
        if not self.lags:
            return None
        s = sorted(self.lags)
        return s[min(len(s) - 1, int(q * len(s)))]


def write_fleet_mission(path: Path, name: str, mounts: int, tasks: int, bucket: str) -> int:
    """A mission of exactly mounts x tasks tasks (rows = mounts), strict claims in `bucket`."""
    cols = max(1, math.ceil(tasks / PHRASES))
    st = Decimal("0.01")
    s, w = Decimal("10.00"), Decimal("20.00")
    extra = f'[store]\ns3 = "s3://{bucket}/runs"\nclaims = "strict"\n'
    write_mission(
        path,
        name,
        str(s),
        str(w),
        str(s + mounts * st),
        str(w + cols * st),
        step="0.01",
        phrases=tuple(f"phrase {i:02d}" for i in range(PHRASES)),
        extra=extra,
    )
    return mounts * cols * PHRASES


class Workers:
    """Shell worker pipelines we started, each in its own process group (stopped by its PID)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, mnt: Path, log: Path, task_seconds: float) -> None:
        cmd = ["bash", "-c", WORKER_WRAPPER, "wrap", "bash", str(WORKER_SH), str(mnt)]
        cmd += [*GENERATOR, str(task_seconds)]
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )

    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # the group we created for it
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


def read_commits(logs: list[Path]) -> list[float]:
    """Commit times ("EPOCH done REL" lines), sorted."""
    times: list[float] = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text().splitlines():
                ts, _, what = line.partition(" ")
                if what.startswith("done "):
                    times.append(float(ts))
    return sorted(times)


class Staleness:
    """Per-fact staleness: for every commit on one mount (its worker's log line), the delay
    until `done/REL` is visible on each OTHER mount, checked every sample (so at the sampling
    resolution, SAMPLE_SECONDS). Reads the worker logs as they grow."""

    def __init__(self, logs: list[Path], mounts: list[Path]) -> None:
        self.logs, self.mounts = logs, mounts
        self.offsets = [0] * len(logs)
        self.outstanding: list[dict[str, float]] = [{} for _ in mounts]  # rel -> commit time
        self.lags: list[float] = []

    def _new_commits(self) -> None:
        for i, log in enumerate(self.logs):
            try:
                with open(log, "rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[i] += len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                ts, _, what = line.partition(" ")
                if not what.startswith("done "):
                    continue
                origin = i % len(self.mounts)  # worker i runs on mount i % mounts
                for m in range(len(self.mounts)):
                    if m != origin:
                        self.outstanding[m][what[5:]] = float(ts)

    def sample(self) -> None:
        self._new_commits()
        for m, mnt in enumerate(self.mounts):
            now = time.time()
            for rel, t in list(self.outstanding[m].items()):
                if os.path.exists(mnt / "done" / rel):
                    self.lags.append(max(0.0, now - t))
                    del self.outstanding[m][rel]

    @property
    def unseen(self) -> int:
        return sum(len(x) for x in self.outstanding)


def _done(fp: FuseProc) -> int | None:
    try:
        return int(fp.status()["counts"]["done"])
    except (OSError, ValueError, KeyError):
        return None


def _online(fp: FuseProc) -> bool:
    try:
        return bool(fp.status()["sync"]["online"])
    except (OSError, ValueError, KeyError):
        return False


def wait_until(pred: Any, deadline: float, what: str) -> None:
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def bucket_count(server: Server, bucket: str, prefix: str) -> int:
    """Objects under prefix, listed directly (not through the proxies: not counted)."""
    n = 0
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        n += len(page.get("Contents", []))
    return n


def _start_mounts(
    spec: FleetSpec, mission: Path, tmp: Path, proxies: list[S3Proxy], procs: list[FuseProc]
) -> None:
    """Start every daemon (in parallel: start-up is mostly imports); fail if any fails."""

    def one(i: int) -> FuseProc:
        extra = ["--endpoint-url", proxies[i].endpoint, "--worker", f"n{i:02d}"]
        extra += ["--refresh", str(spec.refresh)]
        if spec.full_refresh is not None:
            extra += ["--full-refresh", str(spec.full_refresh)]
        return start_missionfs(
            mission,
            tmp / f"mnt{i}",
            tmp / f"state{i}",
            ROOT,
            extra=(*extra, *spec.extra),
            env=s3_env(),
        )

    with ThreadPoolExecutor(max_workers=min(spec.mounts, 4)) as pool:
        futures = [pool.submit(one, i) for i in range(spec.mounts)]
        errors = []
        for f in futures:
            try:
                procs.append(f.result())
            except Exception as e:  # every started daemon is still stopped by the caller
                errors.append(e)
    if errors:
        raise RuntimeError(f"{len(errors)} mount(s) failed to start: {errors[0]}")


def run_fleet(server: Server, spec: FleetSpec, tmp: Path, log: Any = None) -> FleetResult:
    """Run one fleet to completion (or its deadline) and return what was measured."""
    say = log or (lambda msg: None)
    tmp.mkdir(parents=True, exist_ok=True)
    name = f"fleet{spec.mounts}-{uuid.uuid4().hex[:6]}"
    bucket = server.bucket(f"fleet-{spec.mounts}-{uuid.uuid4().hex[:8]}")
    mission = tmp / "mission.toml"
    total = write_fleet_mission(mission, name, spec.mounts, spec.tasks, bucket)
    res = FleetResult(spec, total, name)
    counts = RequestCounts(bucket, f"runs/{name}")
    proxies = [S3Proxy(server.endpoint, counts, f"m{i:02d}").start() for i in range(spec.mounts)]
    procs: list[FuseProc] = []
    workers = Workers()
    deadline = time.monotonic() + spec.deadline
    try:
        t = time.monotonic()
        _start_mounts(spec, mission, tmp, proxies, procs)
        wait_until(lambda: all(_online(p) for p in procs), deadline, "every mount online")
        say(f"{spec.mounts} mounts online in {time.monotonic() - t:.1f} s ({total} tasks)")
        res.start_counts = counts.snapshot()
        logs = [tmp / f"worker{i}.log" for i in range(spec.mounts * spec.workers)]
        t0 = time.time()
        for i, wlog in enumerate(logs):
            workers.start(procs[i % spec.mounts].mnt, wlog, spec.task_seconds)
        _watch(res, procs, workers, logs, t0, deadline, say)
        res.run_counts = counts.snapshot() - res.start_counts
        res.done = bucket_count(server, bucket, f"runs/{name}/scraped-tiles/")
        res.conflicts = bucket_count(server, bucket, f"runs/{name}/conflicts/")
        if res.done != total:
            res.notes.append(f"{res.done} of {total} witnesses in the bucket")
        errors = [e for p in proxies for e in p.errors]
        if errors:
            res.notes.append(f"proxy errors: {errors[:3]}")
    finally:
        workers.stop()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda p: p.stop(), procs))
        for proxy in proxies:
            proxy.close()
    say(
        f"{spec.mounts} mounts: {res.done}/{total} tasks, {res.requests_per_task:.2f} requests"
        f"/task, converged in {res.converge_seconds} s"
    )
    return res


def _watch(
    res: FleetResult,
    procs: list[FuseProc],
    workers: Workers,
    logs: list[Path],
    t0: float,
    deadline: float,
    say: Any,
) -> None:
    """Poll until the workers are done and every mount knows every fact (or the deadline):
    samples each mount's done count and, per fact, when the other mounts see it."""
    samples: list[list[tuple[float, int]]] = [[] for _ in procs]
    stale = Staleness(logs, [p.mnt for p in procs])
    next_sample = 0.0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + SAMPLE_SECONDS
            for i, p in enumerate(procs):
                n = _done(p)
                if n is not None:
                    samples[i].append((time.time(), n))
                if p.proc.poll() is not None:
                    raise RuntimeError(f"daemon {i} exited: {p.stderr_tail()[-500:]}")
            stale.sample()
            known = [s[-1][1] if s else 0 for s in samples]
            if not workers.running() and all(k == res.total for k in known) and not stale.unseen:
                res.converge_seconds = round(time.time() - t0, 2)
                break
            if not workers.running() and res.work_seconds == 0.0:
                res.work_seconds = -1.0  # marks: workers finished, waiting for convergence
                say(f"workers finished; known per mount: {known}")
        if now > deadline:
            res.notes.append("deadline reached before every mount knew every fact")
            break
        time.sleep(0.05)
    res.known = [s[-1][1] if s else 0 for s in samples]
    res.commits = read_commits(logs)
    res.work_seconds = (res.commits[-1] - t0) if res.commits else 0.0
    res.lags = stale.lags
    if stale.unseen:
        res.notes.append(f"{stale.unseen} (fact, mount) pairs never seen in done/")
    with contextlib.suppress(OSError, ValueError, KeyError):
        res.sync_totals = _sync_totals(procs)
    for key in ("errors", "leases_held"):
        if res.sync_totals[key]:
            res.notes.append(f"status.sync.{key} summed over the mounts: {res.sync_totals[key]}")


def _sync_totals(procs: list[FuseProc]) -> Counter[str]:
    """What the daemons report, summed over the fleet: sync errors, leases still held and
    claims lost (a lease PUT refused because another node held the task: a claim race)."""
    totals: Counter[str] = Counter()
    for p in procs:
        sync = p.status()["sync"]
        for key in ("errors", "leases_held", "claims_lost"):
            totals[key] += int(sync.get(key) or 0)
    return totals


def summary(res: FleetResult) -> dict[str, Any]:
    """The numbers of one run, JSON-friendly."""
    return {
        "mounts": res.spec.mounts,
        "workers_per_mount": res.spec.workers,
        "tasks_per_mount": res.spec.tasks,
        "refresh": res.spec.refresh,
        "task_seconds": res.spec.task_seconds,
        "tasks": res.total,
        "done": res.done,
        "conflicts": res.conflicts,
        "work_seconds": round(res.work_seconds, 2),
        "converge_seconds": res.converge_seconds,
        "tasks_per_second": round(res.rate, 2),
        "requests_per_task": round(res.requests_per_task, 3),
        "reads_per_task": round(res.reads_per_task, 3),
        "per_task_by_kind": {k: round(v, 3) for k, v in sorted(res.per_task(1).items())},
        "per_task_by_area": {k: round(v, 3) for k, v in sorted(res.per_task(2).items())},
        "per_task_by_area_kind": _area_kind(res),
        "start_per_mount": round(sum(res.start_counts.values()) / res.spec.mounts, 1),
        "node_windows": round(res.node_windows, 1),
        "staleness_p50": res.staleness(0.5),
        "staleness_p99": res.staleness(0.99),
        "known_at_end": res.known,
        "claims_lost_per_task": round(res.sync_totals["claims_lost"] / max(1, res.done), 3),
        "windows_per_task": round(res.node_windows / max(1, res.done), 3),
        "notes": res.notes,
    }


def _area_kind(res: FleetResult) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (_, kind, area), n in res.run_counts.items():
        row = out.setdefault(area, {})
        row[kind] = row.get(kind, 0.0) + n / max(1, res.done)
    return {a: {k: round(v, 3) for k, v in sorted(row.items())} for a, row in sorted(out.items())}


def dumps(res: FleetResult) -> str:
    return json.dumps(summary(res), sort_keys=True)
