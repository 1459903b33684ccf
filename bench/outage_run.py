"""Outages under load (issue 13, "Done when"): a full disk and a hung S3, each with 4 workers
claiming and committing through one real mount; every run must end with 0 lost, 0 wedged and
0 daemon deaths.

Usage: python bench/outage_run.py {diskfull,s3hang} [--commits N] [--work DIR]
       [--full-refusals N (diskfull)] [--hung-commits N (s3hang)]

diskfull: the state dir is a small ext4 on a loop device. Workers commit; the disk is filled up
  (one file) while they go on; once they have met ENOSPC --full-refusals times the space is freed,
  and they go on until N more commits are acknowledged.
s3hang:   moto behind tests/support/s3_proxy.py, a mission with `claims = "strict"`. Workers (two
  claim before they commit, two commit directly) run; the proxy switches to hang (connections
  accepted, nothing answered) until --hung-commits more commits are acknowledged and a claim
  was refused; then it passes again (recovery).

An acknowledged commit is a rename tmp/X -> done/REL that returned 0. Lost: an acknowledged
commit whose bytes are not the witness's (in done/, in STATE/scraped-tiles; for s3hang also in
the bucket once recovered). Wedged: a worker still inside a call `WEDGE` seconds after it was
told to stop. Death: the daemon is not running at the end. The last check is `missionfs fsck`.
Prints the counts and one verdict line; exit status 1 unless all is zero and fsck is clean.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefs.model.mission import load_mission
from tests.support.loopfs import fill, free, loop_ext4
from tests.support.mounts import Mount, wait_for, write_mission
from tests.support.s3_proxy import S3Proxy
from tests.support.s3_servers import MotoServer, s3_env

WORKERS = 4
WEDGE = 30.0  # seconds a worker may take to leave its current call once told to stop
PHASE = 120.0  # deadline of each phase (generous: a shared 2-core machine)
MISSION = "outage"


@dataclass
class Tally:
    """What the workers saw, shared between their threads (one lock)."""

    acked: dict[str, bytes] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)  # longest call of each kind, s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def n_acked(self) -> int:
        with self.lock:
            return len(self.acked)

    def n_errors(self, name: str) -> int:
        with self.lock:
            return self.errors[name]


class Workers:
    """WORKERS threads (each call is a real syscall on the mount; the GIL is released inside),
    each with its own tasks so that every outcome is its own: claim (optionally), write tmp/,
    rename into done/. A refused task is released and tried again later."""

    def __init__(self, m: Mount, rels: list[str], claimers: int) -> None:
        self.m, self.tally, self.stop = m, Tally(), threading.Event()
        shares = [rels[i::WORKERS] for i in range(WORKERS)]
        self.threads = [
            threading.Thread(target=self.work, args=(i, shares[i], i < claimers), daemon=True)
            for i in range(WORKERS)
        ]

    def start(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def timed(self, kind: str, fn: Callable[..., object], *args: object) -> None:
        """Run one call; keep the longest duration of each kind (claim, write, commit)."""
        t0 = time.monotonic()
        try:
            fn(*args)
        finally:
            dt = time.monotonic() - t0
            with self.tally.lock:
                self.tally.slowest[kind] = max(self.tally.slowest.get(kind, 0.0), dt)

    def work(self, wid: int, todo: list[str], claim: bool) -> None:
        mnt, n = self.m.mnt, 0
        tmp = mnt / "tmp" / f"w{wid}"
        while todo and not self.stop.is_set():
            rel = todo.pop(0)
            n += 1
            body = f"name,token\n{rel},{wid}-{n}\n".encode()
            claimed = False
            try:
                if claim:
                    self.timed("claim", os.rename, mnt / "pending" / rel, mnt / "claimed" / rel)
                    claimed = True
                self.timed("write", tmp.write_bytes, body)
                self.timed("commit", os.rename, tmp, mnt / "done" / rel)
                with self.tally.lock:
                    self.tally.acked[rel] = body
            except OSError as e:
                with self.tally.lock:
                    self.tally.errors[errno.errorcode.get(e.errno or 0, "?")] += 1
                for path in [tmp] + ([mnt / "claimed" / rel] if claimed else []):
                    try:
                        os.unlink(path)  # drop the result, release the claim
                    except OSError:
                        pass
                todo.append(rel)

    def finish(self) -> int:
        """Tell them to stop; how many are still stuck in a call after WEDGE seconds."""
        self.stop.set()
        deadline = time.monotonic() + WEDGE
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the result."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def until_more(w: Workers, n: int, what: str) -> None:
    """Poll (deadline PHASE) until the workers acknowledged `n` more commits."""
    goal = w.tally.n_acked() + n
    wait_for(lambda: w.tally.n_acked() >= goal, PHASE, f"{n} commits {what}")
    log(f"{n} commits {what}: {goal} acknowledged, refusals {dict(w.tally.errors)}")


def lost(m: Mount, acked: dict[str, bytes]) -> list[str]:
    """Acknowledged commits whose bytes are not those of the witness, on disk and in the mount."""
    out = []
    for rel, body in acked.items():
        for p in (m.state / "scraped-tiles" / rel, m.mnt / "done" / rel):
            try:
                ok = p.read_bytes() == body
            except OSError:
                ok = False
            if not ok:
                out.append(rel)
                break
    return out


def all_rels(mission: Path) -> list[str]:
    mi = load_mission(mission)
    return sorted(mi.space.rel(t) for t in mi.intent)


def mission_for(work: Path, commits: int, extra: str = "") -> Path:
    """Enough tasks for 3 phases of `commits` and the retries (12 tiles x phrases)."""
    phrases = tuple(f"p{i:04d}" for i in range(max(10, commits // 3)))
    return write_mission(work / "mission.toml", name=MISSION, phrases=phrases, extra=extra)


# -- the two runs ----------------------------------------------------------------------------------
def diskfull(work: Path, commits: int, refusals: int) -> dict[str, object]:
    """Commits, a full disk until the workers met ENOSPC `refusals` times, freed, commits."""
    mission = mission_for(work, commits)
    with loop_ext4(work / "disk.img", work / "state", "16M", "-b", "1024", "-m", "0") as state:
        m = Mount(mission, work / "mnt", state, args=["--quiet"])
        w = Workers(m, all_rels(mission), claimers=WORKERS)
        try:
            m.start()
            w.start()
            until_more(w, commits, "before the disk fills")
            fill(state)
            log("disk full")
            enospc, acked = w.tally.n_errors("ENOSPC"), w.tally.n_acked()
            goal = enospc + refusals
            wait_for(lambda: w.tally.n_errors("ENOSPC") >= goal, PHASE, "ENOSPC met")
            free(state)
            log(f"space freed; {w.tally.n_acked() - acked} commits acknowledged while full")
            until_more(w, commits, "after the space is freed")
            return verdict(m, w, w.finish())
        finally:
            w.stop.set()
            m.cleanup()


def s3hang(work: Path, commits: int, hung: int) -> dict[str, object]:
    """Commits, S3 hung until `hung` more commits and a refused claim, recovery, commits.

    While S3 hangs, a commit (a cross-directory rename) can wait behind a claim that waits for
    its lease PUT (up to the claim's deadline, see SEMANTICS.md): commits go on, slowly."""
    moto = MotoServer(work / "moto.log").start()
    proxy = S3Proxy(moto.endpoint).start()
    try:
        bucket = moto.bucket("outage-run")
        mission = mission_for(
            work, commits, f'[store]\ns3 = "s3://{bucket}/runs"\nclaims = "strict"\n'
        )
        args = ["--quiet", "--endpoint-url", proxy.endpoint, "--refresh", "0.5", "--worker", "a"]
        m = Mount(mission, work / "mnt", work / "state", args=args, env=s3_env())
        w = Workers(m, all_rels(mission), claimers=WORKERS // 2)
        try:
            m.start()
            wait_for(lambda: m.status()["sync"]["online"], PHASE, "online")
            w.start()
            until_more(w, commits, "with S3 answering")
            proxy.hang()
            log("S3 hangs")
            t0, n0 = time.monotonic(), w.tally.n_acked()
            wait_for(lambda: str(m.status()["sync"].get("s3")) == "degraded", PHASE, "degraded")
            until_more(w, hung, "while S3 hangs")
            wait_for(lambda: w.tally.n_errors("EAGAIN") > 0, PHASE, "a claim refused")
            hung_rate = (w.tally.n_acked() - n0) / (time.monotonic() - t0)
            proxy.resume()
            log("S3 answers again")
            wait_for(lambda: str(m.status()["sync"].get("s3")) == "online", PHASE, "online")
            until_more(w, commits, "after recovery")
            wedged = w.finish()
            log("workers stopped; waiting for uploads and lease deletions")
            acked = set(w.tally.acked)
            uploaded = wait_bucket(moto, bucket, "scraped-tiles", lambda there: acked - there)
            # Leases of committed tasks are deleted a few refresh intervals after the upload:
            # wait for that steady state, or fsck rightly calls them stale.
            leases = wait_bucket(  # lease keys are claims/{chunk}/{rel}
                moto, bucket, "claims", lambda there: {n.partition("/")[2] for n in there} & acked
            )
            return {
                **verdict(m, w, wedged),
                "not uploaded": uploaded,
                "leases left": leases,
                "commits/s while hung": f"{hung_rate:.2f}",
            }
        finally:
            w.stop.set()
            proxy.resume()
            m.cleanup()
    finally:
        proxy.close()
        moto.stop()


def wait_bucket(
    moto: MotoServer, bucket: str, area: str, wrong: Callable[[set[str]], set[str]]
) -> int:
    """Poll the bucket's `area` (deadline PHASE) until `wrong(names there)` is empty; how many
    are still wrong then."""
    root = f"runs/{MISSION}/{area}/"

    def names() -> set[str]:
        pages = moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
        return {o["Key"][len(root) :] for page in pages for o in page.get("Contents", [])}

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not wrong(names()), PHASE, f"{area} in the bucket as expected")
    return len(wrong(names()))


def verdict(m: Mount, w: Workers, wedged: int) -> dict[str, object]:
    """The counts of one run; unmounts (the real CLI) and runs fsck."""
    died = m.proc is None or m.proc.poll() is not None
    gone = lost(m, dict(w.tally.acked)) if not died else sorted(w.tally.acked)
    if not died:
        m.umount()
    res = m.fsck()
    if res.returncode != 0:
        print(res.stdout + res.stderr, file=sys.stderr)
    return {
        "acknowledged": len(w.tally.acked),
        "lost": len(gone),
        "wedged": wedged,
        "deaths": int(died),
        "fsck": "clean" if res.returncode == 0 else f"exit {res.returncode}",
        "refusals": dict(w.tally.errors.most_common()),
        "slowest": ",".join(f"{k}:{v:.2f}s" for k, v in sorted(w.tally.slowest.items())),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", choices=("diskfull", "s3hang"))
    p.add_argument("--commits", type=int, default=200, help="commits per phase (200)")
    p.add_argument("--full-refusals", type=int, default=200, help="diskfull: ENOSPC to meet")
    p.add_argument("--hung-commits", type=int, default=10, help="s3hang: commits while hung")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"outage-{args.run}-"))
    t0 = time.monotonic()
    if args.run == "diskfull":
        r = diskfull(work, args.commits, args.full_refusals)
    else:
        r = s3hang(work, args.commits, args.hung_commits)
    bad = r["lost"] or r["wedged"] or r["deaths"] or r["fsck"] != "clean"
    bad = bad or r.get("not uploaded") or r.get("leases left")
    counts = " ".join(f"{k.replace(' ', '-')} {v}" for k, v in r.items() if k != "refusals")
    print(f"refusals the workers saw: {r['refusals']}")
    print(
        f"outage_run {args.run}: {'FAILED' if bad else 'OK'}: {counts} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return int(bool(bad))


if __name__ == "__main__":
    sys.exit(main())
