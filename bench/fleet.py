"""Fleet simulation: M mounts x N workers on one S3 server, against a PostgreSQL queue.

One SeaweedFS server (`weed`, S3 gateway on 127.0.0.1) holds the bucket; each scenario mounts a
fresh mission (its own prefix) with `missionfs mount ... --refresh 1`, runs worker processes
until nothing is pending, waits until every witness is in S3, and reports:

- tasks/s: distinct tasks / (last successful local commit - start of the workers);
- duplicate work: attempts (a worker wrote its result, whether or not its commit won) minus
  distinct tasks, plus the results that ended under `conflicts/` in the bucket;
- S3 requests per task by type, summed over the daemons' `status.sync.requests` (from the
  moment the mounts were online and had listed the bucket, to the moment everything was in S3);
- cost per 1M tasks at AWS list prices (PUT/LIST $0.005/1k, GET/HEAD $0.0004/1k, DELETE free).

Scenarios (names as in the table; N = 4 and 8, `--quick`: 4):
  pg-N             PostgreSQL 15 (Debian's package, initdb + postgres started here on 127.0.0.1
                   as the `postgres` user), the lease pattern in two transactions: claim =
                   UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING,
                   complete = UPDATE status = 'done'; N Python workers (psycopg) that write and
                   fsync the same small CSV into a local directory in between.
  pgs3-N           the fair peer, PostgreSQL's queue *and* the result object: claim as pg-N
                   (SKIP LOCKED), PUT the witness missionfs would upload (same body, key,
                   If-None-Match: *, sha256 metadata, the checksum header when the server
                   verifies it) to the same SeaweedFS with a client tuned as missionfs's, then
                   complete; N Python workers. Its tasks/s is the "vs PG+S3" baseline.
  a-local-{sh,py}N `claims = "local"` (S3 store, no S3 leases): 1 mount, N shell/Python workers.
  n-nos3-pyN       no [store] at all: the mount alone (where the time goes without S3).
  f-floor-pyN      the same Python workers through bench/passthrough_fs.py, a minimal pyfuse3
                   passthrough of a plain tree with the same names (pending/REL files, claimed/
                   and done/ dirs; a claim and a commit are plain renames): the pyfuse3 floor.
  s-strict-pyN     `claims = "strict"`, 1 mount, N Python workers: the price of S3 leases.
  b-strict-sh      `claims = "strict"`, 2 mounts x 4 shell workers.
  c-optim-part-*   `claims = "optimistic"`, 2 mounts x 4 workers; mount 0 talks to S3 through a
                   TCP proxy (here, loopback only) that refuses and cuts every connection for
                   30 s (quick: 5 s) from 5 s into the run; the mission is sized from the strict
                   runs' rates so that it outlasts the partition.
A daemon that dies is restarted by the bench (as a supervisor would; at most 3 times) and
reported in the notes under the table.

Shell workers use only ls/shuf/mv/cat/printf and redirection: a random row, tile and task, one
short listing each (`find pending -type f | shuf -n 1` would list the whole pending tree for
every task: 60 ms per pick at 1000 tasks); Python workers use os.scandir (lazily, each from its
own offset), os.rename to claim, a write into tmp/ and os.rename to commit. Everything (state
dirs, S3 data, PostgreSQL data, outputs) lives on one private tmpfs, unmounted at the end.
Installs nothing: without PostgreSQL or psycopg the PostgreSQL rows are skipped with a message.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(ROOT)]

import common as c  # noqa: E402

from fusefs.model.mission import load_mission  # noqa: E402
from tests.support.fuseproc import MOUNT_DEADLINE, wait_mounted  # noqa: E402
from tests.support.loopfs import is_mounted  # noqa: E402
from tests.support.s3_servers import SeaweedServer, free_port, s3_env  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "fleet"
PHRASES = 10  # tasks per tile
IDLE_SECONDS = 2.0  # a worker stops after pending/ stayed empty this long
PRICE_A = 0.005 / 1000  # PUT, COPY, POST, LIST
PRICE_B = 0.0004 / 1000  # GET, HEAD (DELETE is free)
OPS = ("PUT", "POST", "GET", "HEAD", "LIST", "DELETE")  # POST: DeleteObjects of retired leases

# Pick a random pending task one level at a time (a random row, a random tile in it, a random
# task in that: three short listings, where `find pending -type f | shuf -n 1` would list the whole
# pending tree for every task), claim it with mv, read its descriptor, write the result into
# tmp/, commit it with mv into done/; log every attempt (result written) with its outcome.
SHELL_WORKER = r"""
m="$1"
log="$2"
idle=0
tmp="$m/tmp/sh$$"
while [ "$idle" -lt "$3" ]; do
    # Paths from the mountpoint, no cd: a restarted daemon's new mount is picked up.
    rows="$(ls "$m/pending" 2>/dev/null)" || { sleep 0.1; continue; }  # no mount: not idle
    if [ -z "$rows" ]; then idle=$((idle + 1)); sleep 0.1; continue; fi
    idle=0
    row="$(printf '%s\n' "$rows" | shuf -n 1)"
    tile="$(ls "$m/pending/$row" 2>/dev/null | shuf -n 1)"
    [ -n "$tile" ] || continue
    name="$(ls "$m/pending/$row/$tile" 2>/dev/null | shuf -n 1)"
    [ -n "$name" ] || continue
    rel="$row/$tile/$name"
    if mv "$m/pending/$rel" "$m/claimed/$rel" 2>/dev/null; then
        desc="$(cat "$m/claimed/$rel")" || continue
        printf 'name,worker,bytes\n%s,%s,%s\n' "$rel" "$$" "${#desc}" > "$tmp" || continue
        if mv "$tmp" "$m/done/$rel" 2>/dev/null; then o=ok; else o=refused; rm -f "$tmp"; fi
        printf '%s\t%s\t%s\n' "$EPOCHREALTIME" "$o" "$rel" >> "$log"
    fi
