"""The kill -9 loop: renaming workers, a daemon killed mid-rename, recovery by the next command.

One *try*: 4 worker processes claim (`os.rename pending/REL claimed/REL`), commit (`mv tmp/x
done/REL`, the real coreutils binary) and release (`rm claimed/REL`) as fast as they can; once a
random number of commits has been acknowledged the daemon gets SIGKILL. Then the real CLI
recovers: `missionfs mount` (or `missionfs umount`, then `missionfs mount`) must succeed within
a deadline, every worker must end (none left in D state) and every commit whose `mv` exited 0
must be in done/ with the bytes its worker wrote.

With the daemon's guardian (the default), the workers must end before any command runs; with
MISSIONFS_GUARDIAN=0 (Loop(guardian=False)) the recovering command is what releases them.

Every other pair of tries kills at the worst moment instead of a random one: while a thread of
the daemon (pyfuse3's notify thread) is blocked in the kernel's reverse invalidation, waiting for
a directory lock held by a rename that only the daemon can answer (the wedge of issue 13).

A wedged try is counted, then cleaned up by aborting the connection here (so the loop goes on
and leaves nothing stuck): the harness never depends on the code under test to clean up.

Used by tests/mount/test_kill9.py (a few tries) and bench/kill9_loop.py (50 tries).
Run a worker: python -m tests.support.kill9_util worker MNT RELS_FILE ACK_FILE STOP_FILE SEED
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MISSIONFS = [sys.executable, "-m", "fusefs"]
WORKERS = 4
DEADLINE = 30.0  # recovery, worker exit: generous on a loaded 2-core machine
# Few tiles, many phrases: renames of different workers share directories, as on a real mission
# where workers crowd the same area; that is what makes the notify thread wait for a lock.
MISSION = {
    "south": "40.00",
    "north": "40.02",
    "west": "-74.02",
    "east": "-74.00",
    "phrases": tuple(f"phrase {i:03d}" for i in range(300)),
}
HUNT_SECONDS = 3.0  # how long a mid-invalidation try looks for its moment before killing anyway
GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV}


# -- the worker (its own process) ----------------------------------------------------------------
def worker(mnt: Path, rels_file: Path, ack_file: Path, stop_file: Path, seed: int) -> int:
    """Claim, commit or release random tasks until the mount goes away or we are told to stop.
    An acknowledged commit is one whose `mv` exited 0: written to ACK_FILE as `REL\\tTOKEN`."""
    rng = random.Random(seed)
    rels = rels_file.read_text().splitlines()
    tmp = mnt / "tmp" / f"w{os.getpid()}"
    n = 0
    with open(ack_file, "a", buffering=1) as acks:
        while not stop_file.exists():
            rel = rng.choice(rels)
            try:
                os.rename(mnt / "pending" / rel, mnt / "claimed" / rel)
            except OSError as e:
                if e.errno in GONE:
                    return 0
                continue  # not pending (done, claimed by another worker): pick another
            try:
                if rng.random() < 0.2:
                    os.unlink(mnt / "claimed" / rel)  # a release
                    continue
                n += 1
                token = f"{os.getpid()}-{n}"
                tmp.write_text(f"name,token\n{rel},{token}\n")
            except OSError as e:
                if e.errno in GONE:
                    return 0
                continue
            res = subprocess.run(["mv", str(tmp), str(mnt / "done" / rel)], capture_output=True)
            if res.returncode == 0:
                acks.write(f"{rel}\t{token}\n")
            elif any(os.strerror(e).encode() in res.stderr for e in GONE):
                return 0
    return 0


# -- process and mount inspection (independent of the code under test) ---------------------------
def proc_state(pid: int) -> str:
    """One letter from /proc/PID/stat ('R', 'S', 'D', 'Z', ...), or '' when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def thread_states(pid: int) -> str:
    """The states of every thread of PID, e.g. 'ZD' for a zombie leader with a stuck thread."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ""
    return "".join(sorted(proc_state(int(t)) for t in tids))


def tree_states(pid: int) -> str:
    """States of PID's threads, then of its children's (a worker waits in S for its `mv`, which
    is the one in D)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    return thread_states(pid) + "".join(f" mv:{thread_states(k)}" for k in kids)


def in_reverse_invalidation(pid: int) -> bool:
    """True while a thread of PID is inside fuse_reverse_inval_entry (the kernel side of
    pyfuse3.invalidate_entry), i.e. waiting for a directory lock."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stack") as f:
            if "fuse_reverse_inval_entry" in f.read():
                return True
    return False


def _spin_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Busy-poll PRED (the moment lasts well under a millisecond), up to TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
    return False


def mount_dev(mnt: Path) -> str | None:
    """The FUSE connection id of the mount on MNT, from /proc/self/mountinfo (never touches MNT:
    a stat of a wedged mount would hang this process too)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            if point == str(mnt) and fields[fields.index("-") + 1].startswith("fuse"):
                major, minor = (int(x) for x in fields[2].split(":"))
                found = str((major << 20) | minor)
    return found


def force_abort(mnt: Path) -> bool:
    """Abort the FUSE connection of MNT (the manual recovery) and detach the mount."""
    conn = mount_dev(mnt)
    if conn is None:
        return False
    ctl = Path("/sys/fs/fuse/connections")
    if not os.path.ismount(ctl):
        subprocess.run(["mount", "-t", "fusectl", "none", str(ctl)], capture_output=True)
    with contextlib.suppress(OSError):
        (ctl / conn / "abort").write_text("1\n")
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return True


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll PRED with a deadline; True if it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class TryResult:
    n: int
    via: str  # "mount" or "umount": the command that had to recover
    kill_at: str  # "random" or "mid-invalidation"
    commits: int = 0
    wedged: str = ""  # why, when the try wedged
    lost: list[str] = field(default_factory=list)
    died: str = ""  # the remounted daemon exited on its own
    recover_s: float = 0.0
    recovered: str = ""  # what the recovering command said it released


