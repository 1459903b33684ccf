"""Fleet simulator (issue 15, item 1): N virtual nodes x W virtual workers in virtual time.

Each node runs the project's real sync, claims and refresh code — `open_workspace` over its own
state dir (tmpfs), its `SyncEngine` loops (uploads, fact publication and reading, refreshes
with the `FleetClaims` lease listings, tombstone retirement), the `Claims` service with its
claims log, the `Committer` and `MissionState` — without FUSE, against one shared in-process
bucket (fusefs/objects/memory.py `MemoryStore`, with S3's per-prefix request limits: `SimLimiter`
below). A virtual worker picks a random name of its node's pending view, claims it, works for a
time drawn from a seeded log-normal distribution, writes its witness into tmp/ and commits it.

Virtual time. One `trio.run` holds every node, on `trio.testing.MockClock(autojump_threshold=0)`:
whenever every task waits, the clock jumps to the next deadline, so an hour of fleet time costs
only the CPU the code spends. The simulator's patching of the code under test, undone on exit
(`patched`):
- `time` in the engine modules of PATCHED_TIME is a `SimTime`: wall and monotonic clocks read
  the virtual clock; the wall clock of node i is off by its skew (`--skew S`: uniform in
  [-S, S], seeded); the bucket's clock (Date headers, `server_time()`, LastModified) is the
  virtual clock without skew. `Claims` gets the node's clock through its `clock` parameter;
- `trio.to_thread.run_sync` runs the call inline on the trio thread (a real thread would let
  the mock clock jump while it runs: non-deterministic), then sleeps the call's network time:
  a latency per request it made (`--latency`, times a seeded log-normal factor of
  `--latency-sigma`) plus the bytes it read at the node's `bandwidth` (its effects land at the
  call's start; the thread pools' limits are not modelled);
- trio's scheduler and `random` (the engine's backoff jitter) are seeded, and trio's deadline
  heap breaks ties in the order deadlines were set instead of by `id()` (memory addresses);
- what every node does identically is done once (bench/fleet_sim_fast.py, unless `--exact`):
  decoding a fact object's lines, the parse of its names, and the per-node persistence of
  remote facts (index log, journal notes, hash cache rows), none of which makes a request;
- each node's `shard_fresh` TTL cache is rebuilt on the virtual clock, and its digest keeper
  (a daemon feature not run here) is unsubscribed from the state.
Deterministic for a seed (the same numbers on every run; memory and wall columns are measured).

Two ways to run: until every task of a small mission is done (`--measure 0`), or (the default)
on a big mission (`--mission-tasks`, 1M) for a fixed virtual time: a warm-up, then `--measure`
seconds counted, then a grace period for staleness only. Measured: requests per completed
task by kind and by area (requests and completions in the measured interval), the peak requests
in one second on any prefix (reads and writes apart, as fractions of S3's limits) and the
SlowDown count (whole run), $ per 1M tasks at AWS list prices, staleness (witness PUT in the
interval -> every node holds it as a fact: p50/p99 virtual seconds), duplicate work (tasks
committed by more than one node), RSS growth per node; and, separately, what a new node pays
to learn every fact of a bucket holding K witnesses (requests, bytes, virtual seconds).

    .venv/bin/python bench/fleet_sim.py --nodes 1 10 100 --measure 150   # 8 workers, 10 s tasks
    .venv/bin/python bench/fleet_sim.py --nodes 1000 --measure 150 --progress --loose-exception-groups
    .venv/bin/python bench/fleet_sim.py --nodes --learn-checkpoint 10000000   # a new node, v2
    .venv/bin/python bench/fleet_sim.py --nodes 3 --measure 0 --tasks-per-node 20 --learn 2000
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import contextvars
import dataclasses
import gc
import hashlib
import heapq
import importlib
import importlib.util
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
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing
from pyroaring import BitMap

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/fleet_sim.py`
    sys.path.insert(0, str(ROOT))

from bench.fleet_sim_fast import shared_learning  # noqa: E402
from fusefs.engine.claims import ClaimNotRecorded, Claims, FleetUnavailable  # noqa: E402
from fusefs.engine.commit import CommitRefused  # noqa: E402
from fusefs.engine.durable import Fsyncer  # noqa: E402
from fusefs.engine.workspace import SyncOptions, Workspace, open_workspace  # noqa: E402
from fusefs.model.codec import OutOfPlan  # noqa: E402
from fusefs.model.mission import Mission, load_mission  # noqa: E402
from fusefs.model.state import NotPending  # noqa: E402
from fusefs.objects.base import PAGE, READS, ListPage, ObjectInfo, SlowDown  # noqa: E402
from fusefs.objects.memory import MemoryStore, _Object, _successor, _token  # noqa: E402
from fusefs.objects.s3store import WITNESSES, S3Store, sha256_hex  # noqa: E402
from fusefs.statedir.claimlog import ClaimLog  # noqa: E402
from tests.support.mounts import write_mission  # noqa: E402

EPOCH = 1_800_000_000.0  # the virtual wall clock at virtual time 0
BUCKET_URL = "s3://fleet-sim/runs"
BASE_DEPTH = 2  # key components of the mission's base: runs/fleet-sim
# The modules whose `time` is the virtual clock (each has `import time`; absent ones skipped).
PATCHED_TIME: list[Any] = [
    importlib.import_module(name)
    for name in (
        "fusefs.engine.sync",
        "fusefs.engine.remotefacts",
        "fusefs.engine.factlog",
        "fusefs.engine.fleet",
        "fusefs.engine.leases",
        "fusefs.engine.status",
        "fusefs.statedir.claimlog",
        "fusefs.statedir.journal",
    )
    if importlib.util.find_spec(name) is not None
]
# AWS S3 Standard list prices per request (DELETE is free).
PRICE = {"PUT": 0.005e-3, "POST": 0.005e-3, "LIST": 0.005e-3, "GET": 0.0004e-3, "HEAD": 0.0004e-3}
LIMITS = {"read": 5500, "write": 3500}  # S3's requests per second per prefix
LIST_ENTRY_BYTES = 250  # XML of one ListObjectsV2 <Contents> entry, besides its key
PHRASES = ("a", "b", "c", "d")
# The node a trio task works for (inherited by the tasks it starts): its clock and its link.
LINK: contextvars.ContextVar[int] = contextvars.ContextVar("fleet_sim_link", default=-1)


class SimTime:
    """Stands in for the `time` module of the engine: the virtual clock (the mock clock's,
    inside a run; the last one seen outside), plus the skew of the node whose task asks."""

    def __init__(self) -> None:
        self.mock: trio.testing.MockClock | None = None
        self.last = 0.0
        self.skew: dict[int, float] = {}  # node -> seconds its wall clock is ahead

    def _now(self) -> float:
        if self.mock is not None:  # rate 0: virtual time moves only by jumps
            self.last = self.mock._virtual_base
        return self.last

    def server(self) -> float:
        """The bucket's clock: epoch seconds, no skew."""
        return EPOCH + self._now()

    def time(self) -> float:
        return EPOCH + self._now() + self.skew.get(LINK.get(), 0.0)

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def monotonic(self) -> float:
        return self._now()

    def perf_counter(self) -> float:
        return self._now()

    def sleep(self, seconds: float) -> None:
        raise RuntimeError("time.sleep in simulated code: it would block the whole fleet")

    def __getattr__(self, name: str) -> Any:  # strftime, gmtime, ...: the real ones
        return getattr(time, name)


