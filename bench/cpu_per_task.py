"""The daemon's CPU per completed task, with and without S3 sync, and where it goes (issue 15).

A small node (a Raspberry-Pi-class core is about 4x slower than this machine's) pays for every
task in the daemon: the FUSE requests of the claim and the commit, and with S3 the witness PUT.
This measures that price on real mounts and profiles it, as a plan for cutting it:

1. Daemon CPU per task: one `missionfs mount` (default --refresh), N Python workers (the
   workers of bench/fleet.py: scandir, rename to claim, write tmp/, rename to commit) until
   every task is committed and, with S3, every witness is in the bucket (SeaweedFS on
   loopback, `claims = "local"`: the sync alone, no S3 leases). CPU = user + sys of the daemon
   process (all its threads) from /proc/PID/stat, from the workers' start to the end; the idle
   CPU per second (before the workers start) is printed too, to show what the timers cost.
2. A profile of the same run: py-spy (`pip install py-spy`) samples the daemon without pausing
   it (--nonblocking; --gil: samples of the thread holding the GIL, Python at work, so
   time in syscalls without the GIL is not in it); each sample is put in one bucket by the first frame,
   from the leaf up, whose file says what the work is for (SigV4 signing, checksums, parameter
   validation, response parsing, HTTP and sockets, other botocore, missionfs, pyfuse3, trio).
   Without py-spy this part is skipped with a message.
3. The PUT alone, in this process: the CPU time of one thread (time.thread_time) per witness
   PUT through missionfs's S3Store (as the daemon uploads), and through a plain boto3 client
   with the client settings this workload allows, one at a time, so each line says what that
   setting saves; then cProfile's top entries for S3Store's PUT.

4. The floors, measured the same way in the same rounds (no missionfs code in any of them):
   `floor`: bench/null_fs.py, pyfuse3 + trio answering the same worker's claim/write/commit
   from dicts, mounted with missionfs's options (no default_permissions) and, like missionfs,
   listing only the pending rows and tiles that hold a task (`--floor-old` adds a `floor-old`
   row: the floor of the older tables, mounted with pyfuse3's default options, which cost
   about 5.5 GETATTRs a task more, and listing every row and tile, which makes every worker's
   pass over pending/, and every idle poll while uploads finish, list empty directories).
   bench/floor_fs.py, the least any daemon on pyfuse3 + trio must do
   under the project's rules: `floor+commit` real tmp/ files, the strict commit (one thread
   hop: fsync the file, rename it into the witness tree, fsync the directory) and a journal
   line per claim and commit; `floor+s3` plus the upload of every witness as missionfs did
   it until its eighth session (chunks of >= 8 per thread hop, a minimal SigV4 PUT on
   kept-alive sockets, a synced line each), until all are in S3; `floor+s3-async` the same
   PUTs from trio's thread on trio streams, no upload thread (missionfs's design since). `--floor-http`: a `floor+s3-http` row, the threads' PUT on http.client.
   Their FUSE requests and thread hops per task are counted and printed.
5. Before/after (`--old CHECKOUT`): the same rows for the daemon of another checkout (a
   `git worktree` of the old commit; `-m fusefs` imports it through PYTHONPATH), interleaved
   with this checkout's runs, `--repeat` rounds, medians and spreads in a summary table.

Everything (state dirs, S3 data) lives on one private tmpfs; SeaweedFS and the daemons are
stopped by PID at the end. A run takes about a minute (`--tasks 600 --workers 4`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import common as c  # noqa: E402
import fleet  # noqa: E402
from minimal_put import AsyncPut, MinimalSigV4, RawPut, Signer  # noqa: E402

from tests.support import fuseproc  # noqa: E402
from tests.support.s3_servers import SeaweedServer, s3_env  # noqa: E402

BUCKET = fleet.BUCKET  # the bucket Bench.mission() names
CLK = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW = 2.0  # seconds of idle daemon CPU, measured before the workers start (--idle)
# The floor rows: the daemon each runs (null_fs.py: dicts only; floor_fs.py: the least a daemon
# on this stack must do) and its arguments; `floor-old` is the floor of the older tables
# (pyfuse3's default options with default_permissions, empty pending rows and tiles listed).
FLOORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "floor": ("null_fs.py", ("--options", "missionfs")),
    "floor-old": ("null_fs.py", ("--options", "pyfuse3", "--list-empty")),
    "floor+commit": ("floor_fs.py", ()),
    "floor+s3": ("floor_fs.py", ("--put", "raw")),
    "floor+s3-http": ("floor_fs.py", ("--put", "http.client")),
    "floor+s3-async": ("floor_fs.py", ("--put", "async")),
}
KEEP_PROFILES: Path | None = None  # --keep-profiles DIR: where py-spy's raw stacks are copied

# Where a profile sample goes: the first frame from the leaf up whose file contains one of these
# (checked in this order); frames of other files (re, copy, threading...) are looked through.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("SigV4 signing", ("botocore/auth.py", "botocore/signers.py")),
    ("checksums", ("botocore/httpchecksum.py", "hashlib")),
    ("parameter validation", ("botocore/validate.py",)),
    ("request serialisation", ("botocore/serialize.py",)),
    ("response parsing", ("botocore/parsers.py",)),
    ("endpoint rules", ("botocore/endpoint_provider.py", "botocore/regions.py")),
    ("retries", ("botocore/retries/", "botocore/retryhandler.py")),
    ("HTTP and sockets", ("urllib3/", "http/client.py", "socket.py", "ssl.py", "httpsession")),
    ("botocore events, model, other", ("botocore/", "boto3/")),
    ("missionfs", ("fusefs/",)),
    ("pyfuse3", ("pyfuse3",)),
    ("trio", ("trio/",)),
]
# Inclusive shares: a sample counts for each of these whose marker is anywhere in its stack.
INCLUSIVE: list[tuple[str, tuple[str, ...]]] = [
    ("inside a boto3 call (put_object...)", ("botocore/", "boto3/")),
    ("inside a FUSE handler (pyfuse3 -> MissionFS)", ("fusefs/fuse/fs.py",)),
    ("on a trio worker thread (to_thread.run_sync)", ("_thread_cache.py",)),
    ("in the sync engine (uploads, manifests)", ("fusefs/engine/sync.py",)),
]


@dataclass
class Run:
    name: str
    tasks: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # daemon user + sys over the run (s)
    main_cpu: float = 0.0  # of which the main thread (trio + pyfuse3); the rest: worker threads
    idle_per_s: float = 0.0  # daemon CPU per second before the workers start
    requests: Counter[str] = field(default_factory=Counter)
    profile: Counter[str] = field(default_factory=Counter)  # bucket -> samples
    leaves: Counter[str] = field(default_factory=Counter)  # leaf frame -> samples
    inclusive: Counter[str] = field(default_factory=Counter)  # INCLUSIVE name -> samples
    fuse: Counter[str] = field(default_factory=Counter)  # the floor's FUSE requests by kind
    hops: Counter[str] = field(default_factory=Counter)  # the floor's thread hops by kind

    @property
    def ms_per_task(self) -> float:
        return 1000 * self.cpu / max(1, self.tasks)


def cpu_seconds(pid: int) -> float:
    """user + sys of a process, all its threads (utime and stime of /proc/PID/stat)."""
    return cpu_seconds_of(f"/proc/{pid}/stat")


def main_thread_cpu(pid: int) -> float:
    """user + sys of the main thread (trio's loop and pyfuse3's handlers)."""
    return cpu_seconds_of(f"/proc/{pid}/task/{pid}/stat")


def cpu_seconds_of(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def ok_lines(logs: list[Path]) -> int:
    n = 0
    for p in logs:
        with contextlib.suppress(OSError):
            n += p.read_text().count("\tok\t")
    return n


def poll(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll with a deadline (fleet.wait_for sleeps 0.1 s; a CPU window wants a finer end)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


# -- the daemon's CPU ----------------------------------------------------------------------------
def start_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return None
    # --gil: only samples of the thread holding the GIL, i.e. Python running (a thread blocked
    # in epoll, a lock or recv has released it); py-spy's own idle test counts such waits.
    cmd = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--gil"]
    cmd += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_spy(spy: subprocess.Popen[bytes], out: Path, run: Run) -> None:
    """SIGINT makes py-spy write its collapsed stacks; fold them into the run's buckets."""
    spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(timeout=10)
        return
    if not out.exists():
        c.log(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
        return
    if KEEP_PROFILES is not None:  # --keep-profiles: the collapsed stacks, for a closer look
        KEEP_PROFILES.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, KEEP_PROFILES / out.name)
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        run.profile[classify(frames)] += int(count)
        run.leaves[frames[-1]] += int(count)
        for name, marks in INCLUSIVE:
            if any(m in stack for m in marks):
                run.inclusive[name] += int(count)