done
"""


# -- the partition: a TCP proxy in front of the S3 server ----------------------------------------
class PartitionProxy:
    """Forwards 127.0.0.1:port to the S3 server; partition() refuses new connections and cuts
    the open ones until restore(). One thread per direction of each connection."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.cut = 0

    def start(self) -> PartitionProxy:
        ls = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: rebind at once
        ls.settimeout(0.1)
        self._listener = ls
        self._acceptor = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self._acceptor.start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        try:
            while self._listener is ls:
                try:
                    conn, _ = ls.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self._listener is not ls:
                    conn.close()
                    return
                try:
                    up = socket.create_connection(self.target, timeout=5)
                except OSError:
                    conn.close()
                    continue
                for s in (conn, up):
                    s.settimeout(None)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:
                    self._conns |= {conn, up}
                threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()
                threading.Thread(target=self._pump, args=(up, conn), daemon=True).start()
        finally:
            ls.close()  # closed by its own thread: no fd reuse race with accept()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                for s in (src, dst):
                    if s in self._conns:
                        self._conns.discard(s)
                        s.close()

    def partition(self) -> None:
        self._listener = None  # the acceptor closes the listener: connections are refused
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
        for s in conns:  # wake both pumps; they close the sockets
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            self.cut += 1

    def restore(self) -> None:
        if self._listener is None:
            self.start()

    def stop(self) -> None:
        self.partition()


# -- FUSE connections ----------------------------------------------------------------------------------------
FUSECTL = Path("/sys/fs/fuse/connections")


