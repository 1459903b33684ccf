"""Find, abort and release the FUSE connection of a daemon that died (issue 13: no wedge).

After `kill -9`, a daemon whose pyfuse3 notify thread waits in the kernel for a directory lock
(held by a rename that only the dead daemon could answer) stays a zombie that keeps /dev/fuse
open: the connection never aborts, writers sleep in D state, the state-dir lock stays held.
The next `missionfs mount` or `umount` recognises such a predecessor (its pid is gone or a
zombie) and aborts its connection through fusectl, which ends every waiting request, lets the
zombie finish and frees the lock; then it detaches the dead mount.

Nothing here touches a mountpoint that may be wedged (a stat of it would hang this process
too): mounts are found in /proc/self/mountinfo, processes in /proc, and the daemon leaves a
record of its connection in STATE/mount.json (and, for `umount MNT`, in a runtime directory
keyed by connection id) when it mounts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fusefs.statedir.layout import MOUNT_RECORD, StateLayout
from fusefs.statedir.store import replace_text

log = logging.getLogger("missionfs")

RECORD = MOUNT_RECORD
FUSECTL = Path("/sys/fs/fuse/connections")
PROBE_SECONDS = 3.0  # statfs of a mount with no record: longer than this means "not answering"
RELEASE_SECONDS = 20.0  # an aborted zombie ends and frees the lock well within this


@dataclass
class MountRecord:
    """Who serves a mount: the daemon's pid and start time (pids are reused), its connection."""

    pid: int
    start: int
    conn: str
    mountpoint: str
    state: str


# -- /proc ---------------------------------------------------------------------------------------
def proc_stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat after the command name (fields[0] is field 3, the state); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22), 0 if it is gone."""
    fields = proc_stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else 0


def is_dead(pid: int, start: int | None = None) -> bool:
    """Gone, a zombie (its main thread exited: kill -9 with a thread stuck in the kernel), or a
    different process that reused the pid."""
    fields = proc_stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return True
    return start is not None and int(fields[19]) != start


# -- mounts and connections ----------------------------------------------------------------------
def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def fuse_connection(mountpoint: Path) -> str | None:
    """The FUSE connection id (/sys/fs/fuse/connections/ID) of the mount on MOUNTPOINT, from
    /proc/self/mountinfo: the last (topmost) FUSE mount there, None if there is none."""
    conn = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 7 or _unescape(fields[4]) != str(mountpoint):
                    continue
                fstype = fields[fields.index("-") + 1] if "-" in fields else ""
                if fstype == "fuse" or fstype.startswith("fuse."):
                    major, minor = (int(x) for x in fields[2].split(":"))
                    conn = str((major << 20) | minor)  # the kernel's dev_t encoding
    except (OSError, ValueError):
        return None
    return conn


def _fusectl() -> tuple[Path, bool]:
    """fusectl's directory, mounted for the occasion if needed (True: unmount it after)."""
    if os.path.ismount(FUSECTL):
        return FUSECTL, False
    res = subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True)
    return FUSECTL, res.returncode == 0


def abort_fuse_connection(conn: str | None) -> int | None:
    """Abort a FUSE connection: every request waiting on it fails at once (ECONNABORTED) and
    the daemon's /dev/fuse reads end. Returns how many requests were waiting, None on failure."""
    if conn is None:
        return None
    ctl, mounted = _fusectl()
    try:
        waiting = 0
        with contextlib.suppress(OSError, ValueError):
            waiting = int((ctl / conn / "waiting").read_text())
        (ctl / conn / "abort").write_text("1\n")
        return waiting
    except OSError as e:
        log.error("could not abort FUSE connection %s: %s", conn, e)
        return None
    finally:
        if mounted:
            subprocess.run(["umount", str(ctl)], capture_output=True)


def lazy_unmount(mountpoint: Path) -> bool:
    """Detach a dead mount (it answers ENOTCONN) so the mountpoint can be used again."""
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        with contextlib.suppress(OSError):
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return True
    return False


def probe_statfs(mountpoint: Path, timeout: float = PROBE_SECONDS) -> int | None:
    """statfs MOUNTPOINT in a child process: 0 if it answers, its errno if it fails, None if it
    does not answer within TIMEOUT (the child is killed and never waited for without bound)."""
    code = "import os,sys\ntry: os.statvfs(sys.argv[1])\nexcept OSError as e: sys.exit(e.errno)"
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", code, str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
        return None