@dataclass
class Loop:
    """A mission, a state dir and a mountpoint under WORK, driven by the real CLI."""

    work: Path
    mission: Path
    rels: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    acked: dict[str, str] = field(default_factory=dict)  # rel -> token, over all tries
    rng: random.Random = field(default_factory=lambda: random.Random(13))
    guardian: bool = True  # False: MISSIONFS_GUARDIAN=0, only the next mount/umount recovers

    def __post_init__(self) -> None:
        if not self.guardian:
            self.env["MISSIONFS_GUARDIAN"] = "0"

    @property
    def mnt(self) -> Path:
        return self.work / "mnt"

    @property
    def state(self) -> Path:
        return self.work / "state"

    def cli(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MISSIONFS, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env,
        )

    def mount(self) -> subprocess.CompletedProcess[str]:
        return self.cli("mount", str(self.mission), str(self.mnt), "--state", str(self.state))

    def daemon_pid(self) -> int:
        return int((self.state / "daemon.lock").read_text().split()[0])

    def setup(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        (self.work / "rels.txt").write_text("".join(r + "\n" for r in self.rels))
        res = self.mount()
        assert res.returncode == 0, res.stderr

    def one_try(self, n: int) -> TryResult:
        kill_at = "mid-invalidation" if n // 2 % 2 else "random"
        result = TryResult(n, "umount" if n % 2 else "mount", kill_at)
        pid = self.daemon_pid()
        stop = self.work / f"stop.{n}"
        acks = [self.work / f"ack.{n}.{i}" for i in range(WORKERS)]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.kill9_util",
                    "worker",
                    str(self.mnt),
                    str(self.work / "rels.txt"),
                    str(acks[i]),
                    str(stop),
                    str(self.rng.randrange(1 << 30)),
                ],
                cwd=ROOT,
            )
            for i in range(WORKERS)
        ]
        try:
            target = self.rng.randint(1, 12)
            wait_for(lambda: _count(acks) >= target, DEADLINE)
            if result.kill_at == "mid-invalidation":
                _spin_until(lambda: in_reverse_invalidation(pid), HUNT_SECONDS)
            os.kill(pid, signal.SIGKILL)
            stop.touch()
            if self.guardian:  # the writers are released before any command runs
                self._wait_workers(workers, result)
                self._recover(result)
            else:
                self._recover(result)
                self._wait_workers(workers, result)
            if result.wedged:
                force_abort(self.mnt)
                wait_for(lambda: all(w.poll() is not None for w in workers), DEADLINE)
                self._remount_after_wedge()
            self._check(acks, result)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        return result

    def _recover(self, result: TryResult) -> None:
        t0 = time.monotonic()
        try:
            if result.via == "umount":
                res = self.cli("umount", str(self.mnt))
                if res.returncode != 0:
                    result.wedged = f"umount failed: {res.stderr.strip()}"
                    return
                result.recovered = res.stderr.strip()
            res = self.mount()
            result.recovered = (result.recovered + " " + res.stderr.strip()).strip()
            if res.returncode != 0:
                result.wedged = f"mount failed: {res.stderr.strip()}"
        except subprocess.TimeoutExpired as e:
            result.wedged = f"{' '.join(map(str, e.cmd[3:5]))} hung for {e.timeout:.0f} s"
        result.recover_s = time.monotonic() - t0

    def _wait_workers(self, workers: list[subprocess.Popen[bytes]], result: TryResult) -> None:
        if wait_for(lambda: all(w.poll() is not None for w in workers), DEADLINE):
            return
        stuck = [f"{w.pid}:{tree_states(w.pid)}" for w in workers if w.poll() is None]
        result.wedged = (result.wedged + "; " if result.wedged else "") + (
            f"workers still running after {DEADLINE:.0f} s (pid:states, then their children's) {' '.join(stuck)}"
        )

    def _remount_after_wedge(self) -> None:
        """The manual recovery: the lock is released once the zombie is gone, then mount."""
        wait_for(lambda: self.mount().returncode == 0, DEADLINE * 2)

    def _check(self, acks: list[Path], result: TryResult) -> None:
        for path in acks:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                rel, token = line.split("\t")
                self.acked[rel] = token
                result.commits += 1
        if not os.path.ismount(self.mnt):
            result.died = "no mount after recovery"
            return
        for rel, token in self.acked.items():
            try:
                body = (self.mnt / "done" / rel).read_text()
            except OSError as e:
                body = f"<{e.strerror}>"
            if body != f"name,token\n{rel},{token}\n":
                result.lost.append(f"{rel}: {body[:60]!r}")

    def finish(self) -> subprocess.CompletedProcess[str]:
        """Clean unmount, then the final oracle: fsck of the state dir."""
        if os.path.ismount(self.mnt):
            res = self.cli("umount", str(self.mnt))
            assert res.returncode == 0, res.stderr
        return self.cli("fsck", str(self.mission), "--state", str(self.state), timeout=120)

    def cleanup(self) -> None:
        """Leave nothing mounted or running, whatever happened."""
        if mount_dev(self.mnt) is None:
            return
        with contextlib.suppress(OSError, ValueError):
            pid = self.daemon_pid()
            res = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if res.returncode == 0 and wait_for(lambda: proc_state(pid) in ("", "Z"), DEADLINE):
                return
        force_abort(self.mnt)


def _count(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.read_text().count("\n")
    return total


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    a = sys.argv[2:]
    sys.exit(worker(Path(a[0]), Path(a[1]), Path(a[2]), Path(a[3]), int(a[4])))