def area_of(key: str) -> str:
    """The protocol area of a key: `scraped-tiles`, `claims`, `log`, ... ("" for the bucket)."""
    parts = key.split("/", BASE_DEPTH + 1)
    return parts[BASE_DEPTH] if len(parts) > BASE_DEPTH else ""


def prefix_function(depth: int) -> Callable[[str], str]:
    """What S3 rate-limits as one prefix: the key's first `depth` components under the base
    (1: the area, e.g. all of `scraped-tiles/`; the strictest reading, as a new bucket's one
    partition), or with 0 the key's parent 'directory' (as finely split as S3 may get)."""
    if depth <= 0:
        return lambda key: key.rpartition("/")[0]
    n = BASE_DEPTH + depth

    def prefix(key: str) -> str:
        return "/".join(key.split("/", n)[:n])

    return prefix


class SimLimiter:
    """S3's per-prefix request rates (3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD/LIST per
    second per prefix, 503 SlowDown beyond), counted in one-second windows of the bucket's
    clock, reads and writes apart; keeps the peak of each and the refusals, per prefix."""

    def __init__(self, prefix_of: Callable[[str], str]) -> None:
        self.prefix_of = prefix_of
        self.slowdowns: Counter[str] = Counter()
        self.peak: dict[tuple[str, str], int] = {}  # (prefix, "read"/"write") -> most in 1 s
        self.peak_at: dict[tuple[str, str], int] = {}  # ... -> that second (server clock)
        self.kinds: Counter[tuple[str, str, str]] = Counter()  # this second, by kind
        self.measuring = False  # in the measured interval: also kept in `steady`
        self.steady: dict[tuple[str, str], int] = {}  # the peaks of the measured interval
        self.peak_kinds: dict[tuple[str, str], dict[str, int]] = {}  # the peak second's kinds
        self._window = -1
        self._counts: dict[tuple[str, str], int] = {}

    def admit(self, kind: str, key: str, now: float) -> None:
        window = int(now)
        if window != self._window:
            self._close_second()
            self._window, self._counts = window, {}
        k = (self.prefix_of(key), "read" if kind in READS else "write")
        n = self._counts[k] = self._counts.get(k, 0) + 1
        self.kinds[(*k, kind)] += 1
        if n > LIMITS[k[1]]:
            self.slowdowns[k[0]] += 1
            raise SlowDown(f"{kind} {key}: 503 SlowDown (over {n - 1}/s on {k[0]!r})")

    def _close_second(self) -> None:
        for k, n in self._counts.items():
            if self.measuring and n > self.steady.get(k, 0):
                self.steady[k] = n
            if n > self.peak.get(k, 0):
                self.peak[k], self.peak_at[k] = n, self._window
                self.peak_kinds[k] = {kd: c for (p, r, kd), c in self.kinds.items() if (p, r) == k}
        self.kinds = Counter()

    def peaks(self) -> dict[tuple[str, str], int]:
        self._close_second()
        self._counts = {}
        return dict(self.peak)


class SimStore(MemoryStore):
    """The bucket, plus what the simulator measures: requests by (kind, area), bytes sent to
    clients (GET bodies and listing entries) and when each witness was first written."""

    def __init__(self, clock: SimTime, limiter: SimLimiter | None) -> None:
        super().__init__(clock=clock.server, limiter=limiter)
        self.bytes_out = 0
        self.by_area: Counter[tuple[str, str]] = Counter()
        self.witness_put: dict[str, float] = {}

    def _request(self, kind: str, key: str) -> None:
        self.by_area[(kind, area_of(key))] += 1
        super()._request(kind, key)

    def put(self, key: str, body: bytes, **kw: Any) -> str:
        etag = super().put(key, body, **kw)
        if f"/{WITNESSES}/" in key:
            self.witness_put.setdefault(key, self.clock())
        return etag

    def get(self, key: str) -> tuple[bytes, Any]:
        body, info = super().get(key)
        self.bytes_out += len(body)
        return body, info

    def list_page(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = PAGE,
    ) -> ListPage:
        if delimiter:
            page = super().list_page(
                prefix, start_after=start_after, delimiter=delimiter, token=token, max_keys=max_keys
            )
        else:  # MemoryStore's answer, by slicing its sorted keys (the fleet lists a lot)
            self._request("LIST", prefix)
            with self._lock:
                i = self._first(prefix, start_after, token)
                end = bisect.bisect_left(self._keys, _successor(prefix), i) if prefix else None
                keys = self._keys[i : i + max_keys if end is None else min(end, i + max_keys)]
                more = (len(self._keys) if end is None else end) - i > max_keys
                found = [(k, self._objects[k]) for k in keys]
            objects = [ObjectInfo(k, len(o.body), o.etag, o.last_modified) for k, o in found]
            page = ListPage(objects, [], _token(objects, []) if more else None)
        self.bytes_out += sum(LIST_ENTRY_BYTES + len(o.key) for o in page.objects)
        self.bytes_out += sum(100 + len(p) for p in page.prefixes)
        return page

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        """Writes by the simulator itself (filling a bucket): not counted, not limited."""
        return _quiet(self)