# -- the daemon's record -------------------------------------------------------------------------
def runtime_dir() -> Path | None:
    """Where `umount MNT` finds a mount's record by connection id (root: /run/missionfs; users:
    $XDG_RUNTIME_DIR/missionfs; none otherwise, then umount falls back to probing)."""
    if os.environ.get("MISSIONFS_RUNTIME_DIR"):
        return Path(os.environ["MISSIONFS_RUNTIME_DIR"])
    if os.geteuid() == 0:
        return Path("/run/missionfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "missionfs" if xdg else None


def record_mount(state_dir: Path, mountpoint: Path, conn: str | None) -> None:
    """Written by the daemon right after mounting; best effort (recovery then probes)."""
    if conn is None:
        return
    rec = MountRecord(os.getpid(), start_time(os.getpid()), conn, str(mountpoint), str(state_dir))
    text = json.dumps(asdict(rec))
    targets = [StateLayout(state_dir).mount_record]
    run = runtime_dir()
    if run is not None:
        targets.append(run / f"conn-{conn}.json")
    for target in targets:
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_text(target, text)
        except OSError as e:
            log.warning("could not record the mount in %s (%s)", target, e)


def forget_mount(state_dir: Path) -> None:
    """Removed on a clean exit: a record left behind means the daemon did not end cleanly."""
    rec = _read(StateLayout(state_dir).mount_record)
    if rec is not None and rec.pid == os.getpid():
        _drop_record(rec)


def _read(path: Path) -> MountRecord | None:
    try:
        return MountRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _lock_holder(state_dir: Path) -> int | None:
    """The pid written in STATE/daemon.lock if a process holds the lock, None if it is free
    (checked with a shared, non-blocking flock: nothing is written)."""
    try:
        f = open(StateLayout(state_dir).lock)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


# -- recovery ------------------------------------------------------------------------------------
class NotAnswering(Exception):
    """A mount with no known daemon does not answer statfs: stuck or busy, not provably dead."""

    def __init__(self, mountpoint: Path, conn: str) -> None:
        super().__init__(mountpoint, conn)
        self.mountpoint = mountpoint
        self.conn = conn


def _find_record(mountpoint: Path, state_dir: Path | None, conn: str | None) -> MountRecord | None:
    """The record of the daemon of STATE_DIR, else of the mount on MOUNTPOINT (runtime dir)."""
    if state_dir is not None:
        rec = _read(StateLayout(state_dir).mount_record)
        if rec is not None:
            return rec
    run = runtime_dir()
    if conn is None or run is None:
        return None
    rec = _read(run / f"conn-{conn}.json")
    return rec if rec is not None and rec.mountpoint == str(mountpoint) else None


def _drop_record(rec: MountRecord) -> None:
    run = runtime_dir()
    paths = [StateLayout(Path(rec.state)).mount_record] + (
        [run / f"conn-{rec.conn}.json"] if run else []
    )
    for path in paths:
        with contextlib.suppress(OSError):
            if (_read(path) or rec).pid == rec.pid:
                path.unlink()


def recover(mountpoint: Path, state_dir: Path | None = None) -> str | None:
    """Abort and detach what a dead daemon left on MOUNTPOINT or on STATE_DIR's mount.

    Returns one line saying what was recovered, None when there was nothing to do (no mount,
    or a live daemon: the caller then reports it as in use). Raises NotAnswering for a mount
    that no record explains and that does not answer statfs."""
    conn_here = fuse_connection(mountpoint)
    rec = _find_record(mountpoint, state_dir, conn_here)
    if rec is not None and not is_dead(rec.pid, rec.start):
        return None  # a live daemon
    if rec is not None:
        state_dir = state_dir or Path(rec.state)
    holder = _lock_holder(state_dir) if state_dir is not None else None
    if rec is not None:
        mounted = fuse_connection(Path(rec.mountpoint)) == rec.conn
        if mounted or (holder == rec.pid and (FUSECTL / rec.conn).exists()):
            return _release(rec.pid, rec.conn, Path(rec.mountpoint), state_dir)
        _drop_record(rec)  # stale: its connection is gone already
    if holder is not None and holder > 0 and is_dead(holder) and conn_here is not None:
        return _release(holder, conn_here, mountpoint, state_dir)  # a daemon without a record
    if conn_here is None or (holder is not None and not is_dead(holder)):
        return None
    err = probe_statfs(mountpoint)
    if err is None:
        raise NotAnswering(mountpoint, conn_here)
    if err != errno.ENOTCONN:
        return None
    lazy_unmount(mountpoint)
    return f"released a dead mount left on {mountpoint} (its daemon is gone)"


def _stuck(pid: int) -> bool:
    """A thread of PID is still alive although its main thread exited: it holds every file of
    the process open, /dev/fuse and the state-dir lock included."""
    if proc_stat_fields(pid)[:1] != [b"Z"]:
        return False  # gone, or a live process (maybe another one that reused the pid)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(proc_stat_fields(int(t))[:1] not in ([], [b"Z"], [b"X"]) for t in tids)


def _release(pid: int, conn: str, mountpoint: Path, state_dir: Path | None) -> str:
    """Abort CONN, wait for the dead daemon to let go of the state-dir lock, detach the mount."""
    stuck = _stuck(pid)
    waiting = abort_fuse_connection(conn)
    if stuck and state_dir is not None:
        deadline = time.monotonic() + RELEASE_SECONDS
        while _lock_holder(state_dir) == pid and time.monotonic() < deadline:
            time.sleep(0.02)
    if fuse_connection(mountpoint) == conn:
        lazy_unmount(mountpoint)
    for stale in (StateLayout(state_dir).mount_record,) if state_dir else ():
        with contextlib.suppress(OSError):
            stale.unlink()
    run = runtime_dir()
    if run is not None:
        with contextlib.suppress(OSError):
            (run / f"conn-{conn}.json").unlink()
    if not stuck:
        return f"released a dead mount left on {mountpoint} (daemon pid {pid} is dead)"
    held = state_dir is not None and _lock_holder(state_dir) == pid
    return (
        f"released a dead mount left on {mountpoint}: killed daemon pid {pid} had a thread stuck "
        f"in the kernel holding it open; aborted FUSE connection {conn}"
        + (f" ({waiting} waiting request(s) failed)" if waiting else "")
        + (f"; pid {pid} still holds {state_dir}/daemon.lock" if held else "")
    )


# -- prevention: a guardian that aborts the connection as soon as the daemon dies ----------------
GUARD_POLL = 0.5  # seconds between looks at the daemon's /proc entry


def log_line(state_dir: Path, line: str) -> None:
    """One line in STATE/missionfs.log, in the daemon's format, written from outside it."""
    with contextlib.suppress(OSError), open(StateLayout(state_dir).log, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} missionfs WARNING: {line}\n")


def start_guardian(state_dir: Path, mountpoint: Path) -> None:
    """A small process that outlives a killed daemon and aborts its connection at once if the
    daemon cannot finish dying, so writers never wait for the next mount/umount
    (MISSIONFS_GUARDIAN=0: none). It holds neither /dev/fuse nor the lock (no inherited fds) and
    sits in / (it pins no mount)."""
    if os.environ.get("MISSIONFS_GUARDIAN", "1") == "0":
        return
    pid = os.getpid()
    cmd = [sys.executable, "-m", "fusefs.fuse.fuseconn", "guard", str(pid), str(start_time(pid))]
    try:
        subprocess.Popen(
            [*cmd, str(mountpoint), str(state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the daemon's process group spares it
            cwd="/",
        )
    except OSError as e:
        log.warning("no guardian for the mount (%s); after a kill -9, run missionfs umount", e)


def guard(pid: int, start: int, mountpoint: Path, state_dir: Path) -> None:
    """Wait for daemon PID to end; if it is a zombie whose stuck thread holds its connection
    open, abort the connection: writers are released at once. Nothing else (a daemon that died
    whole has had its connection aborted by the kernel; the next mount or umount detaches the
    mount: the guardian never unmounts, a new mount may already be there)."""
    while not is_dead(pid, start):
        time.sleep(GUARD_POLL)
    time.sleep(GUARD_POLL)  # a thread finishing an fsync is not stuck: look twice
    rec = _read(StateLayout(state_dir).mount_record)
    if rec is None or rec.pid != pid or not _stuck(pid):
        return  # a clean exit, already recovered, or nothing holds the connection open
    waiting = abort_fuse_connection(rec.conn)
    log_line(
        state_dir,
        f"guardian: daemon pid {pid} was killed with a thread stuck in the kernel holding "
        f"{mountpoint} open; aborted FUSE connection {rec.conn}"
        + (f" ({waiting} waiting request(s) failed)" if waiting else "")
        + "; the next missionfs mount or umount detaches the dead mount",
    )


if __name__ == "__main__" and sys.argv[1:2] == ["guard"]:
    guard(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
