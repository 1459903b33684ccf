"""Fleet simulator (issue 15, item 1): N virtual nodes x W virtual workers in virtual time.

Each node runs the project's real sync, claims and refresh code — `open_workspace` over its own
state dir (tmpfs), its `SyncEngine` loops (uploads, manifests, refreshes with `FleetClaims`
lease listings, tombstone retirement), the `Claims` service with its claims log, the
`Committer` and `MissionState` — without FUSE, against one shared in-process bucket
(fusefs/objects/memory.py `MemoryStore` with S3's per-prefix `PrefixLimiter`). A virtual worker
picks a random name of its node's pending view, claims it (strict S3 leases), works for a time
drawn from a seeded log-normal distribution, writes its witness into tmp/ and commits it.

Virtual time. One `trio.run` holds every node, on `trio.testing.MockClock(autojump_threshold=0)`:
whenever every task waits, the clock jumps to the next deadline, so an hour of fleet time costs
only the CPU the code spends. The simulator's only patching of the code under test, undone on
exit (`patched`):
- `time` in fusefs.engine.{sync,remotefacts,fleet,leases} and fusefs.statedir.claimlog is a
  `SimTime` (wall and monotonic clocks read the virtual clock); `Claims` and the bucket get it
  through their `clock` parameters;
- `trio.to_thread.run_sync` runs the call inline on the trio thread (a real thread would let
  the mock clock jump while it runs: non-deterministic), then sleeps the call's network time:
  `latency` per request it made plus the bytes it read at `bandwidth` (its effects land at the
  call's start; the thread pools' limits are not modelled);
- trio's scheduler and `random` (the engine's backoff jitter) are seeded, and trio's deadline
  heap breaks ties in the order deadlines were set instead of by `id()` (memory addresses);
- each node's `shard_fresh` TTL cache (which shards a full refresh may skip) is rebuilt on the
  virtual clock (cachetools reads the real `time.monotonic`).
Deterministic for a seed (the same numbers on every run; the memory column is measured, not
simulated).

Measured per fleet size: requests per completed task by kind (the bucket's counters, whole run:
from start-up to every node knowing every fact), the peak requests in one second on any prefix
and the SlowDown count, $ per 1M tasks at AWS list prices, staleness (witness PUT -> every node
has it as a fact: p50/p99 virtual seconds), duplicate work (tasks committed by more than one
node), RSS growth per node; and, separately, what a new node pays to learn every fact of a
bucket holding K witnesses (requests, bytes, virtual seconds).

    .venv/bin/python bench/fleet_sim.py                 # N = 1, 10, 100; learn K = 10k, 100k
    .venv/bin/python bench/fleet_sim.py --nodes 3 --tasks-per-node 20 --learn
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import gc
import heapq
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing
from pyroaring import BitMap

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/fleet_sim.py`
    sys.path.insert(0, str(ROOT))

import fusefs.engine.fleet  # noqa: E402
import fusefs.engine.leases  # noqa: E402
import fusefs.engine.remotefacts  # noqa: E402
import fusefs.engine.sync  # noqa: E402
import fusefs.statedir.claimlog  # noqa: E402
from fusefs.engine.claims import ClaimNotRecorded, Claims, FleetUnavailable  # noqa: E402
from fusefs.engine.commit import CommitRefused  # noqa: E402
from fusefs.engine.workspace import SyncOptions, Workspace, open_workspace  # noqa: E402
from fusefs.model.mission import Mission, load_mission  # noqa: E402
from fusefs.model.state import NotPending  # noqa: E402
from fusefs.objects.base import ListPage  # noqa: E402
from fusefs.objects.memory import MemoryStore, PrefixLimiter  # noqa: E402
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex  # noqa: E402
from fusefs.statedir.claimlog import ClaimLog  # noqa: E402
from tests.support.mounts import write_mission  # noqa: E402

EPOCH = 1_800_000_000.0  # the virtual wall clock at virtual time 0
BUCKET_URL = "s3://fleet-sim/runs"
PATCHED_TIME = (
    fusefs.engine.sync,
    fusefs.engine.remotefacts,
    fusefs.engine.fleet,
    fusefs.engine.leases,
    fusefs.statedir.claimlog,
)
# AWS S3 Standard list prices per request (DELETE is free).
PRICE = {"PUT": 0.005e-3, "POST": 0.005e-3, "LIST": 0.005e-3, "GET": 0.0004e-3, "HEAD": 0.0004e-3}
LIST_ENTRY_BYTES = 250  # XML of one ListObjectsV2 <Contents> entry, besides its key
PHRASES = ("a", "b", "c", "d")
# The node a trio task works for (inherited by the tasks it starts): its own network link.
LINK: contextvars.ContextVar[int] = contextvars.ContextVar("fleet_sim_link", default=-1)


class SimTime:
    """Stands in for the `time` module of the engine: the virtual clock (trio's, inside a run;
    the last one seen outside)."""

    def __init__(self) -> None:
        self.last = 0.0

    def _now(self) -> float:
        with contextlib.suppress(RuntimeError):
            self.last = trio.current_time()
        return self.last

    def time(self) -> float:
        return EPOCH + self._now()

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def monotonic(self) -> float:
        return self._now()


class SimStore(MemoryStore):
    """The bucket, plus what the simulator measures: bytes sent to clients (GET bodies and
    listing entries) and when each witness was first written (for staleness)."""

    def __init__(self, clock: SimTime, limiter: PrefixLimiter) -> None:
        super().__init__(clock=clock.time, limiter=limiter)
        self.bytes_out = 0
        self.witness_put: dict[str, float] = {}

    def put(self, key: str, body: bytes, **kw: Any) -> str:
        etag = super().put(key, body, **kw)
        if f"/{WITNESSES}/" in key:
            self.witness_put.setdefault(key, self.clock())
        return etag

    def get(self, key: str) -> tuple[bytes, Any]:
        body, info = super().get(key)
        self.bytes_out += len(body)
        return body, info

    def list_page(self, prefix: str, **kw: Any) -> ListPage:
        page = super().list_page(prefix, **kw)
        self.bytes_out += sum(LIST_ENTRY_BYTES + len(o.key) for o in page.objects)
        self.bytes_out += sum(100 + len(p) for p in page.prefixes)
        return page


class Network:
    """`trio.to_thread.run_sync` for the simulation: the call runs inline, then its caller
    waits the call's network time: `latency` per request it made (concurrent requests overlap,
    as on parallel connections) and the bytes it read through its node's link of `bandwidth`
    bytes/s (shared by the node's concurrent requests: they queue)."""

    def __init__(self, store: SimStore, latency: float, bandwidth: float) -> None:
        self.store = store
        self.latency = latency
        self.bandwidth = bandwidth
        self._link_free: dict[int, float] = {}  # node -> when its link has sent all it owes

    async def run_sync(self, fn: Any, *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        n0, b0 = self.store.requests.total(), self.store.bytes_out
        error: BaseException | None = None
        result = None
        try:
            result = fn(*args)
        except Exception as e:
            error = e
        n, b = self.store.requests.total() - n0, self.store.bytes_out - b0
        wait = n * self.latency
        if b:
            now, link = trio.current_time(), LINK.get()
            free = max(now + wait, self._link_free.get(link, 0.0)) + b / self.bandwidth
            self._link_free[link] = free
            wait = free - now
        if wait:
            await trio.sleep(wait)
        if error is not None:
            raise error
        return result


def _add_deadline_in_order() -> Any:
    """trio's `Deadlines.add`, with deadlines that fall at the same instant expiring in the
    order they were set (trio breaks such ties by `id()`, a memory address: under a mock
    clock, where many loops sleep whole seconds, that order changes from run to run)."""
    seq = itertools.count()

    def add(self: Any, deadline: float, cancel_scope: Any) -> None:
        heapq.heappush(self._heap, (deadline, next(seq), cancel_scope))
        self._active += 1

    return add


@contextlib.contextmanager
def patched(clock: SimTime, net: Network, seed: int) -> Iterator[None]:
    """The simulator's only patching (see the module docstring), undone on exit."""
    saved = [(m, m.time) for m in PATCHED_TIME]  # each is the `time` module itself
    run_sync = trio.to_thread.run_sync
    sched = trio._core._run._r.getstate()  # trio randomises its scheduling order
    rstate = random.getstate()
    deadlines = trio._core._run.Deadlines
    add_deadline = deadlines.add
    try:
        setattr(deadlines, "add", _add_deadline_in_order())  # noqa: B010
        for m in PATCHED_TIME:
            setattr(m, "time", clock)  # noqa: B010 (mypy: the modules are a mixed tuple)
        setattr(trio.to_thread, "run_sync", net.run_sync)  # noqa: B010
        trio._core._run._r.seed(seed)
        random.seed(seed)
        yield
    finally:
        for m, t in saved:
            setattr(m, "time", t)  # noqa: B010
        setattr(trio.to_thread, "run_sync", run_sync)  # noqa: B010
        trio._core._run._r.setstate(sched)
        setattr(deadlines, "add", add_deadline)  # noqa: B010
        random.setstate(rstate)


@dataclass
class SimConfig:
    nodes: int = 10
    workers: int = 2
    tasks_per_node: int = 50
    task_time: float = 10.0  # mean seconds of a task (log-normal, sigma below)
    task_sigma: float = 0.5
    refresh: float = 15.0
    full_refresh: float = 600.0
    lease: float = 900.0
    latency: float = 0.02  # seconds per request
    bandwidth: float = 100e6  # bytes per second a node reads
    seed: int = 1
    claims: str = "strict"  # the mission's claims mode ("local": no leases, duplicates likely)
    deadline: float = 6 * 3600.0  # virtual seconds before the run is given up on
    state_root: Path | None = None


def mission_with(tasks: int, directory: Path, claims: str = "strict") -> Mission:
    """A square-ish grid of about `tasks` tasks (4 phrases a tile) on the bucket."""
    tiles = max(1, math.ceil(tasks / len(PHRASES)))
    rows = max(1, math.isqrt(tiles))
    cols = math.ceil(tiles / rows)
    path = write_mission(
        directory / "mission.toml",
        name="fleet-sim",
        south="10.00",
        west="20.00",
        north=f"{10 + rows * 0.01:.2f}",
        east=f"{20 + cols * 0.01:.2f}",
        step="0.01",
        phrases=PHRASES,
    )
    return dataclasses.replace(load_mission(path), s3=BUCKET_URL, claims=claims)


@dataclass
class Node:
    idx: int
    ws: Workspace
    claims: Claims
    claim_log: ClaimLog
    rng: random.Random
    known: BitMap = field(default_factory=BitMap)

    @property
    def name(self) -> str:
        return f"node{self.idx:04d}"

    def close(self) -> None:
        self.claim_log.close()
        if self.ws.sync is not None:
            self.ws.sync.close()
        self.ws.index.close()
        self.ws.close()


def open_node(idx: int, mission: Mission, root: Path, cfg: SimConfig, store: SimStore) -> Node:
    """One node's services over its own state dir, wired as the daemon wires them (minus FUSE)."""
    opts = SyncOptions(
        worker=f"node{idx:04d}",
        objects=store,
        refresh=cfg.refresh,
        full_refresh=cfg.full_refresh,
    )
    ws = open_workspace(mission, root / f"node{idx:04d}", lease=cfg.lease, sync=opts)
    ws.committer.reconciled = True  # a fresh state dir: nothing to reconcile
    claim_log = ClaimLog(ws.store.layout.claims_log, ws.state)
    assert ws.sync is not None
    clock = store.clock
    claims = Claims(
        ws.state,
        ws.committer.journal,
        cfg.lease,
        committer=ws.committer,
        store=ws.store,
        status=ws.status,
        claim_log=claim_log,
        fleet=ws.sync.fleet,
        clock=clock,
    )
    claims.restore(now=clock())
    return Node(idx, ws, claims, claim_log, random.Random(f"{cfg.seed}-{idx}"))


@dataclass
class Run:
    """What one simulation observed."""

    cfg: SimConfig
    total: int
    commits: Counter[int] = field(default_factory=Counter)
    all_known: dict[int, float] = field(default_factory=dict)  # task -> when the last node knew
    known_count: Counter[int] = field(default_factory=Counter)
    refused_claims: int = 0
    lost_claims: int = 0
    finished_at: float = 0.0


def watch_facts(node: Node, run: Run, n_nodes: int) -> None:
    """Note when `node` first holds each task as a fact (for staleness)."""
    state = node.ws.state

    def changed(tasks: Any) -> None:
        new = (BitMap(tasks) & state.fact) - node.known
        if not new:
            return
        node.known |= new
        now = trio.current_time()
        for t in new:
            run.known_count[t] += 1
            if run.known_count[t] == n_nodes:
                run.all_known[t] = now

    state.subscribe(changed)


async def worker(node: Node, j: int, run: Run) -> None:
    """A scraper process: claim a random pending task, work, write tmp/ then commit."""
    cfg, state = run.cfg, node.ws.state
    tmp = node.ws.store.layout.tmp / f"sim-{j}.csv"
    mu = math.log(cfg.task_time) - cfg.task_sigma**2 / 2
    while True:
        view = state.pending_view()
        if not view:
            await trio.sleep(1.0)  # `ls pending/` again in a second
            continue
        task = view[node.rng.randrange(len(view))]
        try:
            await node.claims.claim(task, 1000 + j)
        except NotPending:
            run.refused_claims += 1
            continue
        except (FleetUnavailable, ClaimNotRecorded):
            run.refused_claims += 1
            await trio.sleep(1.0)
            continue
        await trio.sleep(node.rng.lognormvariate(mu, cfg.task_sigma))
        if task not in state.claims:
            run.lost_claims += 1
            continue
        rel = state.space.rel(task)
        tmp.write_bytes(f"name,lat,lon\n{rel},{node.name},{j}\n".encode())
        try:
            await node.ws.committer.commit(tmp, task, synced=False, source="sim")
        except CommitRefused:
            tmp.unlink(missing_ok=True)
            continue
        run.commits[task] += 1


async def node_life(node: Node, run: Run, start: float) -> None:
    """A node comes up at `start`: its sync loops, its expiry loop and its workers."""
    await trio.sleep(start)
    LINK.set(node.idx)
    sync = node.ws.sync
    assert sync is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        for j in range(run.cfg.workers):
            nursery.start_soon(worker, node, j, run)
        while True:
            await trio.sleep(1.0)
            node.claims.expire()


async def simulate(nodes: list[Node], run: Run) -> None:
    cfg = run.cfg
    async with trio.open_nursery() as nursery:
        for node in nodes:  # nodes come up over one refresh interval, not all at once
            nursery.start_soon(node_life, node, run, node.rng.uniform(0, cfg.refresh))
        while trio.current_time() < cfg.deadline:
            await trio.sleep(1.0)
            if len(run.commits) == run.total and len(run.all_known) == run.total:
                break
        run.finished_at = trio.current_time()
        nursery.cancel_scope.cancel()


def rss_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@contextlib.contextmanager
def scratch(given: Path | None) -> Iterator[Path]:
    """State dirs on tmpfs (/dev/shm) when there is one, removed at the end."""
    if given is not None:
        yield given
        return
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=base))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def dollars_per_million(requests: Mapping[str, int], tasks: int) -> float:
    return sum(PRICE.get(k, 0.0) * n for k, n in requests.items()) / max(1, tasks) * 1e6


