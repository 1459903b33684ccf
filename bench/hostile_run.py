"""A scripted hostile user on one real mount; then: is the daemon alive, is every witness what
its commit said, is `missionfs fsck` clean? (issue 13, "Done when").

Usage: python bench/hostile_run.py [--commits N] [--work DIR]

The user does, in this order, with real processes (bash, dd, truncate, mv, Python):
names over 255 bytes, non-UTF-8 names, O_DIRECT writes and reads (and a commit written with
O_DIRECT), `truncate -s 1P` and a pwrite at 2**50, descriptors kept across a commit (bash `exec
3>` and Python), shared mmap writes after the commit, two direct writers of one task, refused
shell redirections, and N ordinary commits in between. Each step checks the answer the process
got (errno, exit status). At the end every witness under STATE/scraped-tiles must be exactly
one the script committed, with the bytes it committed, equal to the sha256/size of its journal
commit line; the daemon must have served throughout and `missionfs fsck` must say clean.

Prints one line per failed check and one verdict line; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import mmap
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefs.model.mission import load_mission
from fusefs.statedir.journal import read_journal
from tests.support.mounts import Mount, wait_for, write_mission

CSV = b"name,address\nJoe's,1 Main St\n"


class Hostile:
    """The run: a mount, the tasks still free to use, what was committed, what went wrong."""

    def __init__(self, work: Path, commits: int) -> None:
        mission = write_mission(
            work / "mission.toml", phrases=tuple(f"p{i}" for i in range(8 + commits))
        )
        m = load_mission(mission)
        self.free = sorted(m.space.rel(t) for t in m.intent)
        self.m = Mount(mission, work / "mnt", work / "state", args=["--quiet"])
        self.committed: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.steps = 0

    # -- helpers ---------------------------------------------------------------------------------
    def task(self) -> str:
        return self.free.pop(0)

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        self.steps += 1
        if not ok:
            self.failures.append(f"{what}: {detail}")
            print(f"FAIL {what}: {detail}", flush=True)

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script], cwd=self.m.mnt, capture_output=True, text=True, timeout=60
        )

    def errno_of(self, fn: Callable[[], object]) -> int:
        try:
            fn()
        except OSError as e:
            return e.errno or 0
        return 0

    def commit(self, body: bytes = CSV) -> None:
        """An ordinary claim + write tmp/ + mv commit, by bash."""
        rel = self.task()
        (self.m.mnt / "tmp" / "ordinary").write_bytes(body)
        res = self.sh(f"mv 'pending/{rel}' 'claimed/{rel}' && mv tmp/ordinary 'done/{rel}'")
        self.check(f"ordinary commit of {rel}", res.returncode == 0, res.stderr)
        if res.returncode == 0:
            self.committed[rel] = body

    # -- the hostile steps -----------------------------------------------------------------------
    def long_names(self) -> None:
        res = self.sh(f"echo x > tmp/{'n' * 300}")
        self.check("echo > 300-byte name", "File name too long" in res.stderr, res.stderr)
        long = self.m.mnt / "tmp" / ("p" * 300)
        e = self.errno_of(lambda: os.open(long, os.O_WRONLY | os.O_CREAT, 0o644))
        self.check("open of a 300-byte name", e == errno.ENAMETOOLONG, e)
        (self.m.mnt / "tmp" / "short").write_bytes(CSV)
        res = self.sh(f"mv tmp/short tmp/{'m' * 300}")
        self.check("mv to a 300-byte name", "File name too long" in res.stderr, res.stderr)
        rel = self.task()
        res = self.sh(f"mv tmp/short 'done/{rel.rsplit('/', 1)[0]}/{'q' * 300}.csv'")
        self.check("mv into done/ under a 300-byte name", res.returncode != 0, res)

    def non_utf8_names(self) -> None:
        rel = self.task()
        bad = os.fsencode(self.m.mnt / "done" / rel.rsplit("/", 1)[0]) + b"/caf\xe9 \xff.csv"
        e = self.errno_of(lambda: os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644))
        self.check("direct write of a non-UTF-8 name", e == errno.EILSEQ, e)
        (self.m.mnt / "tmp" / "r").write_bytes(CSV)
        e = self.errno_of(lambda: os.rename(self.m.mnt / "tmp" / "r", bad))
        self.check("mv of a result to a non-UTF-8 name", e == errno.EILSEQ, e)
        self.check("the result stays in tmp/", (self.m.mnt / "tmp" / "r").read_bytes() == CSV)
        self.free.insert(0, rel)  # nothing happened to it

    def o_direct(self, local: Path) -> None:
        (self.m.mnt / "tmp" / "x").write_text("old\n")
        res = self.sh("dd if=/dev/zero of=tmp/x oflag=direct bs=4096 count=2 status=none")
        self.check("dd oflag=direct into tmp/", res.returncode == 0, res.stderr)
        res = self.sh("dd if=tmp/x iflag=direct bs=4096 count=2 status=none | wc -c")
        self.check("dd iflag=direct reads it back", res.stdout.strip() == "8192", res)
        body = b"name\n" + b"x" * 4090 + b"\n"  # exactly one 4 KiB block: a valid CSV
        (local / "direct.csv").write_bytes(body)
        rel = self.task()
        res = self.sh(
            f"touch tmp/d && dd if='{local}/direct.csv' of=tmp/d oflag=direct bs=4096 "
            f"status=none && mv tmp/d 'done/{rel}'"
        )
        self.check("a commit written with O_DIRECT", res.returncode == 0, res.stderr)
        if res.returncode == 0:
            self.committed[rel] = body

    def huge_offsets(self) -> None:
        (self.m.mnt / "tmp" / "big").write_bytes(CSV)
        res = self.sh("truncate -s 1P tmp/big")
        self.check("truncate -s 1P", "File too large" in res.stderr, res.stderr)
        self.check("truncate left the file", (self.m.mnt / "tmp/big").read_bytes() == CSV)
        fd = os.open(self.m.mnt / "tmp" / "far", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            e = self.errno_of(lambda: os.pwrite(fd, b"x", 2**50))
        finally:
            os.close(fd)
        self.check("pwrite at 2**50", e == errno.EFBIG, e)

    def fds_across_commit(self) -> None:
        rel = self.task()
        res = self.sh(
            f"exec 3>tmp/k; printf 'a,b\\n1,2\\n' > tmp/k; mv 'pending/{rel}' 'claimed/{rel}' && "
            f"mv tmp/k 'done/{rel}' || exit 9; echo more >&3; echo rc=$?; exec 3>&-"
        )
        self.check("bash exec 3> kept across mv", "rc=1" in res.stdout, res)
        self.check("bash: the write after commit is EPERM", "not permitted" in res.stderr, res)
        if res.returncode == 0:
            self.committed[rel] = b"a,b\n1,2\n"
        rel = self.task()
        fd = os.open(self.m.mnt / "tmp" / "y", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, CSV)
            os.rename(self.m.mnt / "tmp" / "y", self.m.mnt / "done" / rel)
            self.committed[rel] = CSV
            for what, fn in (
                ("write", lambda: os.write(fd, b"Evil,2 Main St\n")),
                ("pwrite", lambda: os.pwrite(fd, b"X", 0)),
                ("ftruncate", lambda: os.ftruncate(fd, 3)),
            ):
                e = self.errno_of(fn)
                self.check(f"Python {what} after commit", e == errno.EPERM, e)
        finally:
            os.close(fd)

    def shared_mmap(self) -> None:
        rel = self.task()
        body = b"name,address\n" + b"Joe's,1 Main St\n" * 300  # more than one page
        p = self.m.mnt / "tmp" / "mapped"
        p.write_bytes(body)
        with open(p, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
            try:
                os.rename(p, self.m.mnt / "done" / rel)
                self.committed[rel] = body
                mm[0:4] = b"EVIL"
                mm[-5:] = b"EVIL\n"
                e = self.errno_of(mm.flush)
            finally:
                mm.close()
        self.check("msync of a mapping written after commit fails", e != 0, e)

    def two_writers(self) -> None:
        rel = self.task()
        path = self.m.mnt / "done" / rel
        first = open(path, "wb")  # noqa: SIM115 - closed below
        try:
            e = self.errno_of(lambda: open(path, "wb").close())
            self.check("second direct writer", e == errno.EBUSY, e)
            res = self.sh(f"printf 'h\\nother\\n' > 'done/{rel}'")
            self.check("second writer by shell", "busy" in res.stderr.lower(), res)
            first.write(CSV)
        finally:
            first.close()
        self.committed[rel] = CSV

    def refused_redirections(self, n: int = 3) -> None:
        before = self.m.status()["refused_direct_writes"]
        rels = [self.task() for _ in range(n)]
        for rel in rels:
            self.sh(f"printf bad > 'done/{rel}'")  # the shell cannot see the refusal
        wait_for(
            lambda: self.m.status()["refused_direct_writes"] >= before + n,
            what="the refused redirections counted",
        )
        for rel in rels:
            self.check("refused redirection stays pending", (self.m.mnt / "pending" / rel).exists())
        rel = rels[0]  # then a good one on the same task commits
        res = self.sh(f"printf 'a,b\\n' > 'done/{rel}'")
        self.check("good redirection after a refused one", res.returncode == 0, res.stderr)
        self.committed[rel] = b"a,b\n"
        self.free[:0] = rels[1:]

    # -- the verdict -----------------------------------------------------------------------------
    def alive(self, after: str) -> None:
        proc = self.m.proc
        ok = proc is not None and proc.poll() is None
        self.check(f"daemon alive after {after}", ok, self.m.daemon_log()[-500:] if not ok else "")
        if not ok:
            raise SystemExit(self.verdict())

    def witnesses(self) -> None:
        """Witness set == committed set; bytes == committed; sha256/size == the journal's."""
        tiles = self.m.state / "scraped-tiles"
        on_disk = {str(p.relative_to(tiles)) for p in tiles.rglob("*.csv")}
        self.check("witnesses are exactly the commits", on_disk == set(self.committed), on_disk)
        lines = {e["rel"]: e for e in read_journal(self.m.state / "journal") if e["ev"] == "commit"}
        for rel, body in self.committed.items():
            data = (tiles / rel).read_bytes() if (tiles / rel).exists() else None
            self.check(f"witness {rel} has the committed bytes", data == body, data)
            line = lines.get(rel, {})
            journal = (line.get("sha256"), line.get("size"))
            if data is not None:
                want = (hashlib.sha256(data).hexdigest(), len(data))
                self.check(f"journal line of {rel}", journal == want, (journal, want))

    def fsck(self) -> None:
        self.m.umount()
        res = self.m.fsck()
        self.check("missionfs fsck clean", res.returncode == 0, res.stdout + res.stderr)

    def verdict(self) -> str:
        word = "OK" if not self.failures else f"FAILED ({len(self.failures)} checks)"
        return (
            f"hostile_run: {word}: {self.steps} checks, {len(self.committed)} witnesses equal to "
            f"their journal commit lines, daemon "
            f"{'alive' if not self.failures else 'see above'}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=5, help="ordinary commits between steps (5)")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile-"))
    h = Hostile(work, args.commits)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("long names", h.long_names),
        ("non-UTF-8 names", h.non_utf8_names),
        ("O_DIRECT", lambda: h.o_direct(work)),
        ("huge offsets", h.huge_offsets),
        ("fds kept across a commit", h.fds_across_commit),
        ("shared mmap", h.shared_mmap),
        ("two direct writers", h.two_writers),
        ("refused redirections", h.refused_redirections),
    ]
    try:
        h.m.start()
        for name, step in steps:
            try:
                step()
            except (OSError, AssertionError, subprocess.SubprocessError) as e:
                h.check(name, False, f"{type(e).__name__}: {e}")
            h.alive(name)
            for _ in range(args.commits):
                h.commit()
        h.witnesses()
        h.fsck()
    finally:
        h.m.cleanup()
    print(h.verdict())
    return int(bool(h.failures))


if __name__ == "__main__":
    sys.exit(main())