def classify(frames: list[str]) -> str:
    """The bucket of a sample: frames are root first; the leaf-most recognised file wins."""
    for frame in reversed(frames):
        for name, marks in BUCKETS:
            if any(m in frame for m in marks):
                return name
    return "other (stdlib, interpreter)"


def start_floor(
    kind: str, spec: Path, mnt: Path, counts: Path, state: Path, endpoint: str | None
) -> c.FuseProc:
    """The floor `kind` (FLOORS) on `mnt`: pyfuse3 + trio, no missionfs code."""
    script, args = FLOORS[kind]
    cmd = [c.PYTHON, str(BENCH / script), str(spec), str(mnt), "--count-file", str(counts)]
    cmd += args
    if script == "floor_fs.py":
        cmd += ["--state", str(state)]
    if endpoint is not None:
        cmd += ["--s3", endpoint, "--bucket", BUCKET, "--prefix", f"floors/{mnt.name}"]
    return fuseproc.start(cmd, mnt, mnt.parent / f"{mnt.name}.floor.err", "floor", BENCH)


def synced_lines(state: Path) -> int:
    """Witnesses floor_fs.py has in S3: the lines of its synced log (read here, so the floor
    does no work for the bench's polling)."""
    try:
        with open(state / "synced", "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def measure(
    bench: fleet.Bench,
    name: str,
    endpoint: str | None,
    tasks: int,
    n: int,
    profile: bool,
    *,
    checkout: Path | None = None,
    floor: str | None = None,
) -> Run:
    """One mount, n Python workers, until every task is committed (and in S3): daemon CPU.
    `checkout`: the daemon of that checkout; `floor`: that floor (FLOORS) instead of missionfs
    (with `endpoint`, it uploads there and the run ends when its synced log holds every task)."""
    tmp = bench.tmp
    mission, total = bench.mission(name, tasks, "local" if endpoint else None)
    extra = ("--endpoint-url", endpoint, "--worker", name) if endpoint else ()
    run = Run(name, total)
    counts = tmp / f"{name}.requests"
    mnt, state = tmp / f"{name}-mnt", tmp / f"{name}-state"
    if floor is not None:
        fp = start_floor(floor, mission, mnt, counts, state, endpoint)
    else:
        fp = c.start_missionfs(mission, mnt, state, extra=extra, checkout=checkout)
    daemon_s3 = endpoint is not None and floor is None  # missionfs's status file tells
    workers = fleet.Workers()
    spy: subprocess.Popen[bytes] | None = None
    try:
        if daemon_s3:
            poll(lambda: fp.status()["sync"]["last_full_refresh"] > 0, 60, f"{name} online", 0.1)
        before = fp.status()["sync"].get("requests", {}) if daemon_s3 else {}
        cpu0, t = cpu_seconds(fp.pid), time.monotonic()
        time.sleep(IDLE_WINDOW)  # a measurement window, not synchronisation
        run.idle_per_s = (cpu_seconds(fp.pid) - cpu0) / (time.monotonic() - t)
        logs = [tmp / f"{name}-log{i}" for i in range(n)]
        barrier = workers.ctx.Barrier(n + 1)
        for i, log in enumerate(logs):
            workers.start_python(fleet.py_worker, (str(fp.mnt), str(log), i, n, barrier))
        spy_out = tmp / f"{name}.spy"
        spy = start_spy(fp.pid, spy_out) if profile else None
        barrier.wait(timeout=120)
        cpu0, main0, t0 = cpu_seconds(fp.pid), main_thread_cpu(fp.pid), time.monotonic()
        poll(lambda: ok_lines(logs) >= total, 300, f"{name}: {total} commits")
        if daemon_s3:  # asked of the bucket: a status read is daemon CPU (a render, FUSE requests)
            poll(
                lambda: bench.bucket_count(name, "scraped-tiles") >= total,
                120,
                f"{name}: uploads",
                0.1,
            )
        elif endpoint:
            poll(lambda: synced_lines(state) >= total, 120, f"{name}: uploads")
        run.cpu = cpu_seconds(fp.pid) - cpu0
        run.main_cpu = main_thread_cpu(fp.pid) - main0
        run.seconds = time.monotonic() - t0
        if spy is not None:
            stop_spy(spy, spy_out, run)
            spy = None
        if daemon_s3:
            after = fp.status()["sync"].get("requests", {})
            run.requests = Counter(after) - Counter(before)
    finally:
        if spy is not None:
            spy.kill()
            spy.wait(timeout=10)
        workers.stop()
        fp.stop()
    if floor is not None and counts.exists():
        counted = Counter(json.loads(counts.read_text() or "{}"))
        run.fuse = Counter({k: v for k, v in counted.items() if not k.startswith("_")})
        run.hops = Counter({k[1:]: v for k, v in counted.items() if k.startswith("_")})
    return run