def run_fleet(cfg: SimConfig) -> dict[str, Any]:
    """Simulate one fleet; returns its numbers (see the module docstring)."""
    clock = SimTime()
    limiter = PrefixLimiter()
    store = SimStore(clock, limiter)
    net = Network(store, cfg.latency, cfg.bandwidth)
    wall = time.perf_counter()
    with scratch(cfg.state_root) as root, patched(clock, net, cfg.seed):
        mission = mission_with(cfg.nodes * cfg.tasks_per_node, root, cfg.claims)
        run = Run(cfg, len(mission.intent))
        gc.collect()
        rss0 = rss_kib()
        nodes = [open_node(i, mission, root, cfg, store) for i in range(cfg.nodes)]
        try:
            for node in nodes:
                watch_facts(node, run, cfg.nodes)
            trio.run(simulate, nodes, run, clock=trio.testing.MockClock(autojump_threshold=0))
            gc.collect()
            rss1 = rss_kib()
            witnesses = S3Store(BUCKET_URL, mission.name, objects=store)
            space = mission.space
            puts = {
                t: store.witness_put.get(witnesses.key(WITNESSES, space.rel(t)))
                for t in mission.intent
            }
        finally:
            for node in nodes:
                node.close()
    stale = [  # a node that knew a fact before its PUT (its writer) waited 0 s for it
        max(0.0, run.all_known[t] - (p - EPOCH))
        for t, p in puts.items()
        if p is not None and t in run.all_known
    ]
    done = len(run.commits)
    requests = store.requests.snapshot()
    peak_prefix, peak = max(limiter.peak.items(), key=lambda kv: kv[1], default=("", 0))
    return {
        "nodes": cfg.nodes,
        "workers": cfg.workers,
        "tasks": run.total,
        "completed": done,
        "in_bucket": sum(p is not None for p in puts.values()),
        "virtual_s": round(run.finished_at, 1),
        "requests": requests,
        "per_task": {k: round(n / max(1, done), 3) for k, n in sorted(requests.items())},
        "requests_per_task": round(sum(requests.values()) / max(1, done), 3),
        "peak_per_s": peak,
        "peak_prefix": peak_prefix,
        "slowdowns": sum(limiter.slowdowns.values()),
        "usd_per_1m_tasks": round(dollars_per_million(requests, done), 2),
        "staleness_p50": round(percentile(stale, 0.5), 2),
        "staleness_p99": round(percentile(stale, 0.99), 2),
        "duplicates": sum(1 for n in run.commits.values() if n > 1),
        "refused_claims": run.refused_claims,
        "lost_claims": run.lost_claims,
        "rss_kib_per_node": round((rss1 - rss0) / cfg.nodes),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def learn_cost(k: int, cfg: SimConfig) -> dict[str, Any]:
    """A new node on a bucket holding `k` witnesses (and nothing else): what it takes until it
    knows every fact (today: the intent listing at start-up, then a full listing of
    scraped-tiles/ per latitude shard, `uploaders` shards at a time)."""
    clock = SimTime()
    limiter = PrefixLimiter()
    store = SimStore(clock, limiter)
    net = Network(store, cfg.latency, cfg.bandwidth)
    wall = time.perf_counter()
    with scratch(cfg.state_root) as root, patched(clock, net, cfg.seed):
        mission = mission_with(k, root)
        fill = S3Store(BUCKET_URL, mission.name, objects=store)
        body = b"name,lat,lon\nx,1,2\n"
        meta = {"sha256": sha256_hex(body), "worker": "filler"}
        keys = sorted(fill.key(WITNESSES, mission.space.rel(t)) for t in mission.intent)
        for key in keys:
            store.put(key, body, metadata=meta)
        store.requests = type(store.requests)()  # count only the new node's requests
        store.bytes_out = 0
        node = open_node(0, mission, root, cfg, store)
        try:

            async def learn() -> float:
                sync = node.ws.sync
                assert sync is not None and await sync.connect()
                await sync.refresh(full=True)
                await sync.fill_sizes()
                return trio.current_time()

            seconds = trio.run(learn, clock=trio.testing.MockClock(autojump_threshold=0))
            knows = len(node.ws.state.fact)
        finally:
            node.close()
    return {
        "witnesses": len(keys),
        "known": knows,
        "requests": sum(store.requests.snapshot().values()),
        "by_kind": store.requests.snapshot(),
        "bytes": store.bytes_out,
        "virtual_s": round(seconds, 2),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def fleet_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N | W | tasks | req/task | by kind (per task) | peak req/s (prefix) | SlowDown "
        "| $/1M tasks | stale p50/p99 s | dup | claims refused/task | RSS KiB/node | virtual s "
        "| wall s |"
    )
    out = [head, "|" + "---|" * 14]
    for r in rows:
        kinds = " ".join(f"{k} {v}" for k, v in r["per_task"].items())
        prefix = r["peak_prefix"].split("/", 2)[-1] if r["peak_prefix"] else "-"
        out.append(
            f"| {r['nodes']} | {r['workers']} | {r['completed']}/{r['tasks']} "
            f"| {r['requests_per_task']} | {kinds} | {r['peak_per_s']} ({prefix}) "
            f"| {r['slowdowns']} | {r['usd_per_1m_tasks']} "
            f"| {r['staleness_p50']} / {r['staleness_p99']} | {r['duplicates']} "
            f"| {round(r['refused_claims'] / max(1, r['completed']), 2)} "
            f"| {r['rss_kib_per_node']} | {r['virtual_s']} | {r['wall_s']} |"
        )
    return "\n".join(out)


def learn_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| K witnesses | known | requests (by kind) | bytes | virtual s | wall s |",
        "|---" * 6 + "|",
    ]
    for r in rows:
        kinds = " ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items()))
        out.append(
            f"| {r['witnesses']} | {r['known']} | {r['requests']} ({kinds}) | {r['bytes']} "
            f"| {r['virtual_s']} | {r['wall_s']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="*", default=[1, 10, 100])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks-per-node", type=int, default=40)
    p.add_argument("--task-time", type=float, default=10.0)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--refresh", type=float, default=15.0, help="the mount's --refresh")
    p.add_argument("--full-refresh", type=float, default=600.0)
    p.add_argument("--learn", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--json", type=Path, help="also write every number to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    base = SimConfig(
        workers=a.workers,
        tasks_per_node=a.tasks_per_node,
        task_time=a.task_time,
        latency=a.latency,
        seed=a.seed,
        refresh=a.refresh,
        full_refresh=a.full_refresh,
    )
    rows = []
    for n in a.nodes:
        rows.append(run_fleet(dataclasses.replace(base, nodes=n)))
        print(f"N={n}: {rows[-1]['wall_s']} s wall", file=sys.stderr, flush=True)
    if rows:
        print(fleet_table(rows))
    learned = []
    for k in a.learn:
        learned.append(learn_cost(k, base))
        print(f"K={k}: {learned[-1]['wall_s']} s wall", file=sys.stderr, flush=True)
    if learned:
        print()
        print(learn_table(learned))
    if a.json is not None:
        a.json.write_text(json.dumps({"fleets": rows, "learn": learned}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
