"""`missionfs mount|umount|status|pending|sync|log|fsck|digest`: one-line errors, progress bars,
--quiet."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from . import metricsopts
from .mission import Mission, MissionError, load_mission

log = logging.getLogger("missionfs")

DEFAULT_LEASE = 15 * 60.0
MOUNT_WAIT_SECONDS = 120.0
SYNC_WAIT_SECONDS = 600.0
LOG_BYTES = 10 * 2**20  # STATE/missionfs.log rotates at this size ...
LOG_BACKUPS = 3  # ... keeping this many older files


class UserError(Exception):
    """Printed as one line `missionfs: ...`, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    umask = getattr(args, "umask", None)
    # Before any state file is made (the spawned daemon gets it too); given back on return, so
    # an in-process caller (tests, benchmarks) keeps its own umask for what it creates later.
    previous = os.umask(umask) if umask is not None else None
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's exit
        return status
    except (UserError, MissionError) as e:
        print(f"missionfs: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `missionfs log M | head -1`: the reader has all it wanted
        return closed_pipe()
    finally:
        if previous is not None:
            os.umask(previous)


SIGPIPE_STATUS = 128 + signal.SIGPIPE  # 141: what `seq 1 1e6 | head -1` and git exit with


def closed_pipe() -> int:
    """Quiet exit when stdout's reader closed the pipe: no traceback, and nothing more for
    Python to flush into the closed pipe at exit (stdout becomes /dev/null). The status is
    141, as coreutils and git give when SIGPIPE ends them, so `set -o pipefail` scripts see
    the same thing as with those tools."""
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_STATUS


def _s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3 endpoint URL for non-AWS servers (MinIO, Ceph, ...)")
    p.add_argument(
        "--worker",
        help="worker id used in conflict and manifest names "
        "(default: hostname + random suffix, kept in the state dir)",
    )
    p.add_argument("--uploaders", type=int, default=16, help="parallel S3 requests (16)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="missionfs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a mission (pending/ claimed/ done/ tmp/ status)")
    m.add_argument("mission", type=Path)
    m.add_argument("mountpoint", type=Path)
    m.add_argument(
        "--state", type=Path, help="state directory (default: XDG data dir/missionfs/NAME)"
    )
    m.add_argument(
        "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    m.add_argument(
        "--lease", type=float, default=DEFAULT_LEASE, help="claim lease in seconds (900)"
    )
    m.add_argument(
        "--refresh",
        type=float,
        default=15.0,
        help="seconds between looks for other workers' witnesses in S3 (15)",
    )
    m.add_argument(
        "--full-refresh",
        type=float,
        default=600.0,
        help="seconds between full listings of the bucket, the truth (600)",
    )
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    m.add_argument(
        "--durability",
        choices=("strict", "batched"),
        default="strict",
        help="strict: a commit returns after the witness and its directory are fsync'd; "
        "batched: directory fsyncs are grouped every 0.25 s (a power loss may forget the last "
        "commits; a killed daemon never does)",
    )
    _s3_options(m)
    metricsopts.add_mount_options(m)
    m.add_argument(
        "--claim-timeout",
        type=float,
        default=2.0,
        help="seconds a claim, renew or release waits for S3 before failing with EAGAIN (2)",
    )
    m.add_argument("--quiet", action="store_true")
    m.add_argument("--debug", action="store_true")
    add_force_mission(m)
    add_umask(m)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount cleanly and wait for the daemon to save its index")
    u.add_argument("mountpoint", type=Path)
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="counts and progress of a mission or a mount")
    s.add_argument("target", type=Path, help="MISSION.toml or a mountpoint")
    s.add_argument("--state", type=Path)
    s.add_argument("--endpoint-url")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    add_force_mission(s)
    add_umask(s)
    s.set_defaults(func=cmd_status)

    pe = sub.add_parser("pending", help="print intent - fact, one relative path a line")
    pe.add_argument("mission", type=Path)
    pe.add_argument("--state", type=Path)
    pe.add_argument("--endpoint-url")
    pe.add_argument("--quiet", action="store_true")
    add_force_mission(pe)
    add_umask(pe)
    pe.set_defaults(func=cmd_pending)

    sy = sub.add_parser(
        "sync",
        help="push local witnesses to S3 and pull the remote listing "
        "(without a mount; on a mounted state dir, asks the daemon to do it now)",
    )
    sy.add_argument("mission", type=Path)
    sy.add_argument("--state", type=Path)
    _s3_options(sy)
    sy.add_argument("--quiet", action="store_true")
    add_force_mission(sy)
    add_umask(sy)
    sy.set_defaults(func=cmd_sync)

    lg = sub.add_parser(
        "log",
        help="history of a task, tile, row or the mission (the journal, "
        "and S3 object versions where the bucket keeps them)",
    )
    lg.add_argument("mission", type=Path)
    lg.add_argument("where", nargs="?", default="", help="REL, LAT/LON or LAT (default: all)")
    lg.add_argument("--since", help="ISO time (2026-11-25T10:00) or an age (30m, 2h, 7d)")
    lg.add_argument("--state", type=Path)
    lg.add_argument("--endpoint-url")
    lg.add_argument("--json", action="store_true", help="one JSON object a line")
    add_force_mission(lg)
    lg.set_defaults(func=cmd_log)

    from . import digest, fsck, mounthelper

    digest.add_commands(sub)
    fsck.add_commands(sub)
    from . import cmd_fleet, cmd_map, cmd_watch  # issue 16: fleet, progress map, live status

    cmd_map.add_parser(sub)
    cmd_fleet.add_parser(sub)
    cmd_watch.add_options(s)
    mounthelper.add_parser(sub)
    return p


# -- helpers ------------------------------------------------------------------------------------
def _state_dir(mission: Mission, state: Path | None, force_mission: bool = False) -> Path:
    from .workspace import OtherMission, check_mission, default_state_dir

    state_dir = state.resolve() if state else default_state_dir(mission)
    try:
        check_mission(state_dir, mission.name, force=force_mission)
    except OtherMission as e:
        raise UserError(
            f"state directory {state_dir} belongs to mission {e.recorded!r}, not "
            f"{e.wanted!r} ({mission.path}); use another --state, or --force-mission to "
            f"reuse it for {e.wanted!r}"
        ) from None
    return state_dir


DEFAULT_UMASK = 0o027  # state dir 0750, index, journal, log and witnesses 0640


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal umask such as 027 or 077")
    return value


def add_umask(p: argparse.ArgumentParser) -> None:
    """--umask for the commands that may create state files (the state dir is private to its
    owner and group by default: witnesses can hold scraped personal data)."""
    p.add_argument(
        "--umask",
        type=_umask,
        default=DEFAULT_UMASK,
        help="umask for the state dir and the files made in it: index, journal, logs, "
        "witnesses (027: group may read, others nothing; 022 makes them world-readable)",
    )


def add_force_mission(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force-mission",
        action="store_true",
        help="use a state dir that belongs to another mission (mount, sync and fsck --repair "
        "then record this mission as its own)",
    )


@contextmanager
def _walk_progress(quiet: bool, what: str) -> Iterator[Callable[[int], None]]:
    """A counting progress bar that only appears when the walk takes more than a moment."""
    from tqdm import tqdm

    bar = tqdm(desc=what, unit=" files", disable=quiet or None, delay=0.5, file=sys.stderr)

    def update(n: int) -> None:
        bar.update(n - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _sync_options(args: argparse.Namespace) -> Any:
    from .workspace import SyncOptions

    worker = getattr(args, "worker", None)
    if worker is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", worker):
        raise UserError(f"--worker {worker!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return SyncOptions(
        endpoint_url=getattr(args, "endpoint_url", None),
        worker=worker,
        uploaders=max(1, getattr(args, "uploaders", 16)),
        refresh=getattr(args, "refresh", 15.0),
        full_refresh=getattr(args, "full_refresh", 600.0),
        claim_timeout=getattr(args, "claim_timeout", 2.0),
    )


def _open(
    args: argparse.Namespace,
    mission: Mission,
    *,
    lock: bool,
    lease: float = DEFAULT_LEASE,
    contact_s3: bool = True,
) -> Any:
    """The workspace of the mission's state dir; contact_s3=False for local commands (no S3
    request, no credentials: see open_workspace)."""
    from .errors import S3ConfigError
    from .workspace import StateDirBusy, open_workspace

    state_dir = _state_dir(
        mission, getattr(args, "state", None), getattr(args, "force_mission", False)
    )
    with _walk_progress(getattr(args, "quiet", False), "indexing witnesses") as progress:
        try:
            return open_workspace(
                mission,
                state_dir,
                lease=lease,
                sync=_sync_options(args),
                lock=lock,
                progress=progress,
                contact_s3=contact_s3,
            )
        except PermissionError as e:
            raise UserError(f"cannot use state directory {state_dir}: {e.strerror}") from None
        except StateDirBusy as busy:
            raise UserError(
                f"state directory {state_dir} is in use by missionfs pid {busy.pid}; "
                "unmount it first (missionfs umount MNT)"
            ) from None
        except S3ConfigError as e:
            raise UserError(f"{mission.s3}: {e}") from None


def _logged_claims(ws: Any) -> None:
    """Hold the live claims of STATE/claims.log (a running or stopped daemon's), as a mount
    would: a claimed task is not pending for `status` and `pending` either."""
    from .claimlog import CLAIMS_FILE, ClaimLog

    ClaimLog(ws.store.root / CLAIMS_FILE, ws.state).claim_live(owner="claims.log")


def _check_s3(ws: Any, quiet: bool) -> None:
    """Refuse settings that cannot work; an unreachable endpoint only warns (work offline)."""
    from .errors import S3ConfigError, S3NoCredentials, S3Unavailable

    if ws.sync is None:
        return
    try:
        ws.sync.checked(ws.sync.s3.check())  # the daemon's loops need not run it again
    except S3NoCredentials as e:  # an offline node: work locally, upload once credentials come
        if not quiet:
            print(f"missionfs: warning: {e}; working offline, uploads are queued", file=sys.stderr)
    except S3ConfigError as e:
        ws.close()
        raise UserError(f"{ws.mission.s3}: {e}") from None
    except S3Unavailable as e:
        if not quiet:
            print(f"missionfs: warning: {e}; working offline, uploads are queued", file=sys.stderr)


# -- mount / umount -----------------------------------------------------------------------------
def cmd_mount(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    mission = load_mission(args.mission)
    if args.endpoint_url and not mission.s3:
        raise UserError(f"--endpoint-url given but {args.mission} has no [store] s3")
    recovered = _recover(
        _unresolved(args.mountpoint), _state_dir(mission, args.state, args.force_mission)
    )
    mnt: Path = args.mountpoint.resolve()
    if not mnt.is_dir():
        raise UserError(f"mountpoint {mnt} is not a directory; create it with: mkdir -p {mnt}")
    if os.path.ismount(mnt):
        raise UserError(f"{mnt} is already a mount point; unmount it first: missionfs umount {mnt}")
    if min(args.lease, args.refresh, args.full_refresh, args.claim_timeout) <= 0:
        raise UserError(
            "--lease, --refresh, --full-refresh and --claim-timeout must be positive numbers"
            " of seconds"
        )
    try:
        listen = metricsopts.parse_listen(args.metrics, args.metrics_public)
    except ValueError as e:
        raise UserError(str(e)) from None
    ws = _open(args, mission, lock=True, lease=args.lease)
    if listen is not None and args.foreground:
        _serve_metrics(ws, listen)
    _check_s3(ws, args.quiet)
    if not args.foreground:
        state_dir = ws.store.root
        if recovered:
            from .fuseconn import log_line

            log_line(state_dir, recovered)
        ws.close()  # the daemon takes the state dir over
        return _spawn_daemon(args, mnt, state_dir)
    _setup_logging(ws.store.root, args.debug, to_stderr=not args.quiet)
    if recovered:
        log.warning("%s", recovered)
    ws.committer.batched = args.durability == "batched"
    ws.status.durability = args.durability
    try:
        Daemon(ws, mnt, args.allow_other).run()
    except RuntimeError as e:
        raise UserError(
            f"cannot mount on {mnt}: {e} (is /dev/fuse usable and fuse3 installed?)"
        ) from None
    finally:
        ws.close()
    return 0


def _serve_metrics(ws: Any, listen: tuple[str, int]) -> None:
    from .metrics import serve

    try:
        serve(ws, listen)  # before the S3 check: its requests are counted too
    except OSError as e:
        ws.close()
        raise UserError(f"cannot serve metrics on {listen[0]}:{listen[1]}: {e.strerror}") from None


def _setup_logging(state_dir: Path, debug: bool, to_stderr: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    from logging.handlers import RotatingFileHandler

    # Bounded: at most LOG_BYTES x (1 + LOG_BACKUPS) on disk (missionfs.log, .log.1, .log.2, ...)
    # backslashreplace: a logged name with bytes that are not UTF-8 must not break the line.
    rotating = RotatingFileHandler(
        state_dir / "missionfs.log",
        maxBytes=LOG_BYTES,
        backupCount=LOG_BACKUPS,
        encoding="utf-8",
        errors="backslashreplace",
    )
    handlers: list[logging.Handler] = [rotating]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


def _spawn_daemon(args: argparse.Namespace, mnt: Path, state_dir: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "fusefs",
        "mount",
        str(args.mission.resolve()),
        str(mnt),
        "--state",
        str(state_dir),
        "--foreground",
        "--quiet",
        "--lease",
        str(args.lease),
        "--refresh",
        str(args.refresh),
        "--full-refresh",
        str(args.full_refresh),
        "--uploaders",
        str(args.uploaders),
        "--durability",
        args.durability,
        "--umask",
        f"{args.umask:03o}",
        "--claim-timeout",
        str(args.claim_timeout),
    ]
    for flag in ("endpoint_url", "worker"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.allow_other:
        cmd.append("--allow-other")
    cmd += metricsopts.forwarded(args)
    err_path = state_dir / "daemon.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            if not args.quiet:
                print(
                    f"missionfs: {args.mission} mounted on {mnt} (pid {proc.pid}, state {state_dir})"
                )
            return 0
        if proc.poll() is not None:
            lines = err_path.read_text(errors="replace").strip().splitlines()
            raise UserError(
                lines[-1].removeprefix("missionfs: ")
                if lines
                else f"daemon exited with status {proc.returncode}; see {state_dir}/missionfs.log"
            )
        time.sleep(0.05)
    proc.terminate()
    raise UserError(
        f"{mnt} did not appear within {MOUNT_WAIT_SECONDS:.0f} s; see {state_dir}/missionfs.log"
    )


def cmd_umount(args: argparse.Namespace) -> int:
    if _recover(_unresolved(args.mountpoint), None):
        return 0
    mnt: Path = args.mountpoint.resolve()
    if not os.path.ismount(mnt):
        raise UserError(f"{mnt} is not mounted")
    pid = None
    with suppress(OSError, ValueError, KeyError):
        pid = int(json.loads((mnt / "status").read_text())["pid"])
    res = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "fusermount3 failed"
        raise UserError(
            f"cannot unmount {mnt}: {msg} (close files and shells using it, then retry)"
        )
    if pid is not None:
        _wait_exit(pid, 60.0)
    return 0


def _unresolved(mountpoint: Path) -> Path:
    """MOUNTPOINT made absolute with its parent resolved, without a stat of MOUNTPOINT itself
    (that would hang on a wedged mount)."""
    path = Path(os.path.abspath(mountpoint))
    return path.parent.resolve() / path.name if path.name else path


def _recover(mnt: Path, state_dir: Path | None) -> str | None:
    """Release what a killed daemon left (issue 13): one line on stderr saying what."""
    from .fuseconn import NotAnswering, recover

    try:
        recovered = recover(mnt, state_dir)
    except NotAnswering as e:
        raise UserError(
            f"{mnt} does not answer and no missionfs daemon is known for it; if its daemon is "
            f"gone, abort it with: echo 1 > /sys/fs/fuse/connections/{e.conn}/abort"
        ) from None
    if recovered:
        print(f"missionfs: {recovered}", file=sys.stderr)
    return recovered


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until the daemon has saved its index and exited (it may be our child or not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
                return
        time.sleep(0.02)
    raise UserError(f"daemon pid {pid} did not exit within {timeout:.0f} s after unmount")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


# -- status / pending ---------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    target: Path = args.target
    if target.is_dir():
        if not os.path.ismount(target):
            raise UserError(f"{target} is a directory but not a missionfs mount")
        try:
            info = json.loads((target / "status").read_text())
        except OSError as e:
            raise UserError(f"cannot read {target}/status: {e.strerror}") from None
    else:
        mission = load_mission(target)
        ws = _open(args, mission, lock=False, contact_s3=False)
        _logged_claims(ws)
        info = ws.status.snapshot()
        info.pop("pid", None)
        info["mounted"] = False
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print_status(info)
    return 0


def _print_status(info: dict[str, Any]) -> None:
    c = info["counts"]
    digest = info.get("digest") or {}
    total, done = c["intent"], c["done"]
    width = 30
    filled = width * done // total if total else width
    pct = 100.0 * done / total if total else 100.0
    print(
        f"mission {info['mission']}  ({info.get('store', 'local')}, state {info.get('state_dir')})"
    )
    print(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done ({pct:.1f}%)")
    print(f"pending {c['pending']}  claimed {c['claimed']}")
    if info.get("pace"):
        from .eta import human_duration

        p = info["pace"]
        print(
            f"rate {p['rate_per_minute']}/min (last 10 min)  ETA {human_duration(p['eta_seconds'])}"
        )
    sync = info.get("sync", {})
    if sync.get("enabled"):
        print(
            f"s3 {sync['url']}: {sync['state']}; upload queue {sync['queue']}, "
            f"remote facts {sync['remote_facts']}, conflicts {sync['conflicts']}"
        )
    if digest.get("root"):
        print(f"facts digest {digest['root']} ({digest.get('state', '?')})")
    if info.get("witnesses_outside_plan"):
        print(f"witnesses outside the plan: {info['witnesses_outside_plan']}")
    for err in info.get("errors", [])[-5:]:
        times = f" (x{err['repeated']:,})" if err.get("repeated") else ""
        print(f"recent error: {err['path']}: {err['error']}{times}")


def cmd_pending(args: argparse.Namespace) -> int:
    mission = load_mission(args.mission)
    ws = _open(args, mission, lock=False, contact_s3=False)
    _logged_claims(ws)
    space = ws.state.space
    out = sys.stdout
    for task in ws.state.pending:  # `missionfs pending M | head`: see closed_pipe()
        out.write(space.rel(task) + "\n")
    return 0


# -- sync ---------------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    from .workspace import daemon_pid

    mission = load_mission(args.mission)
    if not mission.s3:
        print(f"missionfs: {mission.name} has no [store] s3; nothing to sync (local store only)")
        return 0
    state_dir = _state_dir(mission, args.state, args.force_mission)
    pid = daemon_pid(state_dir)
    if pid is not None:
        return _sync_through_daemon(state_dir, pid, args.quiet)
    ws = _open(args, mission, lock=True)
    try:
        return _batch_sync(ws, args.quiet)
    finally:
        ws.close()


def _sync_through_daemon(state_dir: Path, pid: int, quiet: bool) -> int:
    from .daemon import SYNC_RESULT

    result = state_dir / SYNC_RESULT
    before = result.stat().st_mtime_ns if result.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except (ProcessLookupError, PermissionError) as e:
        raise UserError(f"cannot signal the daemon (pid {pid}) of {state_dir}: {e}") from None
    deadline = time.monotonic() + SYNC_WAIT_SECONDS
    while time.monotonic() < deadline:
        if result.exists() and result.stat().st_mtime_ns != before:
            info = json.loads(result.read_text())
            if not quiet:
                _print_sync_summary(info, "the mounted daemon")
            return 0 if info["queue"] == 0 and info["online"] else 1
        time.sleep(0.05)
    raise UserError(
        f"the daemon (pid {pid}) did not finish the sync within {SYNC_WAIT_SECONDS:.0f} s"
    )


def _print_sync_summary(info: dict[str, Any], who: str) -> None:
    print(f"sync by {who}: {info['state']}")
    print(
        f"uploaded {info['uploaded']}, already in s3 {info['already_in_s3']}, "
        f"learned from listings {info['learned_remote']}, conflicts {info['conflicts']}, "
        f"errors {info['errors']}, left to upload {info['queue']}"
    )


def _batch_sync(ws: Any, quiet: bool) -> int:
    """The air-gapped worker's batch: connect, list the bucket, upload everything, report."""
    import trio
    from tqdm import tqdm

    from .errors import S3ConfigError

    engine = ws.sync
    total = engine.queue_size()

    async def run() -> None:
        if not await engine.connect():
            return
        await engine.refresh(full=True, force=True)
        with tqdm(
            total=total,
            desc="uploading",
            unit=" witnesses",
            disable=quiet or None,
            file=sys.stderr,
            delay=0.5,
        ) as bar:
            async with trio.open_nursery() as nursery:

                async def progress() -> None:
                    while True:
                        c = engine.counters
                        bar.update(c.uploaded + c.already_there + c.conflicts - bar.n)
                        await trio.sleep(0.2)

                nursery.start_soon(progress)
                await engine.drain()
                nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except S3ConfigError as e:
        raise UserError(f"{ws.mission.s3}: {e}") from None
    finally:
        engine.save()
        ws.index.snapshot(ws.committer.local, ws.index.rotate())
        ws.index.close()
        engine.close()
    info = engine.info()
    if not quiet or info["queue"] or not info["online"]:
        _print_sync_summary(info, "missionfs sync")
    if not info["online"]:
        print(
            f"missionfs: S3 unreachable ({info['last_error']}); {info['queue']} witness(es) "
            "still to upload: run missionfs sync again when online",
            file=sys.stderr,
        )
        return 1
    return 0 if info["queue"] == 0 and info["errors"] == 0 else 1


# -- log ----------------------------------------------------------------------------------------
def _parse_since(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--since {text!r}: use an ISO time (2026-11-25T10:00) or an age such as 30m, 2h or 7d"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _matches(rel: str | None, where: str) -> bool:
    if not where:
        return True
    if rel is None:
        return False
    return rel == where or rel.startswith(where.rstrip("/") + "/")


def cmd_log(args: argparse.Namespace) -> int:
    """History from the journal; with S3 and a versioned bucket, also from object versions."""
    from .journal import read_journal

    mission = load_mission(args.mission)
    state_dir = _state_dir(mission, args.state, args.force_mission)
    since = _parse_since(args.since)
    where = args.where.strip("/")
    entries = [
        e
        for e in read_journal(state_dir / "journal")
        if _matches(e.get("rel"), where) and (since is None or e.get("t", 0) >= since)
    ]
    if mission.s3:
        entries += _s3_versions(mission, args, where, since, state_dir)
        entries.sort(key=lambda e: e.get("t", 0))
    if not entries and not (state_dir / "journal").is_dir():
        raise UserError(f"no journal in {state_dir} (nothing has run with this state dir yet)")
    for e in entries:
        if args.json:
            print(json.dumps(e, ensure_ascii=False))
        else:
            print(_format_entry(e))
    return 0


def _format_entry(e: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(e.get("t", 0), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    extra = " ".join(
        f"{k}={v}" for k, v in e.items() if k not in ("t", "ev", "rel", "worker", "host")
    )
    return (
        f"{when}Z {e.get('ev', '?'):<10} {e.get('rel', '-')}  {e.get('worker', '?')}@"
        f"{e.get('host', '?')}  {extra}".rstrip()
    )


def _s3_versions(
    mission: Mission, args: argparse.Namespace, where: str, since: float | None, state_dir: Path
) -> list[dict[str, Any]]:
    """Object versions of witness, claim and conflict keys (who wrote what, when)."""
    from .s3store import S3Store
    from .workspace import s3_endpoint

    s3 = S3Store(mission.s3 or "", mission.name, s3_endpoint(state_dir, args.endpoint_url))
    try:
        status = s3.client.get_bucket_versioning(Bucket=s3.loc.bucket).get("Status")
    except Exception as e:  # unreachable or not allowed: the journal is still the history
        print(
            f"missionfs: bucket history not read ({type(e).__name__}); journal only",
            file=sys.stderr,
        )
        return []
    if status != "Enabled":
        print(
            f"missionfs: versioning is off on s3://{s3.loc.bucket}: showing the local journal "
            "only (enable versioning to keep every writer's result in the bucket)",
            file=sys.stderr,
        )
        return []
    out: list[dict[str, Any]] = []
    for area in ("scraped-tiles", "claims", "conflicts"):
        prefix = s3.key(area, where if where.endswith(".csv") else (where + "/" if where else ""))
        if area == "conflicts" and where.endswith(".csv"):
            prefix = prefix.removesuffix(".csv")
        try:
            pages = s3.client.get_paginator("list_object_versions").paginate(
                Bucket=s3.loc.bucket, Prefix=prefix
            )
            for page in pages:
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    t = v["LastModified"].timestamp()
                    if since is not None and t < since:
                        continue
                    rel = s3.rel_of(area, v["Key"])
                    entry: dict[str, Any] = {
                        "t": t,
                        "ev": f"s3:{area}" + ("" if "Size" in v else ":deleted"),
                        "rel": rel,
                        "version": v["VersionId"],
                        "latest": v.get("IsLatest", False),
                        "worker": "?",
                        "host": f"s3://{s3.loc.bucket}",
                    }
                    if where.endswith(".csv") and "Size" in v and area != "claims":
                        meta = s3.client.head_object(
                            Bucket=s3.loc.bucket, Key=v["Key"], VersionId=v["VersionId"]
                        ).get("Metadata", {})
                        entry["worker"] = meta.get("worker", "?")
                        entry["sha256"] = meta.get("sha256", "?")
                    out.append(entry)
        except Exception as e:  # unreachable, not allowed: the journal still tells
            print(f"missionfs: {area}/ versions not read ({type(e).__name__})", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(main())