@contextlib.contextmanager
def _quiet(store: SimStore) -> Iterator[None]:
    limiter, requests, by_area = store.limiter, store.requests.snapshot(), store.by_area.copy()
    store.limiter = None
    try:
        yield
    finally:
        store.limiter = limiter
        store.requests = type(store.requests)()
        for kind, n in requests.items():
            store.requests.add(kind, n)
        store.by_area = by_area


class Network:
    """`trio.to_thread.run_sync` for the simulation: the call runs inline, then its caller
    waits the call's network time: a latency per request it made (concurrent requests overlap,
    as on parallel connections) and the bytes it read through its node's link of `bandwidth`
    bytes/s (shared by the node's concurrent requests: they queue)."""

    def __init__(
        self, store: SimStore, latency: float, bandwidth: float, sigma: float = 0.0, seed: int = 1
    ) -> None:
        self.store = store
        self.latency = latency
        self.sigma = sigma
        self.bandwidth = bandwidth
        self.rng = random.Random(f"net-{seed}")
        self._link_free: dict[int, float] = {}  # node -> when its link has sent all it owes
        self.inline = 0.0  # wall seconds spent running thread calls inline (StepWatch)

    def wait_for(self, n: int) -> float:
        if not self.sigma:
            return n * self.latency
        mu = -(self.sigma**2) / 2  # mean factor 1
        return sum(self.latency * self.rng.lognormvariate(mu, self.sigma) for _ in range(n))

    async def run_sync(self, fn: Any, *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        n0, b0 = self.store.requests.total(), self.store.bytes_out
        error: BaseException | None = None
        result = None
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as e:
            error = e
        self.inline += time.perf_counter() - t0
        n, b = self.store.requests.total() - n0, self.store.bytes_out - b0
        wait = self.wait_for(n) if n else 0.0
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


class StepWatch(trio.abc.Instrument):
    """The longest time one trio task step held the trio thread, not counting the thread calls
    the simulation runs inline (`Network.run_sync`: in a daemon they run in worker threads,
    while the trio thread serves FUSE requests). What a mount's every request waits at worst."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.longest = 0.0
        self.longest_loading = 0.0  # of the steps while a checkpoint is loaded (`loading`)
        self.loading = False
        self.longest_segment = 0.0  # of the steps while a segment is applied (`applying`)
        self.applying = False
        self.segments = 0
        self.segment_cpu = 0.0  # CPU of the segments' application, thread calls included
        self.segment_inline = 0.0  # of it, in thread calls
        self._t0 = 0.0
        self._inline0 = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0, self._inline0 = time.perf_counter(), self.net.inline

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        held = time.perf_counter() - self._t0 - (self.net.inline - self._inline0)
        self.longest = max(self.longest, held)
        if self.loading:
            self.longest_loading = max(self.longest_loading, held)
        if self.applying:
            self.longest_segment = max(self.longest_segment, held)

    @contextlib.contextmanager
    def loading_checkpoints(self, factlog: Any) -> Iterator[None]:
        """Tell the steps of `factlog._load_checkpoint` apart (the step that ends a load
        counts: it runs the load's last part)."""
        real = factlog._load_checkpoint

        async def load(cp: Any) -> Any:
            self.loading = True
            try:
                return await real(cp)
            finally:
                await trio.lowlevel.checkpoint()  # the step that applied the load ends here
                self.loading = False

        factlog._load_checkpoint = load
        try:
            yield
        finally:
            del factlog._load_checkpoint

    @contextlib.contextmanager
    def applying_segments(self, factlog: Any) -> Iterator[None]:
        """Tell the steps of `factlog._apply` (one segment: the fleet's facts of a window)
        apart, and count their CPU (a protocol v2 node's steady state, every window)."""
        real = factlog._apply

        async def apply(seg: Any) -> Any:
            self.applying = True
            cpu, inline = time.process_time(), self.net.inline
            try:
                return await real(seg)
            finally:
                await trio.lowlevel.checkpoint()  # the step that applied it ends here
                self.applying = False
                self.segments += 1
                self.segment_cpu += time.process_time() - cpu
                self.segment_inline += self.net.inline - inline

        factlog._apply = apply
        try:
            yield
        finally:
            del factlog._apply


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
def patched(
    clock: SimTime, net: Network, seed: int, exact: bool = False, nodes: int = 0
) -> Iterator[None]:
    """The simulator's patching (see the module docstring), undone on exit."""
    saved = [(m, m.time) for m in PATCHED_TIME]  # each is the `time` module itself
    run_sync = trio.to_thread.run_sync
    sched = trio._core._run._r.getstate()  # trio randomises its scheduling order
    rstate = random.getstate()
    deadlines = trio._core._run.Deadlines
    add_deadline = deadlines.add
    names = [node_name(i) for i in range(nodes)]
    learning = contextlib.nullcontext() if exact else shared_learning(names)
    try:
        setattr(deadlines, "add", _add_deadline_in_order())  # noqa: B010
        for m in PATCHED_TIME:
            m.time = clock
        setattr(trio.to_thread, "run_sync", net.run_sync)  # noqa: B010
        trio._core._run._r.seed(seed)
        random.seed(seed)
        with learning:
            yield
    finally:
        for m, t in saved:
            m.time = t
        setattr(trio.to_thread, "run_sync", run_sync)  # noqa: B010
        trio._core._run._r.setstate(sched)
        setattr(deadlines, "add", add_deadline)  # noqa: B010
        random.setstate(rstate)


@dataclass
class SimConfig:
    nodes: int = 10
    workers: int = 8
    mission_tasks: int | None = None  # None: nodes x tasks_per_node
    tasks_per_node: int = 50
    task_time: float = 10.0  # mean seconds of a task (log-normal, sigma below)
    task_sigma: float = 0.5
    refresh: float = 15.0
    full_refresh: float = 600.0
    lease: float = 900.0
    latency: float = 0.02  # seconds per request
    latency_sigma: float = 0.0  # log-normal spread of the latency (0: fixed)
    bandwidth: float = 100e6  # bytes per second a node reads
    skew: float = 0.0  # node clocks off by up to this many seconds (uniform, either way)
    seed: int = 1
    claims: str = "strict"  # the mission's claims mode ("local": no leases, duplicates likely)
    warmup: float | None = None  # virtual seconds before counting (None: 3 refresh intervals)
    measure: float = 0.0  # virtual seconds counted; 0: run until every task is done
    grace: float | None = None  # after the measure, for staleness only (None: 4 refreshes)
    deadline: float = 6 * 3600.0  # virtual seconds before an until-done run is given up on
    prefix_depth: int = 1  # what S3 limits as one prefix (see prefix_function)
    exact: bool = False  # every node does its own decoding and persistence (bench/fleet_sim_fast)
    progress: bool = False  # a line on stderr every window (long runs)
    # trio.run(strict_exception_groups=False): a nursery whose one child failed raises that
    # error itself, as the engine's `except S3Unavailable` handlers expect (the daemon runs
    # with trio's default, strict: see docs/benchmarks.md, protocol v2 at N = 1,000)
    loose_groups: bool = False
    state_root: Path | None = None

    @property
    def tasks(self) -> int:
        return self.mission_tasks or self.nodes * self.tasks_per_node

    @property
    def start(self) -> float:
        """Warm-up: nodes come up over one refresh interval, then settle for two more."""
        return 3 * self.refresh if self.warmup is None else self.warmup


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


def node_name(idx: int) -> str:
    return f"node{idx:04d}"


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
        return node_name(self.idx)

    def close(self) -> None:
        self.claim_log.close()
        if self.ws.sync is not None:
            self.ws.sync.close()
        self.ws.index.close()
        self.ws.close()


def open_node(
    idx: int, mission: Mission, root: Path, cfg: SimConfig, store: SimStore, clock: SimTime
) -> Node:
    """One node's services over its own state dir, wired as the daemon wires them (minus FUSE)."""
    token = LINK.set(idx)  # its start-up reads its own (skewed) clock
    try:
        opts = SyncOptions(
            worker=node_name(idx),
            objects=store,
            refresh=cfg.refresh,
            full_refresh=cfg.full_refresh,
        )
        ws = open_workspace(mission, root / node_name(idx), lease=cfg.lease, sync=opts)
        ws.committer.reconciled = True  # a fresh state dir: nothing to reconcile
        # fsyncs through trio.to_thread (run inline here, see above), not AIO's real waits
        ws.committer.fsyncer = Fsyncer(use_aio=False)
        if ws.digest is not None:  # the Merkle digest loop is not run here: no dirty tiles
            with contextlib.suppress(ValueError):
                ws.state._listeners.remove(ws.digest.changed)
        claim_log = ClaimLog(ws.store.layout.claims_log, ws.state)
        assert ws.sync is not None
        claims = Claims(
            ws.state,
            ws.committer.journal,
            cfg.lease,
            committer=ws.committer,
            store=ws.store,
            status=ws.status,
            claim_log=claim_log,
            fleet=ws.sync.fleet,
            clock=clock.time,
        )
        claims.restore(now=clock.time())
    finally:
        LINK.reset(token)
    return Node(idx, ws, claims, claim_log, random.Random(f"{cfg.seed}-{idx}"))


class Staleness:
    """When every node first holds each task as a fact: per-task counts of nodes that know it,
    updated in bulk by each node's state listener (numpy: N x tasks updates)."""

    def __init__(self, size: int, nodes: int) -> None:
        self.nodes = nodes
        self.count = np.zeros(size, dtype=np.uint16)
        self.all_known = np.full(size, np.nan)

    def watch(self, node: Node) -> None:
        state = node.ws.state

        def changed(tasks: Any) -> None:
            bm = tasks if isinstance(tasks, BitMap) else BitMap(tasks)
            new = (bm & state.fact) - node.known
            if not new:
                return
            node.known |= new
            idx = np.frombuffer(new.to_array(), dtype=np.uint32)
            counts = self.count[idx] + 1
            self.count[idx] = counts
            done = idx[counts == self.nodes]
            if len(done):
                self.all_known[done] = trio.current_time()

        state.subscribe(changed)


@dataclass
class Run:
    """What one simulation observed."""

    cfg: SimConfig
    total: int
    stale: Staleness
    intent: np.ndarray[Any, Any]
    commits: Counter[int] = field(default_factory=Counter)
    counted: BitMap = field(default_factory=BitMap)  # tasks committed in the measured interval
    stopped: bool = False  # the measure is over: workers take no new task
    counting: bool = False
    refused_claims: int = 0
    lost_claims: int = 0
    finished_at: float = 0.0
    marks: dict[str, tuple[float, dict[tuple[str, str], int]]] = field(default_factory=dict)

    def done(self) -> bool:
        return (
            len(self.commits) == self.total
            and not np.isnan(self.stale.all_known[self.intent]).any()
        )


async def worker(node: Node, j: int, run: Run) -> None:
    """A scraper process: claim a random pending task, work, write tmp/ then commit."""
    cfg, state = run.cfg, node.ws.state
    tmp = node.ws.store.layout.tmp / f"sim-{j}.csv"
    mu = math.log(cfg.task_time) - cfg.task_sigma**2 / 2
    while not run.stopped:
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
        if run.counting:
            run.counted.add(task)


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


async def report_progress(run: Run) -> None:
    wall = time.perf_counter()
    while True:
        await trio.sleep(run.cfg.refresh)
        print(
            f"  N={run.cfg.nodes} t={trio.current_time():.0f} s: {sum(run.commits.values())} "
            f"commits, {time.perf_counter() - wall:.0f} s wall, {rss_kib() // 1024} MiB",
            file=sys.stderr,
            flush=True,
        )


def mark(run: Run, store: SimStore, name: str) -> None:
    run.marks[name] = (trio.current_time(), dict(store.by_area))


async def simulate(nodes: list[Node], run: Run, store: SimStore, clock: SimTime) -> None:
    clock.mock = trio.lowlevel.current_clock()  # type: ignore[assignment]
    cfg = run.cfg
    async with trio.open_nursery() as nursery:
        for node in nodes:  # nodes come up over one refresh interval, not all at once
            nursery.start_soon(node_life, node, run, node.rng.uniform(0, cfg.refresh))
        if cfg.progress:
            nursery.start_soon(report_progress, run)
        if cfg.measure:
            await trio.sleep_until(cfg.start)
            mark(run, store, "start")
            run.counting = True
            if isinstance(store.limiter, SimLimiter):
                store.limiter.measuring = True
            await trio.sleep_until(cfg.start + cfg.measure)
            run.counting, run.stopped = False, True
            mark(run, store, "end")
            if isinstance(store.limiter, SimLimiter):
                store.limiter.measuring = False
            grace = 4 * cfg.refresh if cfg.grace is None else cfg.grace
            await trio.sleep_until(cfg.start + cfg.measure + grace)
        else:
            while trio.current_time() < cfg.deadline and not run.done():
                await trio.sleep(1.0)
            mark(run, store, "end")
        run.finished_at = trio.current_time()
        nursery.cancel_scope.cancel()
    clock.mock = None


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


def sim_parts(cfg: SimConfig) -> tuple[SimTime, SimLimiter, SimStore, Network]:
    clock = SimTime()
    rng = random.Random(f"skew-{cfg.seed}")
    clock.skew = {i: rng.uniform(-cfg.skew, cfg.skew) for i in range(cfg.nodes)} if cfg.skew else {}
    limiter = SimLimiter(prefix_function(cfg.prefix_depth))
    store = SimStore(clock, limiter)
    net = Network(store, cfg.latency, cfg.bandwidth, cfg.latency_sigma, cfg.seed)
    return clock, limiter, store, net


def run_fleet(cfg: SimConfig) -> dict[str, Any]:
    """Simulate one fleet; returns its numbers (see the module docstring)."""
    clock, limiter, store, net = sim_parts(cfg)
    wall = time.perf_counter()
    with scratch(cfg.state_root) as root, patched(clock, net, cfg.seed, cfg.exact, cfg.nodes):
        mission = mission_with(cfg.tasks, root, cfg.claims)
        space = mission.space
        intent = np.frombuffer(mission.intent.to_array(), dtype=np.uint32)
        run = Run(cfg, len(mission.intent), Staleness(space.size, cfg.nodes), intent)
        gc.collect()
        rss0 = rss_kib()
        nodes: list[Node] = []
        if not cfg.measure:  # until done: every request counts, start-up included
            run.marks["start"] = (0.0, {})
        try:
            for i in range(cfg.nodes):
                nodes.append(open_node(i, mission, root, cfg, store, clock))
                run.stale.watch(nodes[-1])
            startup_wall = time.perf_counter() - wall
            run.counting = not cfg.measure
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", trio.TrioDeprecationWarning)
                trio.run(
                    simulate,
                    nodes,
                    run,
                    store,
                    clock,
                    clock=trio.testing.MockClock(autojump_threshold=0),
                    strict_exception_groups=not cfg.loose_groups,
                )
            gc.collect()
            rss1 = rss_kib()
            facts = [len(n.ws.state.fact) for n in nodes]
        finally:
            for node in nodes:
                node.close()
    out = fleet_numbers(cfg, run, store, limiter, space)
    out.update(
        rss_kib_per_node=round((rss1 - rss0) / cfg.nodes),
        facts_per_node_min=min(facts),
        startup_wall_s=round(startup_wall, 1),
        wall_s=round(time.perf_counter() - wall, 1),
    )
    return out


def staleness(run: Run, store: SimStore, space: Any, t0: float, t1: float) -> list[float]:
    """Seconds from each witness PUT in [t0, t1) to every node holding it (a node that knew a
    fact before its PUT, its writer, waited 0 s; never known by all: up to the run's end)."""
    out = []
    for key, put in store.witness_put.items():
        at = put - EPOCH
        if not t0 <= at < t1:
            continue
        try:
            task = space.parse_rel(key.split(f"/{WITNESSES}/", 1)[1])
        except OutOfPlan:
            continue
        known = run.stale.all_known[task]
        out.append(max(0.0, (run.finished_at if np.isnan(known) else known) - at))
    return out


def fleet_numbers(
    cfg: SimConfig, run: Run, store: SimStore, limiter: SimLimiter, space: Any
) -> dict[str, Any]:
    (t0, a0), (t1, a1) = run.marks["start"], run.marks["end"]
    by_area = {k: n - a0.get(k, 0) for k, n in a1.items() if n - a0.get(k, 0)}
    requests: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for (kind, area), n in by_area.items():
        requests[kind] += n
        areas[area] += n
    done = max(1, len(run.counted))
    stale = staleness(run, store, space, t0, t1)
    peaks = limiter.peaks()
    use = {k: n / LIMITS[k[1]] for k, n in peaks.items()}
    (worst_prefix, worst_class), worst = max(
        use.items(), key=lambda kv: kv[1], default=(("", ""), 0)
    )
    return {
        "nodes": cfg.nodes,
        "workers": cfg.workers,
        "tasks": run.total,
        "completed": len(run.counted),
        "in_bucket": len(store.witness_put),
        "measured_s": round(t1 - t0, 1),
        "tasks_per_s": round(len(run.counted) / max(1e-9, t1 - t0), 1),
        "virtual_s": round(run.finished_at, 1),
        "requests": dict(sorted(requests.items())),
        "per_task": {k: round(n / done, 3) for k, n in sorted(requests.items())},
        "per_task_by_area": {
            f"{kind} {area or '(bucket)'}": round(n / done, 4)
            for (kind, area), n in sorted(by_area.items(), key=lambda kv: -kv[1])
        },
        "area_per_task": {a or "(bucket)": round(n / done, 3) for a, n in areas.most_common()},
        "requests_per_task": round(sum(requests.values()) / done, 3),
        "peak_per_s": peaks.get((worst_prefix, worst_class), 0),
        "peak_prefix": f"{worst_prefix.split('/', BASE_DEPTH)[-1]} {worst_class}s",
        "peak_of_limit": round(worst, 3),
        "peak_at_s": limiter.peak_at.get((worst_prefix, worst_class), 0) - EPOCH,
        "peak_kinds": limiter.peak_kinds.get((worst_prefix, worst_class), {}),
        "steady_peaks": {
            f"{p.split('/', BASE_DEPTH)[-1]} {c}s": n
            for (p, c), n in sorted(
                limiter.steady.items(), key=lambda kv: -kv[1] / LIMITS[kv[0][1]]
            )[:8]
        },
        "peaks": {
            f"{p.split('/', BASE_DEPTH)[-1]} {c}s": n
            for (p, c), n in sorted(peaks.items(), key=lambda kv: -kv[1] / LIMITS[kv[0][1]])[:8]
        },
        "slowdowns": sum(limiter.slowdowns.values()),
        "usd_per_1m_tasks": round(dollars_per_million(requests, done), 2),
        "staleness_p50": round(percentile(stale, 0.5), 2),
        "staleness_p99": round(percentile(stale, 0.99), 2),
        "staleness_n": len(stale),
        "duplicates": sum(1 for n in run.commits.values() if n > 1),
        "refused_claims": run.refused_claims,
        "lost_claims": run.lost_claims,
    }


def learn_cost(k: int, cfg: SimConfig) -> dict[str, Any]:
    """A new node on a bucket holding `k` witnesses (and nothing else): what it takes until it
    knows every fact (today: the intent listing at start-up, then a full listing of
    scraped-tiles/ per latitude shard, `uploaders` shards at a time)."""
    clock, _, store, net = sim_parts(dataclasses.replace(cfg, nodes=1, skew=0.0))
    store.limiter = None
    wall = time.perf_counter()
    with scratch(cfg.state_root) as root, patched(clock, net, cfg.seed, cfg.exact):
        mission = mission_with(k, root)
        fill = S3Store(BUCKET_URL, mission.name, objects=store)
        body = b"name,lat,lon\nx,1,2\n"
        meta = {"sha256": sha256_hex(body), "worker": "filler"}
        keys = sorted(fill.key(WITNESSES, mission.space.rel(t)) for t in mission.intent)
        with store.quiet():
            for key in keys:
                store.put(key, body, metadata=meta)
        store.requests = type(store.requests)()  # count only the new node's requests
        store.bytes_out = 0
        node = open_node(0, mission, root, cfg, store, clock)
        watch = StepWatch(net)
        cpu = time.process_time()
        try:

            async def learn() -> float:
                clock.mock = trio.lowlevel.current_clock()  # type: ignore[assignment]
                sync = node.ws.sync
                assert sync is not None and await sync.connect()
                await sync.refresh(full=True)
                await sync.fill_sizes()
                clock.mock = None
                return trio.current_time()

            assert node.ws.sync is not None
            with watch.loading_checkpoints(node.ws.sync.factlog):
                seconds = trio.run(
                    learn, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[watch]
                )
            cpu = time.process_time() - cpu
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


FLEET_RATE = 1000 * 8 / 10.0  # facts a second of the fleet of the targets (N x workers / 10 s)
DONE = 0.8  # the filled mission's fraction done


def fill_witnesses(store: SimStore, keys: list[str], body: bytes, meta: dict[str, str]) -> None:
    """Put witness objects straight into the bucket (no request, no limiter: the simulator's
    set-up), one shared object each; millions of `put`s would insert into the sorted key list
    one by one."""
    obj = _Object(body, hashlib.md5(body).hexdigest(), store.clock(), meta)
    with store._lock:
        for key in keys:
            store._objects[key] = obj
        store._keys = sorted(store._objects)


def v2_bucket(
    k: int, cfg: SimConfig, store: SimStore, root: Path
) -> tuple[Mission, dict[str, Any]]:
    """A bucket as a protocol v2 fleet leaves it after `k` witnesses (see `learn_v2`)."""
    from fusefs.engine.checkpoints import CheckpointBook
    from fusefs.engine.factduties import C
    from fusefs.model import segment as sg
    from fusefs.model.checkpoint import CheckpointBuilder

    mission = mission_with(math.ceil(k / DONE), root)
    space, width = mission.space, cfg.refresh
    rng = np.random.default_rng(cfg.seed)
    intent = np.frombuffer(mission.intent.to_array(), dtype=np.uint32)
    done = np.sort(rng.choice(intent, k, replace=False))
    now_w = sg.window_of(store.clock(), width)  # the node starts in this window
    ckpt_w = (now_w - 2) // C * C  # the newest checkpoint: C windows at most before
    per_window = min(int(FLEET_RATE * width), k // (2 * C))  # a small bucket: smaller windows
    seg_windows = list(range(ckpt_w + 1, now_w))
    order = rng.permutation(done)  # which witnesses came last (in the segments)
    late = order[len(order) - per_window * len(seg_windows) :]
    early = np.setdiff1d(done, late, assume_unique=True)
    body = b"name,lat,lon\nx,1,2\n"
    sha = sha256_hex(body)
    s3 = S3Store(BUCKET_URL, mission.name, objects=store)
    rels = {int(t): space.rel(int(t)) for t in done}
    fill_witnesses(
        store,
        [s3.key(WITNESSES, r) for r in rels.values()],
        body,
        {"sha256": sha, "worker": "filler"},
    )
    builder = CheckpointBuilder(space)
    for t in early.tolist():
        builder.add(t, rels[t], sha, len(body))
    cp = builder.build(ckpt_w)
    book = CheckpointBook(s3, space)
    assert book.write(cp)
    s3.create_protocol({"version": 2, "window": width})
    for i, w in enumerate(seg_windows):
        facts = [
            sg.Fact(rels[t], sha, len(body))
            for t in late[i * per_window : (i + 1) * per_window].tolist()
        ]
        name = sg.manifest_name("filler", i + 1)
        manifest = "".join(sg.line(f.rel, f.sha256, f.size) + "\n" for f in facts).encode()
        s3.put_node_manifest(w, name, manifest)
        assert s3.put_segment(w, sg.encode(sg.merge(w, {name: facts})))
    holds = {
        "witnesses": k,
        "checkpoint_window": ckpt_w,
        "checkpoint_facts": len(cp.facts),
        "checkpoint_bytes": len(store.get(s3.checkpoint_key(ckpt_w))[0]),
        "segments": len(seg_windows),
        "segment_facts": per_window,
        "segment_bytes": len(store.get(s3.segment_key(seg_windows[0]))[0]) if seg_windows else 0,
        "last_window": now_w - 1,
    }
    return mission, holds


def learn_v2(k: int, cfg: SimConfig) -> dict[str, Any]:
    """A new node on a protocol v2 bucket holding `k` witnesses: what it takes until it knows
    every fact. The bucket (set up without counting): the `k` witness objects (a mission of
    k / 0.8 tasks, 80 % done, random tasks), protocol.json, the newest checkpoint written by
    the real CheckpointBook (every witness but those of the segments after it, with sizes and
    digests) and the segments of the windows since (at most C - 1 + 1 of them, each the
    fleet's facts of a window at 800 tasks/s, with its node manifest). Counted: every request
    of the node from its start (intent listing, self-test, protocol.json, checkpoint listing
    and GET, segments) until its cursor is the last closed window; it starts in the middle of
    a window (the last closed one settled)."""
    clock, _, store, net = sim_parts(dataclasses.replace(cfg, nodes=1, skew=0.0))
    store.limiter = None
    wall = time.perf_counter()
    with scratch(cfg.state_root) as root, patched(clock, net, cfg.seed, cfg.exact):
        with store.quiet():
            mission, holds = v2_bucket(k, cfg, store, root)
        store.requests = type(store.requests)()
        store.by_area = Counter()
        store.bytes_out = 0
        setup_wall = time.perf_counter() - wall
        wall = time.perf_counter()
        node = open_node(0, mission, root, cfg, store, clock)
        watch = StepWatch(net)
        cpu = time.process_time()
        try:

            async def learn() -> float:
                clock.mock = trio.lowlevel.current_clock()  # type: ignore[assignment]
                await trio.sleep(cfg.refresh / 2)  # mid-window: the last one is settled
                t0 = trio.current_time()
                sync = node.ws.sync
                assert sync is not None and await sync.connect()
                while sync.factlog.cursor != holds["last_window"]:
                    await sync.refresh()
                    if sync.factlog.cursor != holds["last_window"]:
                        await trio.sleep(0.05)
                clock.mock = None
                return trio.current_time() - t0

            assert node.ws.sync is not None
            factlog = node.ws.sync.factlog
            with watch.loading_checkpoints(factlog), watch.applying_segments(factlog):
                seconds = trio.run(
                    learn, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[watch]
                )
            cpu = time.process_time() - cpu
            knows = len(node.ws.state.fact)
        finally:
            node.close()
    return {
        **holds,
        "known": knows,
        "requests": sum(store.requests.snapshot().values()),
        "by_kind": store.requests.snapshot(),
        "by_area": {f"{kd} {a or '(bucket)'}": n for (kd, a), n in sorted(store.by_area.items())},
        "bytes": store.bytes_out,
        "virtual_s": round(seconds, 2),
        "node_wall_s": round(time.perf_counter() - wall, 1),
        "setup_wall_s": round(setup_wall, 1),
        "learn_cpu_s": round(cpu, 1),  # the learning's trio.run, threads (inline) included
        "in_threads_s": round(net.inline, 1),  # of it, in thread calls (inline here)
        "trio_held_s": round(watch.longest, 3),  # the longest trio step outside them
        "trio_held_loading_s": round(watch.longest_loading, 3),  # of those loading checkpoints
        "trio_held_segment_s": round(watch.longest_segment, 3),  # of those applying segments
        "segment_cpu_s": round(watch.segment_cpu / max(1, watch.segments), 3),  # per segment
        "segment_in_threads_s": round(watch.segment_inline / max(1, watch.segments), 3),
    }


def fleet_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N | W | tasks done (of) | tasks/s | req/task | by kind (per task) | peak req/s "
        "(prefix, of limit) | SlowDown | $/1M tasks | stale p50/p99 s | dup "
        "| claims refused/task | RSS KiB/node | virtual s | wall s |"
    )
    out = [head, "|" + "---|" * 15]
    for r in rows:
        kinds = " ".join(f"{k} {v}" for k, v in r["per_task"].items())
        out.append(
            f"| {r['nodes']} | {r['workers']} | {r['completed']} ({r['tasks']}) "
            f"| {r['tasks_per_s']} | {r['requests_per_task']} | {kinds} "
            f"| {r['peak_per_s']} ({r['peak_prefix']}, {r['peak_of_limit']:.0%}) "
            f"| {r['slowdowns']} | {r['usd_per_1m_tasks']} "
            f"| {r['staleness_p50']} / {r['staleness_p99']} | {r['duplicates']} "
            f"| {round(r['refused_claims'] / max(1, r['completed']), 2)} "
            f"| {r['rss_kib_per_node']} | {r['virtual_s']} | {r['wall_s']} |"
        )
    return "\n".join(out)


def area_table(rows: list[dict[str, Any]]) -> str:
    """Requests per completed task by kind and area (the breakdown behind req/task)."""
    keys = sorted({k for r in rows for k in r["per_task_by_area"]})
    out = ["| request | " + " | ".join(f"N = {r['nodes']}" for r in rows) + " |"]
    out.append("|---" * (len(rows) + 1) + "|")
    for k in keys:
        out.append(
            f"| {k} | " + " | ".join(str(r["per_task_by_area"].get(k, 0)) for r in rows) + " |"
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


def learn_v2_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| K witnesses | bucket: checkpoint (facts, bytes) + segments (facts each, bytes each) "
        "| known | requests (by kind) | bytes read | virtual s | node wall s "
        "| learning CPU s (in threads) | longest trio step s (loading the checkpoint) "
        "| applying a segment: CPU s (in threads), longest trio step s |",
        "|---" * 10 + "|",
    ]
    for r in rows:
        kinds = " ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items()))
        out.append(
            f"| {r['witnesses']} | {r['checkpoint_facts']}, {r['checkpoint_bytes']} B + "
            f"{r['segments']} x ({r['segment_facts']}, {r['segment_bytes']} B) | {r['known']} "
            f"| {r['requests']} ({kinds}) | {r['bytes']} | {r['virtual_s']} "
            f"| {r['node_wall_s']} | {r['learn_cpu_s']} ({r['in_threads_s']}) "
            f"| {r['trio_held_s']} ({r['trio_held_loading_s']}) "
            f"| {r['segment_cpu_s']} ({r['segment_in_threads_s']}), {r['trio_held_segment_s']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="*", default=[1, 10, 100])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--mission-tasks", type=int, default=1_000_000)
    p.add_argument("--tasks-per-node", type=int, default=40, help="with --measure 0")
    p.add_argument("--task-time", type=float, default=10.0)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--latency-sigma", type=float, default=0.0)
    p.add_argument("--skew", type=float, default=0.0, help="max seconds a node clock is off")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--refresh", type=float, default=30.0, help="the mount's --refresh (W)")
    p.add_argument("--full-refresh", type=float, default=3600.0)
    p.add_argument("--warmup", type=float, help="virtual s before counting (3 refreshes)")
    p.add_argument("--measure", type=float, help="virtual s counted (10 refreshes; 0: until done)")
    p.add_argument("--prefix-depth", type=int, default=1)
    p.add_argument("--exact", action="store_true", help="no shared learning (slow at large N)")
    p.add_argument("--progress", action="store_true", help="a line on stderr every window")
    p.add_argument(
        "--loose-exception-groups",
        action="store_true",
        help="a nursery's single error raised bare (not the daemon's setting)",
    )
    p.add_argument("--learn", type=int, nargs="*", default=[], help="K: new node, listing")
    p.add_argument(
        "--learn-checkpoint", type=int, nargs="*", default=[], help="K: new node, protocol v2"
    )
    p.add_argument("--json", type=Path, help="also write every number to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    measure = 10 * a.refresh if a.measure is None else a.measure
    base = SimConfig(
        workers=a.workers,
        mission_tasks=a.mission_tasks if measure else None,
        tasks_per_node=a.tasks_per_node,
        task_time=a.task_time,
        latency=a.latency,
        latency_sigma=a.latency_sigma,
        skew=a.skew,
        seed=a.seed,
        refresh=a.refresh,
        full_refresh=a.full_refresh,
        warmup=a.warmup,
        measure=measure,
        prefix_depth=a.prefix_depth,
        exact=a.exact,
        progress=a.progress,
        loose_groups=a.loose_exception_groups,
    )
    rows = []
    for n in a.nodes:
        rows.append(run_fleet(dataclasses.replace(base, nodes=n)))
        print(f"N={n}: {rows[-1]['wall_s']} s wall", file=sys.stderr, flush=True)
    if rows:
        print(fleet_table(rows))
        print()
        print(area_table(rows))
    learned = []
    for k in a.learn:
        learned.append(learn_cost(k, base))
        print(f"K={k}: {learned[-1]['wall_s']} s wall", file=sys.stderr, flush=True)
    if learned:
        print()
        print(learn_table(learned))
    from_checkpoint = []
    for k in a.learn_checkpoint:
        from_checkpoint.append(learn_v2(k, base))
        r = from_checkpoint[-1]
        print(
            f"K={k}: {r['node_wall_s']} s wall, learning CPU {r['learn_cpu_s']} s "
            f"({r['in_threads_s']} s in threads), longest trio step {r['trio_held_s']} s "
            f"({r['trio_held_loading_s']} s loading the checkpoint); a segment of "
            f"{r['segment_facts']} facts: CPU {r['segment_cpu_s']} s ({r['segment_in_threads_s']} "
            f"s in threads), longest trio step {r['trio_held_segment_s']} s",
            file=sys.stderr,
            flush=True,
        )
    if from_checkpoint:
        print()
        print(learn_v2_table(from_checkpoint))
    if a.json is not None:
        everything = {"fleets": rows, "learn": learned, "learn_checkpoint": from_checkpoint}
        a.json.write_text(json.dumps(everything, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
