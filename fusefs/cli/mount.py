"""`missionfs mount` and `umount`: start the daemon (in the background once the mount answers), and stop it or recover a dead one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from fusefs.cli import metricsopts
from fusefs.cli.common import (
    DEFAULT_LEASE,
    UserError,
    add_force_mission,
    add_s3_options,
    add_umask,
    check_s3,
    open_ws,
    state_dir_for,
)
from fusefs.model.mission import load_mission
from fusefs.statedir.layout import StateLayout

log = logging.getLogger("missionfs")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register this module's command(s) on the `missionfs` parser."""
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
        default=30.0,
        help="seconds between looks for other workers' witnesses in S3 (30); the first node of "
        "a fleet makes it the fleet's window (.missionfs/protocol.json), which every node uses",
    )
    m.add_argument(
        "--full-refresh",
        type=float,
        default=3600.0,
        help="seconds between verification listings of this node's share of the bucket's "
        "shards (3600): the fleet lists the bucket about once per period in total",
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
    add_s3_options(m)
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
    return m


MOUNT_WAIT_SECONDS = 120.0


LOG_BYTES = 10 * 2**20  # STATE/missionfs.log rotates at this size ...


LOG_BACKUPS = 3  # ... keeping this many older files


def cmd_mount(args: argparse.Namespace) -> int:
    from fusefs.fuse.daemon import Daemon

    mission = load_mission(args.mission)
    if args.endpoint_url and not mission.s3:
        raise UserError(f"--endpoint-url given but {args.mission} has no [store] s3")
    recovered = _recover(
        _unresolved(args.mountpoint), state_dir_for(mission, args.state, args.force_mission)
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
    ws = open_ws(args, mission, lock=True, lease=args.lease)
    claim_outcomes = None
    if listen is not None and args.foreground:
        claim_outcomes = _serve_metrics(ws, listen)
    check_s3(ws, args.quiet)
    if not args.foreground:
        state_dir = ws.store.root
        if recovered:
            from fusefs.fuse.fuseconn import log_line

            log_line(state_dir, recovered)
        ws.close()  # the daemon takes the state dir over
        return _spawn_daemon(args, mnt, state_dir)
    _setup_logging(ws.store.root, args.debug, to_stderr=not args.quiet)
    if recovered:
        log.warning("%s", recovered)
    try:
        Daemon(ws, mnt, args.allow_other, claim_outcomes=claim_outcomes).run()
    except RuntimeError as e:
        raise UserError(
            f"cannot mount on {mnt}: {e} (is /dev/fuse usable and fuse3 installed?)"
        ) from None
    finally:
        ws.close()
    return 0


def _serve_metrics(ws: Any, listen: tuple[str, int]) -> Callable[[str], None]:
    """Serve /metrics; returns the observer of claim outcomes the daemon's claims service
    reports to."""
    from fusefs.engine.metrics import serve

    try:
        _server, instruments = serve(ws, listen)  # before the S3 check: its requests count
        return instruments.claim_outcome
    except OSError as e:
        ws.close()
        raise UserError(f"cannot serve metrics on {listen[0]}:{listen[1]}: {e.strerror}") from None


def _setup_logging(state_dir: Path, debug: bool, to_stderr: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    from logging.handlers import RotatingFileHandler

    # Bounded: at most LOG_BYTES x (1 + LOG_BACKUPS) on disk (missionfs.log, .log.1, .log.2, ...)
    # backslashreplace: a logged name with bytes that are not UTF-8 must not break the line.
    rotating = RotatingFileHandler(
        StateLayout(state_dir).log,
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
    err_path = StateLayout(state_dir).daemon_err
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
    from fusefs.fuse.fuseconn import NotAnswering, recover

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
    from fusefs.fuse.fuseconn import is_dead

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if is_dead(pid):  # not our child: gone, or a zombie its parent has not reaped
                return
        time.sleep(0.02)
    raise UserError(f"daemon pid {pid} did not exit within {timeout:.0f} s after unmount")