def abort_fuse(dev: int) -> bool:
    """Abort the FUSE connection of the superblock `dev` (fusectl; mounted for the occasion).

    Needed when a daemon dies with requests in flight: its notification thread can block in the
    kernel behind a worker's rename that waits for an answer that never comes, so neither the
    daemon nor the workers can exit (D state) until the connection is aborted."""
    mounted_here = False
    try:
        if not os.path.ismount(FUSECTL):
            subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], check=True)
            mounted_here = True
        conn = FUSECTL / str((os.major(dev) << 20) | os.minor(dev))
        if not conn.exists():
            return False
        (conn / "abort").write_text("1\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        if mounted_here:
            subprocess.run(["umount", str(FUSECTL)], capture_output=True, check=False)


def _state(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _stuck(pid: int) -> bool:
    """The main thread has exited but another thread lives on (blocked in the kernel): the
    process still holds /dev/fuse, so its connection (and the number naming it) is ours."""
    if _state(f"/proc/{pid}/stat") != "Z":
        return False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_state(f"/proc/{pid}/task/{t}/stat") not in ("", "Z", "X") for t in tasks)


# -- mounts -----------------------------------------------------------------------------------------
@dataclass
class Mount:
    name: str
    mission: Path
    mnt: Path
    state: Path
    endpoint: str | None  # None: a mission without [store]
    proc: subprocess.Popen[bytes] | None = None
    dev: int | None = None  # st_dev of the mount: names its FUSE connection

    @property
    def err(self) -> Path:
        return self.state.parent / f"{self.state.name}.err"

    def crashed(self) -> str | None:
        """None while the daemon runs; else its exit status and last error line."""
        if self.proc is None or (self.proc.poll() is None and not _stuck(self.proc.pid)):
            return None
        lines = [x.strip(" |") for x in self.err.read_text(errors="replace").splitlines()]
        last = next((x for x in reversed(lines) if ": " in x), "")
        code = self.proc.returncode if self.proc.returncode is not None else "(threads stuck)"
        return f"exit {code}: {last[:160]}"

    def start(self, wait_online: bool = True) -> Mount:
        self.mnt.mkdir(parents=True, exist_ok=True)
        err = self.err
        cmd = [str(BIN / "missionfs"), "mount", str(self.mission), str(self.mnt)]
        cmd += ["--state", str(self.state), "--foreground", "--quiet"]
        if self.endpoint is not None:
            cmd += ["--endpoint-url", self.endpoint, "--worker", self.name, "--refresh", "1"]
        with open(err, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=s3_env(),
                start_new_session=True,  # Ctrl-C reaches the bench only; we unmount cleanly
            )
        wait_mounted(self.mnt, self.proc, time.monotonic() + MOUNT_DEADLINE, err)
        self.dev = os.stat(self.mnt).st_dev
        if self.endpoint is None or not wait_online:
            return self
        wait_for(
            lambda: (s := self.status()["sync"])["online"] and s["last_full_refresh"] > 0,
            60,
            f"{self.name} online",
        )
        return self

    def status(self) -> dict[str, Any]:
        return dict(json.loads((self.mnt / "status").read_text()))

    def requests(self) -> Counter[str]:
        return Counter(self.status()["sync"].get("requests", {}))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.dev is not None and _stuck(self.proc.pid):
            abort_fuse(self.dev)  # a dead daemon: fail its pending requests first
        if self.proc.poll() is None and is_mounted(self.mnt):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [str(BIN / "missionfs"), "umount", str(self.mnt)],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if self.dev is not None:
                abort_fuse(self.dev)  # still running, so the connection is still ours
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# -- workers ---------------------------------------------------------------------------------------
def _rotated(names: list[str], wid: int, n: int) -> list[str]:
    k = wid * len(names) // max(1, n)
    return names[k:] + names[:k]


def _walk_pending(top: str, rows: list[str], wid: int, n: int) -> Iterator[str]:
    """Lazily yield pending rels, rows and tiles rotated so each worker starts elsewhere."""
    for row in _rotated(rows, wid, n):
        try:
            tiles = [e.name for e in os.scandir(f"{top}/{row}")]
        except OSError:
            continue
        for tile in _rotated(tiles, wid, n):
            try:
                with os.scandir(f"{top}/{row}/{tile}") as it:
                    for e in it:
                        yield f"{row}/{tile}/{e.name}"
            except OSError:
                continue


def _py_task(mnt: str, rel: str, tmp: str) -> str | None:
    """Claim, read the descriptor, write the result, commit; None if the claim was lost."""
    try:
        os.rename(f"{mnt}/pending/{rel}", f"{mnt}/claimed/{rel}")
    except OSError:  # ENOENT: lost the race (or done); EAGAIN: strict claims and S3 offline
        return None
    with open(f"{mnt}/claimed/{rel}", "rb") as f:
        desc = f.read()
    with open(tmp, "w") as f:
        f.write(f"name,worker,bytes\n{rel},{os.getpid()},{len(desc)}\n")
    try:
        os.rename(tmp, f"{mnt}/done/{rel}")
        return "ok"
    except OSError:  # EEXIST: the task is done already
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return "refused"


def py_worker(mnt: str, log_path: str, wid: int, n: int, barrier: Any) -> None:
    """The Python worker on a mount: scandir, rename to claim, write tmp/, rename to commit."""
    tmp = f"{mnt}/tmp/py{os.getpid()}"
    barrier.wait()
    idle_since: float | None = None
    with open(log_path, "a", buffering=1) as log:
        while True:
            try:
                rows = os.listdir(f"{mnt}/pending")
            except OSError:  # the mount is gone (a daemon being restarted): not idle
                idle_since = None
                time.sleep(0.1)
                continue
            seen = 0
            for rel in _walk_pending(f"{mnt}/pending", rows, wid, n):
                seen += 1
                try:
                    outcome = _py_task(mnt, rel, tmp)
                except OSError:
                    continue
                if outcome is not None:
                    log.write(f"{time.time():.6f}\t{outcome}\t{rel}\n")
            if seen:
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since > IDLE_SECONDS:
                return
            time.sleep(0.1)


CLAIM_SQL = """
UPDATE tasks SET status = 'claimed', worker = %s,
       leased_until = now() + make_interval(secs => %s)
 WHERE id = (SELECT id FROM tasks
              WHERE status = 'pending' OR (status = 'claimed' AND leased_until < now())
              ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, rel
"""
COMPLETE_SQL = "UPDATE tasks SET status = 'done', leased_until = NULL WHERE id = %s AND worker = %s"


def pg_worker(dsn: str, out: str, log_path: str, wid: int, barrier: Any) -> None:
    """The lease pattern: claim and complete as two transactions, the same CSV written (and
    fsync'd, as a missionfs commit does) into a local directory in between."""
    import psycopg

    me = f"w{wid}"
    tmp = f"{out}/tmp-{me}"
    with psycopg.connect(dsn, autocommit=True) as conn, open(log_path, "a", buffering=1) as log:
        barrier.wait()
        while True:
            row = conn.execute(CLAIM_SQL, (me, 900.0), prepare=True).fetchone()
            if row is None:
                return
            task, rel = row
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, f"name,worker,bytes\n{rel},{os.getpid()},{len(rel)}\n".encode())
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, f"{out}/{task}.csv")
            cur = conn.execute(COMPLETE_SQL, (task, me), prepare=True)
            outcome = "ok" if cur.rowcount == 1 else "refused"
            log.write(f"{time.time():.6f}\t{outcome}\t{rel}\n")


PEER_TABLE = "peer_tasks"  # the PostgreSQL + S3 peer's own queue (the pg rows keep `tasks`)
PEER_CLAIM_SQL = CLAIM_SQL.replace("tasks", PEER_TABLE).replace("id, rel", "id, rel, descr")
PEER_COMPLETE_SQL = COMPLETE_SQL.replace("tasks", PEER_TABLE)