# -- the PUT alone, in process ---------------------------------------------------------------
def plain_client(endpoint: str, **cfg: Any) -> Any:
    """boto3 with missionfs's background settings (and its "no 100 Continue" for small bodies)
    plus `cfg`."""
    import boto3
    import botocore.handlers
    from botocore.config import Config

    base: dict[str, Any] = {
        "max_pool_connections": 8,
        "connect_timeout": 5,
        "read_timeout": 20,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(**(base | cfg))
    )
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


def witness(i: int) -> bytes:
    return f"name,worker,bytes\n10.00/20.00/phrase {i:05d}.csv,{os.getpid()},57\n".encode()


def per_put(put: Callable[[int], None], reps: int) -> float:
    """CPU ms of this thread per call (client-side work, socket syscalls included)."""
    t = time.thread_time()
    for i in range(reps):
        put(i)
    return 1000 * (time.thread_time() - t) / reps


def put_variants(endpoint: str, reps: int) -> tuple[list[tuple[str, float]], str, str]:
    """ms of CPU per witness PUT through S3Store and through plain clients, each setting
    alone; the variants take turns (3 rounds, the median kept) so a neighbour's burst on this
    shared machine does not land on one of them. Also cProfile's top entries (thread CPU time)
    of S3Store's PUT and how many connections S3Store's client opened for all its PUTs."""
    from fusefs.objects.s3 import S3ObjectStore
    from fusefs.objects.s3store import S3Store

    store = S3Store(f"s3://{BUCKET}/inproc", "m", endpoint)
    store.worker = "bench"
    store.check()
    boto = S3Store(f"s3://{BUCKET}/inproc", "m", endpoint)
    boto.worker = "bench"
    boto.check()
    assert isinstance(boto.objects, S3ObjectStore) and isinstance(store.objects, S3ObjectStore)
    boto.objects.thin = False  # the daemon's PUT before the thin path
    gen = iter(range(10**9))

    def via_store(i: int) -> None:
        store.create_witness(f"s/{next(gen)}/w.csv", witness(i), True)

    def via_boto(i: int) -> None:
        boto.create_witness(f"b/{next(gen)}/w.csv", witness(i), True)

    def plain(client: Any, checksum: bool, meta: bool = True) -> Callable[[int], None]:
        def put(i: int) -> None:
            body = witness(i)
            digest = hashlib.sha256(body)
            kw: dict[str, Any] = {"Bucket": BUCKET, "Key": f"inproc/p/{next(gen)}", "Body": body}
            kw["IfNoneMatch"] = "*"
            if meta:
                kw["Metadata"] = {"sha256": digest.hexdigest(), "worker": "bench"}
            if checksum:
                kw["ChecksumSHA256"] = base64.b64encode(digest.digest()).decode()
            client.put_object(**kw)

        return put

    minimal = MinimalSigV4(endpoint, BUCKET, store.checksums)
    raw = RawPut(endpoint, BUCKET, store.checksums)
    lean = {"parameter_validation": False, "request_checksum_calculation": "when_required"}
    variants: list[tuple[str, Callable[[int], None]]] = [
        (
            f"S3Store.create_witness, the daemon's PUT: thin path (checksum: {store.checksums})",
            via_store,
        ),
        ("S3Store.create_witness through boto3 (the daemon's PUT before)", via_boto),
        ("plain boto3 client, the same request", plain(plain_client(endpoint), store.checksums)),
        (
            "  + Config(parameter_validation=False)",
            plain(plain_client(endpoint, parameter_validation=False), store.checksums),
        ),
        (
            "  + no x-amz-checksum-sha256 (request_checksum_calculation='when_required')",
            plain(plain_client(endpoint, **lean), False),
        ),
        (
            "  + no x-amz-meta-* (the sha256 only in the manifest)",
            plain(plain_client(endpoint, **lean), False, False),
        ),
        (
            "  + s3={'payload_signing_enabled': False} (UNSIGNED-PAYLOAD, no body hash)",
            plain(
                plain_client(endpoint, s3={"payload_signing_enabled": False}, **lean), False, False
            ),
        ),
        (
            "minimal SigV4 on http.client (the floor; same headers as the daemon's PUT)",
            lambda i: minimal.put(f"inproc/min/{next(gen)}", witness(i)),
        ),
        (
            "minimal SigV4 on a raw socket, minimal HTTP/1.1 reader (floor_fs.py's PUT)",
            lambda i: raw.put(f"inproc/raw/{next(gen)}", witness(i)),
        ),
    ]
    for _, fn in variants:  # warm: connection, endpoint rules cache, first-use imports
        for i in range(5):
            fn(-1 - i)
    rounds: list[list[float]] = [[] for _ in variants]
    for _ in range(3):
        for k, (_, fn) in enumerate(variants):
            rounds[k].append(per_put(fn, max(1, reps // 3)))
    out = [(label, sorted(r)[1]) for (label, _), r in zip(variants, rounds, strict=True)]
    per_async = sorted(async_per_put(endpoint, reps // 3, store.checksums) for _ in range(3))
    label = "minimal SigV4 on a trio stream, from trio's thread (floor+s3-async's PUT; the loop"
    out.append((label + " included)", per_async[1]))
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    for i in range(reps):
        via_store(i)
    prof.disable()
    thin = store.objects.thin_put()
    conns = thin.pool.opened if thin is not None else -1
    return out, _top(prof, reps), f"S3Store's thin path opened {conns} connection(s) for its PUTs"


def async_per_put(endpoint: str, reps: int, checksum: bool) -> float:
    """CPU ms of this thread per PUT on a kept-alive trio stream, trio's loop included (the
    wait for each answer is a trip through its scheduler and epoll)."""
    import trio

    signer = Signer(endpoint, BUCKET, checksum)
    gen = iter(range(time.monotonic_ns(), 10**30))  # keys unused by an earlier call

    async def run() -> float:
        put = AsyncPut(signer)
        for i in range(5):  # warm: the connection
            await put.put(f"inproc/async/{next(gen)}", witness(-1 - i))
        t = time.thread_time()
        for i in range(max(1, reps)):
            await put.put(f"inproc/async/{next(gen)}", witness(i))
        return 1000 * (time.thread_time() - t) / max(1, reps)

    return trio.run(run)


def _top(prof: cProfile.Profile, reps: int, n: int = 15) -> str:
    """cProfile's top entries by own time, in microseconds per PUT."""
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_, calls, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        where = file.split("site-packages/")[-1].split("lib/python3")[-1]
        rows.append((tt, ct, calls, f"{where}:{line}({fn})"))
    rows.sort(reverse=True)
    lines = [f"  {'own us/PUT':>10}  {'cum us/PUT':>10}  {'calls/PUT':>9}  function"]
    for tt, ct, calls, label in rows[:n]:
        lines.append(
            f"  {1e6 * tt / reps:10.1f}  {1e6 * ct / reps:10.1f}  {calls / reps:9.1f}  {label}"
        )
    return "\n".join(lines)


# -- the report --------------------------------------------------------------------------------
def base_name(name: str) -> str:
    """The row a run belongs to: its name without the round suffix (`s3-local#2`)."""
    return name.split("#", 1)[0]


def summary(runs: list[Run]) -> None:
    """Median ms/task per row over the rounds, with the spread (min-max), side by side."""
    rows: dict[str, list[Run]] = {}
    for r in runs:
        if not r.name.endswith("-prof"):
            rows.setdefault(base_name(r.name), []).append(r)
    if not any(len(v) > 1 for v in rows.values()) and len(rows) < 3:
        return
    print("\nSummary: ms of daemon CPU per task, median of the rounds [min-max]")
    table = []
    for name, rs in rows.items():
        ms = sorted(r.ms_per_task for r in rs)
        rate = sorted(r.tasks / max(1e-9, r.seconds) for r in rs)
        fuse = [r.fuse.total() / max(1, r.tasks) for r in rs if r.fuse]
        table.append(
            [
                name,
                len(rs),
                f"{statistics.median(ms):.2f}",
                f"{ms[0]:.2f}-{ms[-1]:.2f}",
                f"{statistics.median(rate):.0f}",
                f"{statistics.median(fuse):.1f}" if fuse else "",
            ]
        )
    headers = ["row", "rounds", "ms/task", "spread", "tasks/s", "FUSE req/task"]
    c.print_table(headers, table)


def report(runs: list[Run], puts: list[tuple[str, float]], top: str, n: int) -> None:
    print(f"\nDaemon CPU per completed task: one mount, {n} Python workers, tmpfs state")
    headers = ["run", "tasks", "secs", "tasks/s", "CPU s", "ms/task", "main thr", "idle ms/s"]
    headers += ["S3 req/task", "FUSE req/task"]
    rows = []
    for r in runs:
        req = sum(r.requests.values()) / max(1, r.tasks) if r.requests else 0.0
        fuse = f"{r.fuse.total() / max(1, r.tasks):.1f}" if r.fuse else ""
        rows.append(
            [
                r.name,
                r.tasks,
                f"{r.seconds:.2f}",
                f"{r.tasks / max(1e-9, r.seconds):.0f}",
                f"{r.cpu:.2f}",
                f"{r.ms_per_task:.2f}",
                f"{100 * r.main_cpu / max(1e-9, r.cpu):.0f}%",
                f"{1000 * r.idle_per_s:.1f}",
                f"{req:.2f}",
                fuse,
            ]
        )
    c.print_table(headers, rows)
    for r in runs:
        if r.fuse:
            per = ", ".join(f"{k} {v / max(1, r.tasks):.2f}" for k, v in sorted(r.fuse.items()))
            per += "".join(f"; {k} {v / max(1, r.tasks):.3f}" for k, v in sorted(r.hops.items()))
            print(f"  {r.name}: FUSE requests per task: {per}")
    summary(runs)
    print(
        "CPU: user + sys of the daemon (/proc/PID/stat, 10 ms ticks), workers' start to all"
        " committed and in S3;\nmain thr: the main thread's share (trio loop, pyfuse3 handlers),"
        " the rest is trio's worker threads (uploads, blocking file work);\n"
        "the -prof runs are slowed by py-spy: their ms/task only scales the profile shares"
    )
    for r in runs:
        if r.requests:
            print(
                f"  {r.name}: requests "
                + ", ".join(f"{k} {v}" for k, v in sorted(r.requests.items()))
            )
    for r in runs:
        total = sum(r.profile.values())
        if not total:
            continue
        print(f"\nprofile of {r.name} (py-spy, {total} on-CPU samples; ms/task by share of CPU)")
        for bucket, k in r.profile.most_common():
            print(f"  {100 * k / total:5.1f}%  {r.ms_per_task * k / total:6.3f} ms/task  {bucket}")
        print("  inclusive (a sample may count in several):")
        for name, _ in INCLUSIVE:
            k = r.inclusive[name]
            print(f"  {100 * k / total:5.1f}%  {r.ms_per_task * k / total:6.3f} ms/task  {name}")
        print("  top leaf frames:")
        for leaf, k in r.leaves.most_common(12):
            print(f"  {100 * k / total:5.1f}%  {leaf[:110]}")
    if puts:
        print("\nCPU per witness PUT in this process (one thread, SeaweedFS on loopback)")
        for label, ms in puts:
            print(f"  {ms:6.3f} ms  {label}")
        print("\ncProfile of S3Store.create_witness (thread CPU time), top by own time")
        print(top)
    sys.stdout.flush()


def measured_rows(args: argparse.Namespace, ep: str) -> list[tuple[str, str | None, Path | None]]:
    """(row, S3 endpoint or None, old checkout or None) in the order of a round: each floor
    next to the missionfs row it is the floor of."""
    floors = not args.no_floor
    rows: list[tuple[str, str | None, Path | None]] = []
    if floors:
        rows += [("floor", None, None)] + ([("floor-old", None, None)] if args.floor_old else [])
        rows.append(("floor+commit", None, None))
    rows.append(("no-s3", None, None))
    if floors:
        rows += [("floor+s3", ep, None), ("floor+s3-async", ep, None)]
        rows += [("floor+s3-http", ep, None)] if args.floor_http else []
    rows.append(("s3-local", ep, None))
    if args.old is not None:
        rows += [("no-s3-old", None, args.old), ("s3-local-old", ep, args.old)]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=600, help="tasks per mount (600)")
    ap.add_argument("--workers", type=int, default=4, help="Python workers (4)")
    ap.add_argument("--puts", type=int, default=300, help="PUTs per in-process variant (300)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor rows")
    ap.add_argument(
        "--floor-old", action="store_true", help="also the floor as the older tables had it"
    )
    ap.add_argument(
        "--floor-http", action="store_true", help="also floor+s3 with http.client's PUT"
    )
    ap.add_argument("--old", type=Path, help="also measure the daemon of this checkout")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every row (1)")
    ap.add_argument("--keep-profiles", type=Path, help="copy py-spy's raw stacks to this dir")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of the idle window (2)")
    args = ap.parse_args()
    global KEEP_PROFILES, IDLE_WINDOW
    KEEP_PROFILES = args.keep_profiles
    IDLE_WINDOW = args.idle
    os.environ.update(s3_env())
    runs: list[Run] = []
    puts: list[tuple[str, float]] = []
    top = ""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(c.tmpfs(size="2G", prefix="bench-cpu-"))
        server = SeaweedServer(tmp / "weed")
        stack.callback(server.stop)
        c.log("starting SeaweedFS")
        server.start()
        server.bucket(BUCKET)
        ep = server.endpoint
        bench = fleet.Bench(tmp, server, stack)
        rows = measured_rows(args, ep)
        for k in range(args.repeat):
            for name, endpoint, checkout in rows:
                tag = f"{name}#{k + 1}" if args.repeat > 1 else name
                c.log(f"{tag}: measuring")
                runs.append(
                    measure(
                        bench,
                        tag.replace("#", "-r"),
                        endpoint,
                        args.tasks,
                        args.workers,
                        False,
                        checkout=checkout,
                        floor=name if name in FLOORS else None,
                    )
                )
                runs[-1].name = tag
        if not args.no_profile:
            for name, endpoint in (("no-s3-prof", None), ("s3-local-prof", ep)):
                c.log(f"{name}: profiling")
                runs.append(measure(bench, name, endpoint, args.tasks, args.workers, True))
            if not any(r.profile for r in runs):
                print("cpu_per_task: no py-spy profile (pip install py-spy)", file=sys.stderr)
        conns = ""
        if args.puts > 0:
            c.log("PUT variants in process")
            puts, top, conns = put_variants(ep, args.puts)
    report(runs, puts, top + "\n" + conns, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