def peer_client(endpoint: str) -> Any:
    """A boto3 client tuned as missionfs's background client (pool, timeouts, standard
    retries, no "100 Continue" round trip for a small body): the peer gets the same S3 code
    path, so the ratio compares the architectures, not two client settings."""
    import boto3
    import botocore.handlers
    from botocore.config import Config

    cfg = Config(
        max_pool_connections=32,
        connect_timeout=5,
        read_timeout=20,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


def peer_worker(
    dsn: str, endpoint: str, prefix: str, checksums: bool, log_path: str, wid: int, barrier: Any
) -> None:
    """The fair peer: claim with SKIP LOCKED, PUT the witness missionfs would upload (same
    body as py_worker writes, same key, If-None-Match: *, sha256 metadata, the checksum header
    when the server verifies it, as missionfs does), then complete. A lost If-None-Match (the
    witness exists: a lease expired and someone else finished) is logged as refused."""
    import botocore.exceptions
    import psycopg

    from fusefs.objects.s3store import SHA_META, encode_rel

    me = f"w{wid}"
    client = peer_client(endpoint)
    with psycopg.connect(dsn, autocommit=True) as conn, open(log_path, "a", buffering=1) as log:
        barrier.wait()
        while True:
            row = conn.execute(PEER_CLAIM_SQL, (me, 900.0), prepare=True).fetchone()
            if row is None:
                return
            task, rel, desc = row
            body = f"name,worker,bytes\n{rel},{os.getpid()},{len(desc)}\n".encode()
            digest = hashlib.sha256(body)
            kw: dict[str, Any] = {
                "Bucket": BUCKET,
                "Key": f"{prefix}/scraped-tiles/{encode_rel(rel)}",
                "Body": body,
                "IfNoneMatch": "*",
                "Metadata": {SHA_META: digest.hexdigest(), "worker": me},
            }
            if checksums:
                kw["ChecksumSHA256"] = base64.b64encode(digest.digest()).decode()
            try:
                client.put_object(**kw)
                outcome = "ok"
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                    raise
                outcome = "refused"
            cur = conn.execute(PEER_COMPLETE_SQL, (task, me), prepare=True)
            if cur.rowcount != 1:
                outcome = "refused"
            log.write(f"{time.time():.6f}\t{outcome}\t{rel}\n")


class Workers:
    """Worker processes we started: shell ones in their own session, Python ones via spawn."""

    def __init__(self) -> None:
        self.shell: list[subprocess.Popen[bytes]] = []
        self.python: list[mp.process.BaseProcess] = []
        self.ctx = mp.get_context("spawn")

    def start_shell(self, script: Path, mnt: Path, log: Path) -> None:
        idle = str(int(IDLE_SECONDS / 0.1))
        self.shell.append(
            subprocess.Popen(
                ["bash", str(script), str(mnt), str(log), idle],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def start_python(self, target: Any, args: tuple[Any, ...]) -> None:
        p = self.ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.python.append(p)

    def running(self) -> int:
        return sum(p.poll() is None for p in self.shell) + sum(p.is_alive() for p in self.python)

    def kill(self) -> None:
        """SIGKILL every worker (the process group of each shell worker we started)."""
        for sp in self.shell:
            if sp.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sp.pid, signal.SIGKILL)
        for pp in self.python:
            if pp.is_alive():
                pp.kill()

    def stop(self) -> None:
        self.kill()
        for sp in self.shell:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sp.wait(timeout=10)
        for pp in self.python:
            pp.join(timeout=10)
        self.shell, self.python = [], []


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    claims: str
    layout: str
    workers: int
    tasks: int
    done: int = 0
    seconds: float = 0.0
    s3_seconds: float | None = None
    attempts: int = 0
    conflicts: int | None = None
    requests: Counter[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def dups(self) -> int:
        return self.attempts - self.done


def attempts_between(logs: list[Path], start: float, end: float) -> int:
    n = 0
    for path in logs:
        if path.exists():
            n += sum(
                start <= float(x.split("\t", 1)[0]) < end for x in path.read_text().splitlines()
            )
    return n


def read_logs(logs: list[Path], t0: float) -> tuple[int, int, float]:
    """(attempts, distinct tasks done, seconds from t0 to the last successful commit)."""
    attempts, done, last = 0, set(), t0
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            ts, outcome, rel = line.split("\t", 2)
            attempts += 1
            if outcome == "ok":
                done.add(rel)
                last = max(last, float(ts))
    return attempts, len(done), last - t0


# -- scenarios -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, tmp: Path, server: SeaweedServer | None, stack: contextlib.ExitStack):
        self.tmp = tmp
        self.server = server
        self.stack = stack
        self.script = tmp / "worker.sh"
        self.script.write_text(SHELL_WORKER)

    def mission(self, name: str, tasks: int, claims: str | None) -> tuple[Path, int]:
        tiles = max(1, round(tasks / PHRASES))
        rows = max(1, int(math.sqrt(tiles)))
        cols = math.ceil(tiles / rows)
        path = c.write_mission(self.tmp / f"{name}.toml", name, rows, cols, c.phrases(PHRASES))
        if claims is not None:
            with path.open("a") as f:
                f.write(f'[store]\ns3 = "s3://{BUCKET}/runs"\nclaims = "{claims}"\n')
        return path, rows * cols * PHRASES

    def bucket_count(self, mission: str, area: str) -> int:
        assert self.server is not None
        client = self.server.client()
        n = 0
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"runs/{mission}/{area}/"
        )
        for page in pages:
            n += len(page.get("Contents", []))
        return n

    def run_missionfs(
        self,
        name: str,
        claims: str,
        tasks: int,
        mounts: int,
        per_mount: int,
        kind: str,
        partition: tuple[float, float] | None = None,
        deadline: float = 300.0,
    ) -> Result:
        assert self.server is not None
        s3 = claims != "none"
        mission, total = self.mission(name, tasks, claims if s3 else None)
        layout = f"{mounts}x{per_mount} {kind}"
        res = Result(name, claims, layout, mounts * per_mount, total)
        c.log(f"{name}: {total} tasks, {layout} workers, claims = {claims}")
        proxy = PartitionProxy(self.server.ports["s3"]).start() if partition else None
        fleet = Fleet(res)
        workers = Workers()
        t = time.perf_counter()
        try:
            for i in range(mounts):
                endpoint = proxy.endpoint if proxy and i == 0 else self.server.endpoint
                m = Mount(
                    f"{name}-m{i}",
                    mission,
                    self.tmp / f"{name}-mnt{i}",
                    self.tmp / f"{name}-state{i}",
                    endpoint if s3 else None,
                )
                fleet.add(m.start())
            c.log(f"{name}: {mounts} mount(s) online in {time.perf_counter() - t:.1f} s")
            fleet.baseline()
            logs = [self.tmp / f"{name}-log{i}" for i in range(mounts * per_mount)]
            barrier = workers.ctx.Barrier(len(logs) + 1) if kind == "py" else None
            for i, log in enumerate(logs):
                mnt = fleet.mounts[i % mounts].mnt
                if kind == "sh":
                    workers.start_shell(self.script, mnt, log)
                else:
                    workers.start_python(py_worker, (str(mnt), str(log), i, len(logs), barrier))
            if barrier is not None:
                barrier.wait(timeout=120)
            t0 = time.time()
            fleet.t0 = t0
            cut_at: float | None = None
            healed: float | None = None
            while workers.running():
                now = time.time() - t0
                if proxy and partition and cut_at is None and now >= partition[0]:
                    proxy.partition()
                    cut_at = now
                    c.log(f"{name}: partition of {fleet.mounts[0].name} from S3 at {now:.1f} s")
                heal_at = cut_at + partition[1] if partition and cut_at is not None else None
                if proxy and heal_at is not None and healed is None and now >= heal_at:
                    proxy.restore()
                    healed = now
                    c.log(f"{name}: partition healed at {now:.1f} s")
                if now > deadline:
                    res.notes.append(f"workers stopped at the {deadline:.0f} s deadline")
                    break
                fleet.supervise()
                time.sleep(0.05)
            if proxy and cut_at is not None and healed is None:
                proxy.restore()
                healed = time.time() - t0
                res.notes.append(f"mission ended {healed - cut_at:.0f} s into the partition")
            elif proxy and cut_at is None:
                res.notes.append("mission ended before the partition")
            workers.stop()
            res.attempts, res.done, res.seconds = read_logs(logs, t0)
            if s3:
                self._settle(name, fleet, total)
            elif res.done != total:
                res.notes.append(f"incomplete: {res.done} of {total}")
            if proxy and cut_at is not None and healed is not None:
                cut_logs = logs[0::mounts]
                other = [x for x in logs if x not in cut_logs]
                span = max(1e-9, healed - cut_at)
                p_n = attempts_between(cut_logs, t0 + cut_at, t0 + healed)
                o_n = attempts_between(other, t0 + cut_at, t0 + healed)
                res.notes.append(
                    f"during the {span:.0f} s partition the cut mount's workers wrote {p_n}"
                    f" results ({p_n / span:.1f}/s), the others {o_n} ({o_n / span:.1f}/s);"
                    f" the proxy cut {proxy.cut} connections"
                )
        finally:
            workers.kill()  # first: a worker stuck on a dead mount is freed by m.stop()
            t = time.perf_counter()
            for m in fleet.mounts:
                m.stop()
            workers.stop()
            if proxy:
                proxy.stop()
            c.log(
                f"{name}: {res.done} tasks in {res.seconds:.1f} s, {res.dups} duplicates"
                f" (unmounted in {time.perf_counter() - t:.1f} s)"
            )
        return res

    def _settle(self, name: str, fleet: Fleet, total: int) -> None:
        """Wait until every witness is in S3, then count requests, conflicts, leftovers."""
        res = fleet.res
        deadline = time.monotonic() + 180
        while True:
            fleet.supervise()
            try:
                if all(m.status()["sync"]["queue"] == 0 for m in fleet.mounts):
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                res.notes.append("uploads not drained after 180 s")
                break
            time.sleep(0.1)
        res.s3_seconds = time.time() - fleet.t0
        time.sleep(1.5)  # the last manifest flush and lease deletions
        fleet.supervise()
        res.requests = fleet.total_requests()
        in_s3 = self.bucket_count(name, "scraped-tiles")
        res.conflicts = self.bucket_count(name, "conflicts")
        if in_s3 != total or res.done != total:
            res.notes.append(f"incomplete: {res.done} committed, {in_s3} in S3 of {total}")
        leftover = self.bucket_count(name, "claims")
        if leftover:
            res.notes.append(f"{leftover} lease objects left in the bucket")
        held, errs = 0, 0
        for m in fleet.mounts:
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = m.status()["sync"]
                held += info["leases_held"]
                errs += info["errors"]
                if info.get("conditional_writes") is not True:
                    res.notes.append(
                        f"{m.name}: conditional_writes = {info.get('conditional_writes')}"
                    )
        if held:
            res.notes.append(f"status.sync.leases_held = {held} after the mission")
        if errs:
            res.notes.append(f"{errs} sync errors")


class Fleet:
    """The mounts of one scenario: restarts a crashed daemon (like a supervisor would) and
    keeps its S3 request counts (sampled while it ran)."""

    MAX_RESTARTS = 3

    def __init__(self, res: Result) -> None:
        self.res = res
        self.mounts: list[Mount] = []
        self.base: list[Counter[str]] = []
        self.seen: list[Counter[str]] = []
        self.carried: Counter[str] = Counter()
        self.restarts = 0
        self.t0 = time.time()
        self._sampled = 0.0

    def add(self, m: Mount) -> None:
        self.mounts.append(m)

    def baseline(self) -> None:
        self.base = [m.requests() for m in self.mounts]
        self.seen = [b.copy() for b in self.base]

    def supervise(self) -> None:
        sample = time.monotonic() - self._sampled > 0.5
        for i, m in enumerate(self.mounts):
            why = m.crashed()
            if why is None:
                if sample:
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        self.seen[i] = m.requests()
                continue
            at = time.time() - self.t0
            c.log(f"{m.name}: daemon died at {at:.1f} s ({why})")
            self.res.notes.append(f"{m.name} daemon died at {at:.1f} s ({why})")
            self.carried.update(self.seen[i] - self.base[i])
            self.base[i] = self.seen[i] = Counter()
            m.stop()
            if self.restarts >= self.MAX_RESTARTS:
                raise RuntimeError(f"{m.name}: daemon died {self.restarts + 1} times")
            self.restarts += 1
            m.start(wait_online=False)
            c.log(f"{m.name}: restarted")
        if sample:
            self._sampled = time.monotonic()

    def total_requests(self) -> Counter[str]:
        total = self.carried.copy()
        for i, m in enumerate(self.mounts):
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.seen[i] = m.requests()
            total.update(self.seen[i] - self.base[i])
        return total


def find_postgres() -> Path | None:
    dirs = [
        Path(p).resolve().parent for p in (shutil.which("initdb"), shutil.which("postgres")) if p
    ]
    dirs += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in dirs:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    return None


class Postgres:
    """initdb + postgres on 127.0.0.1:PORT (as the `postgres` user when we are root)."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        root = os.geteuid() == 0
        self.user: dict[str, Any] = (
            {"user": "postgres", "group": "postgres", "extra_groups": []} if root else {}
        )

    def start(self) -> Postgres:
        self.base.mkdir(parents=True)
        if self.user:
            shutil.chown(self.base, "postgres", "postgres")
        env = dict(os.environ, LC_ALL="C")
        c.log(f"PostgreSQL: initdb ({self.bindir})")
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres"]
        initdb += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        subprocess.run(
            initdb,
            cwd=self.base,
            env=env,
            check=True,
            capture_output=True,
            **self.user,
        )
        with open(self.base / "postgres.log", "ab") as out:
            cmd = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            cmd += ["-k", str(self.base), "-c", "listen_addresses=127.0.0.1"]
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                **self.user,
            )
        import psycopg

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_for(up, 60, "postgres")
        return self

    def load(self, rels: list[str]) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS tasks")
            conn.execute(
                "CREATE TABLE tasks (id integer PRIMARY KEY, rel text NOT NULL,"
                " status text NOT NULL DEFAULT 'pending', leased_until timestamptz, worker text)"
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO tasks (id, rel) VALUES (%s, %s)", list(enumerate(rels))
                )
            conn.execute("VACUUM ANALYZE tasks")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None


def run_postgres(bench: Bench, pg: Postgres, tasks: int, n: int) -> Result:
    mission, total = bench.mission(f"pg-{n}", tasks, None)
    m = load_mission(mission)
    rels = sorted(m.space.rel(t) for t in m.intent)
    pg.load(rels)
    res = Result(f"pg-{n}", "SKIP LOCKED", f"{n} py", n, total)
    c.log(f"{res.name}: {total} tasks, {n} Python workers, PostgreSQL lease pattern")
    out = bench.tmp / f"pg-{n}-out"
    out.mkdir()
    logs = [bench.tmp / f"pg-{n}-log{i}" for i in range(n)]
    return run_python_workers(
        res, logs, lambda i, b: (pg_worker, (pg.dsn, str(out), str(logs[i]), i, b))
    )


def server_verifies_checksums(client: Any) -> bool:
    """missionfs's start-up probe: a PUT with a wrong x-amz-checksum-sha256 refused means the
    server verifies it, and then missionfs sends it with every witness (so the peer does too)."""
    import botocore.exceptions

    key = f"runs/.probe-{os.getpid()}"
    wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
    try:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"1", ChecksumSHA256=wrong)
    except botocore.exceptions.ClientError:
        return True
    client.delete_object(Bucket=BUCKET, Key=key)
    return False


def run_peer(bench: Bench, pg: Postgres, tasks: int, n: int) -> Result:
    """The fair peer of a missionfs mount with S3: PostgreSQL's SKIP LOCKED queue *and* the
    result object, PUT synchronously to the same SeaweedFS before the task is completed."""
    import psycopg

    assert bench.server is not None
    name = f"pgs3-{n}"
    mission, total = bench.mission(name, tasks, None)
    m = load_mission(mission)
    rows = [
        (i, m.space.rel(t), m.space.descriptor(t))
        for i, t in enumerate(sorted(m.intent, key=m.space.rel))
    ]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {PEER_TABLE}")
        conn.execute(
            f"CREATE TABLE {PEER_TABLE} (id integer PRIMARY KEY, rel text NOT NULL,"
            " descr bytea NOT NULL, status text NOT NULL DEFAULT 'pending',"
            " leased_until timestamptz, worker text)"
        )
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {PEER_TABLE} (id, rel, descr) VALUES (%s, %s, %s)", rows)
        conn.execute(f"VACUUM ANALYZE {PEER_TABLE}")
    checksums = server_verifies_checksums(peer_client(bench.server.endpoint))
    res = Result(name, "SKIP LOCKED+S3", f"{n} py", n, total)
    c.log(f"{name}: {total} tasks, {n} Python workers, PostgreSQL queue + witness PUT to S3")
    logs = [bench.tmp / f"{name}-log{i}" for i in range(n)]
    args = (pg.dsn, bench.server.endpoint, f"runs/{name}", checksums)
    run_python_workers(res, logs, lambda i, b: (peer_worker, (*args, str(logs[i]), i, b)))
    res.s3_seconds = res.seconds  # a task is completed after its witness is in S3
    res.requests = Counter({"PUT": res.attempts})
    res.conflicts = 0  # a lost If-None-Match is logged as refused: a dup, nothing kept
    in_s3 = bench.bucket_count(name, "scraped-tiles")
    if in_s3 != total:
        res.notes.append(f"{in_s3} witnesses in S3 of {total}")
    res.notes.append(f"checksum header {'sent' if checksums else 'not sent (unverified)'}")
    return res


def run_python_workers(
    res: Result, logs: list[Path], job: Callable[[int, Any], tuple[Any, tuple[Any, ...]]]
) -> Result:
    """Start one Python worker per log (job(i, barrier) -> (target, args)), release them
    together, wait until all have stopped, and fill `res` from their logs."""
    workers = Workers()
    try:
        barrier = workers.ctx.Barrier(len(logs) + 1)
        for i in range(len(logs)):
            workers.start_python(*job(i, barrier))
        barrier.wait(timeout=120)
        t0 = time.time()
        deadline = time.monotonic() + 300
        while workers.running() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        workers.stop()
    res.attempts, res.done, res.seconds = read_logs(logs, t0)
    if res.done != res.tasks:
        res.notes.append(f"incomplete: {res.done} of {res.tasks}")
    c.log(f"{res.name}: {res.done} tasks in {res.seconds:.2f} s")
    return res


def run_floor(bench: Bench, tasks: int, n: int) -> Result:
    """The same Python workers through bench/passthrough_fs.py over a plain tree of the same
    names (pending/REL descriptor files, claimed/ and done/ tile dirs): the pyfuse3 floor."""
    mission, total = bench.mission(f"floor-{n}", tasks, None)
    m = load_mission(mission)
    backing = bench.tmp / f"floor-{n}-tree"
    for top in ("pending", "claimed", "done"):
        for tile in {m.space.rel(t).rsplit("/", 1)[0] for t in m.intent}:
            (backing / top / tile).mkdir(parents=True, exist_ok=True)
    (backing / "tmp").mkdir()
    for t in m.intent:
        (backing / "pending" / m.space.rel(t)).write_bytes(m.space.descriptor(t))
    res = Result(f"f-floor-py{n}", "passthrough", f"{n} py", n, total)
    c.log(f"{res.name}: {total} tasks, {n} Python workers, minimal pyfuse3 passthrough")
    logs = [bench.tmp / f"floor-{n}-log{i}" for i in range(n)]
    with c.mounted(lambda: c.start_passthrough(backing, bench.tmp / f"floor-{n}-mnt")) as fp:
        mnt = str(fp.mnt)
        return run_python_workers(res, logs, lambda i, b: (py_worker, (mnt, str(logs[i]), i, n, b)))


# -- the table -------------------------------------------------------------------------------------
def cost_per_million(req: Counter[str], tasks: int) -> float:
    a = req["PUT"] + req["POST"] + req["LIST"]
    b = req["GET"] + req["HEAD"]
    return (a * PRICE_A + b * PRICE_B) / max(1, tasks) * 1e6


def report(results: list[Result]) -> None:
    pg = {r.workers: r for r in results if r.claims == "SKIP LOCKED"}
    peer = {r.workers: r for r in results if r.claims == "SKIP LOCKED+S3"}
    headers = ["scenario", "claims", "workers", "tasks", "secs", "tasks/s", "dups", "confl"]
    headers += [f"{op}/t" for op in OPS] + ["req/t", "A/t", "$/1M", "vs PG", "S3 t/s", "vs PG+S3"]
    rows = []
    for r in results:
        row: list[object] = [r.name, r.claims, r.layout, r.done, f"{r.seconds:.2f}"]
        row += [f"{r.rate:.0f}", f"{r.dups} ({100 * r.dups / max(1, r.done):.1f}%)"]
        row.append("-" if r.conflicts is None else r.conflicts)
        if r.requests is None:
            row += ["-"] * (len(OPS) + 3)
        else:
            per = {op: r.requests[op] / max(1, r.done) for op in OPS}
            row += [f"{per[op]:.2f}" for op in OPS]
            row.append(f"{sum(per.values()):.2f}")
            row.append(f"{per['PUT'] + per['POST'] + per['LIST']:.2f}")
            row.append(f"{cost_per_million(r.requests, r.done):.2f}")
        base = pg.get(r.workers)
        row.append(f"{r.rate / base.rate:.2f}" if base and base.rate and r is not base else "-")
        # Throughput to the bucket (done / until every witness was in S3), and the ratio to
        # the PostgreSQL + S3 peer with the same workers: whole system against whole system.
        s3_rate = r.done / r.s3_seconds if r.s3_seconds else 0.0
        row.append(f"{s3_rate:.0f}" if s3_rate else "-")
        fair = peer.get(r.workers)
        if fair is not None and fair.rate > 0 and r is not fair and r.requests is not None:
            row.append(f"{r.rate / fair.rate:.2f} ({s3_rate / fair.rate:.2f})")
        else:
            row.append("-")
        rows.append(row)
    print()
    print(
        "Fleet simulation: SeaweedFS on loopback, --refresh 1; PostgreSQL 15 lease pattern "
        "(two transactions); tmpfs for every state dir"
    )
    c.print_table(headers, rows)
    print(
        "tasks/s: distinct tasks / (last local commit - workers' start); dups: results written "
        "beyond one per task; confl: results kept under conflicts/ in the bucket;\n"
        "X/t: S3 requests per task (all daemons, online to fully synced); A/t: PUT+POST+LIST "
        "(class A); $/1M: PUT/POST/LIST $0.005/1k, GET/HEAD $0.0004/1k, DELETE free;\n"
        "vs PG: tasks/s over PostgreSQL's with the same number of workers; S3 t/s: distinct "
        "tasks / seconds until every witness was in S3;\n"
        "vs PG+S3: tasks/s (in brackets S3 t/s) over the PostgreSQL + S3 peer's (queue and "
        "witness PUT, synchronous) with the same number of workers, for the rows with S3."
    )
    for r in results:
        extra = [] if r.s3_seconds is None else [f"all in S3 after {r.s3_seconds:.1f} s"]
        if r.requests:
            extra.append("requests " + ", ".join(f"{op} {r.requests[op]}" for op in OPS))
        if extra or r.notes:
            print(f"  {r.name}: " + "; ".join(extra + r.notes))
    sys.stdout.flush()


# -- main ------------------------------------------------------------------------------------------
def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small missions, a 5 s partition")
    ap.add_argument("--tasks", type=int, help="tasks per mission (default 1000, quick 300)")
    ap.add_argument("--partition", type=float, help="seconds of partition (30, quick 5)")
    ap.add_argument(
        "--only",
        default="pg,pgs3,a,n,f,s,b,c",
        help="scenarios: pg, pgs3 (PostgreSQL + S3 peer), a (local claims), n (no S3 at all),"
        " f (pyfuse3 floor), s (strict, 1 mount), b, c",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    tasks = args.tasks or (300 if args.quick else 1000)
    part = args.partition or (5.0 if args.quick else 30.0)
    ns = (4,) if args.quick else (4, 8)
    signal.signal(signal.SIGTERM, _sigterm)

    if "pgs3" in only:
        only.add("pg")  # the peer runs on the same PostgreSQL server
    pg_bin = find_postgres() if "pg" in only else None
    psycopg_ok = True
    try:
        import psycopg  # noqa: F401
    except ImportError:
        psycopg_ok = False
    if "pg" in only and pg_bin is None:
        print(
            "fleet: PostgreSQL not found (initdb/postgres, e.g. /usr/lib/postgresql/15/bin): "
            "skipping the PostgreSQL rows (apt-get install postgresql)",
            file=sys.stderr,
        )
    elif "pg" in only and not psycopg_ok:
        print(
            "fleet: the Python module psycopg is missing: skipping the PostgreSQL rows "
            "(.venv/bin/pip install 'psycopg[binary]')",
            file=sys.stderr,
        )
    os.environ.update(s3_env())
    results: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(c.tmpfs(size="4G", prefix="bench-fleet-"))
            server = SeaweedServer(tmp / "weed")
            stack.callback(server.stop)
            c.log("starting SeaweedFS")
            server.start()
            server.bucket(BUCKET)
            bench = Bench(tmp, server, stack)

            def attempt(name: str, fn: Any, *a: Any, **kw: Any) -> Result | None:
                """One scenario; a failure is reported as a row, the others still run."""
                try:
                    r: Result = fn(*a, **kw)
                except Exception as e:
                    c.log(f"{name}: FAILED: {type(e).__name__}: {e}")
                    r = Result(name, "-", "-", 0, 0, notes=[f"FAILED: {type(e).__name__}: {e}"])
                results.append(r)
                return r

            if pg_bin is not None and psycopg_ok:
                pg = Postgres(pg_bin, tmp / "pg")
                stack.callback(pg.stop)
                pg.start()
                for n in ns:
                    attempt(f"pg-{n}", run_postgres, bench, pg, tasks, n)
                if "pgs3" in only:
                    for n in ns:
                        attempt(f"pgs3-{n}", run_peer, bench, pg, tasks, n)
                pg.stop()
            run = bench.run_missionfs
            if "a" in only:
                for kind in ("sh", "py"):
                    for n in ns:
                        name = f"a-local-{kind}{n}"
                        attempt(name, run, name, "local", tasks, 1, n, kind)
            if "n" in only:
                for n in ns:
                    attempt(f"n-nos3-py{n}", run, f"n-nos3-py{n}", "none", tasks, 1, n, "py")
            if "f" in only:
                for n in ns:
                    attempt(f"f-floor-py{n}", run_floor, bench, tasks, n)
            py_rate = 0.0
            if "s" in only:
                n = ns[-1]
                r = attempt(f"s-strict-py{n}", run, f"s-strict-py{n}", "strict", tasks, 1, n, "py")
                py_rate = r.rate if r else 0.0
            sh_rate = 0.0
            if "b" in only:
                r = attempt("b-strict-sh", run, "b-strict-sh", "strict", tasks, 2, 4, "sh")
                sh_rate = r.rate if r else 0.0
            if "c" in only:
                # Long enough to outlast the partition: it starts after a warm-up and the mission
                # should still run well after it heals (sized from the strict runs' rates).
                warm = 3.0 if args.quick else 5.0
                span = warm + part + (7.0 if args.quick else 15.0)
                for kind, rate in (("sh", sh_rate), ("py", py_rate)):
                    n_tasks = max(tasks, int(rate * span))
                    name = f"c-optim-part-{kind}"
                    kw = {"partition": (warm, part)}
                    attempt(name, run, name, "optimistic", n_tasks, 2, 4, kind, **kw)
    except KeyboardInterrupt:
        print("fleet: interrupted; everything started here was stopped", file=sys.stderr)
        if results:
            report(results)
        return 130
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
