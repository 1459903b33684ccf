"""`missionfs mount|umount|status|pending|sync`: one-line errors, progress bars, --quiet."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .mission import Mission, MissionError, load_mission

log = logging.getLogger("missionfs")

DEFAULT_LEASE = 15 * 60.0
MOUNT_WAIT_SECONDS = 120.0


class UserError(Exception):
    """Printed as one line `missionfs: ...`, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, MissionError) as e:
        print(f"missionfs: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="missionfs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a mission (pending/ claimed/ done/ tmp/ status)")
    m.add_argument("mission", type=Path)
    m.add_argument("mountpoint", type=Path)
    m.add_argument(
        "--state", type=Path, help="state directory (default: XDG data dir/missionfs/NAME)"
    )
    m.add_argument("--endpoint-url", help="S3 endpoint for non-AWS servers")
    m.add_argument(
        "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    m.add_argument(
        "--lease", type=float, default=DEFAULT_LEASE, help="claim lease in seconds (900)"
    )
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    m.add_argument("--quiet", action="store_true")
    m.add_argument("--debug", action="store_true")
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount cleanly and wait for the daemon to save its index")
    u.add_argument("mountpoint", type=Path)
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="counts and progress of a mission or a mount")
    s.add_argument("target", type=Path, help="MISSION.toml or a mountpoint")
    s.add_argument("--state", type=Path)
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_status)

    pe = sub.add_parser("pending", help="print intent - fact, one relative path a line")
    pe.add_argument("mission", type=Path)
    pe.add_argument("--state", type=Path)
    pe.add_argument("--quiet", action="store_true")
    pe.set_defaults(func=cmd_pending)

    sy = sub.add_parser("sync", help="batch push and pull with the S3 store, without a mount")
    sy.add_argument("mission", type=Path)
    sy.add_argument("--state", type=Path)
    sy.add_argument("--endpoint-url")
    sy.add_argument("--quiet", action="store_true")
    sy.set_defaults(func=cmd_sync)
    return p


# -- helpers ------------------------------------------------------------------------------------
def _state_dir(mission: Mission, state: Path | None) -> Path:
    from .daemon import default_state_dir

    return state.resolve() if state else default_state_dir(mission)


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


def _load(args: argparse.Namespace, mission: Mission) -> Any:
    from .daemon import load_state

    state_dir = _state_dir(mission, getattr(args, "state", None))
    with _walk_progress(getattr(args, "quiet", False), "indexing witnesses") as progress:
        try:
            return load_state(mission, state_dir, progress), state_dir
        except PermissionError as e:
            raise UserError(f"cannot use state directory {state_dir}: {e.strerror}") from None


def _check_s3(mission: Mission, endpoint: str | None) -> None:
    if mission.s3 or endpoint:
        raise UserError(
            f"{mission.path}: [store] s3 is not supported by this build yet "
            "(local store only); remove the [store] table to run locally"
        )


# -- mount / umount -----------------------------------------------------------------------------
def cmd_mount(args: argparse.Namespace) -> int:
    from .daemon import Daemon, release_dead_mount

    mission = load_mission(args.mission)
    _check_s3(mission, args.endpoint_url)
    mnt: Path = args.mountpoint.resolve()
    if release_dead_mount(mnt):
        print(f"missionfs: released a dead mount left on {mnt}", file=sys.stderr)
    if not mnt.is_dir():
        raise UserError(f"mountpoint {mnt} is not a directory; create it with: mkdir -p {mnt}")
    if os.path.ismount(mnt):
        raise UserError(f"{mnt} is already a mount point; unmount it first: missionfs umount {mnt}")
    if args.lease <= 0:
        raise UserError(f"--lease {args.lease}: must be a positive number of seconds")
    loaded, state_dir = _load(args, mission)
    if not args.foreground:
        return _spawn_daemon(args, mnt, state_dir)
    _setup_logging(state_dir, args.debug, to_stderr=not args.quiet)
    try:
        Daemon(mission, loaded, mnt, args.lease, args.allow_other).run()
    except RuntimeError as e:
        raise UserError(
            f"cannot mount on {mnt}: {e} (is /dev/fuse usable and fuse3 installed?)"
        ) from None
    return 0


def _setup_logging(state_dir: Path, debug: bool, to_stderr: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(state_dir / "missionfs.log")]
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
    ]
    if args.allow_other:
        cmd.append("--allow-other")
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
    from .daemon import release_dead_mount

    mnt: Path = args.mountpoint.resolve()
    if release_dead_mount(mnt):
        print(f"missionfs: {mnt} was a dead mount (daemon gone); released it", file=sys.stderr)
        return 0
    if not os.path.ismount(mnt):
        raise UserError(f"{mnt} is not mounted")
    pid = None
    try:
        pid = int(json.loads((mnt / "status").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        pass
    res = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "fusermount3 failed"
        raise UserError(
            f"cannot unmount {mnt}: {msg} (close files and shells using it, then retry)"
        )
    if pid is not None:
        _wait_exit(pid, 60.0)
    return 0


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


# -- status / pending / sync --------------------------------------------------------------------
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
        (loaded, state_dir) = _load(args, mission)
        info = {
            "mission": mission.name,
            "state_dir": str(state_dir),
            "store": "local",
            "counts": loaded.state.counts(),
            "mounted": False,
            "witnesses_outside_plan": len(loaded.outside_plan),
        }
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print_status(info)
    return 0


def _print_status(info: dict[str, Any]) -> None:
    c = info["counts"]
    total, done = c["intent"], c["done"]
    width = 30
    filled = width * done // total if total else width
    pct = 100.0 * done / total if total else 100.0
    print(
        f"mission {info['mission']}  ({info.get('store', 'local')}, state {info.get('state_dir')})"
    )
    print(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done ({pct:.1f}%)")
    print(f"pending {c['pending']}  claimed {c['claimed']}")
    if info.get("witnesses_outside_plan"):
        print(f"witnesses outside the plan: {info['witnesses_outside_plan']}")
    for err in info.get("errors", [])[-5:]:
        print(f"recent error: {err['path']}: {err['error']}")


def cmd_pending(args: argparse.Namespace) -> int:
    mission = load_mission(args.mission)
    loaded, _ = _load(args, mission)
    space = loaded.state.space
    out = sys.stdout
    try:
        for task in loaded.state.pending:
            out.write(space.rel(task) + "\n")
        out.flush()
    except BrokenPipeError:  # `missionfs pending M | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    mission = load_mission(args.mission)
    if not mission.s3:
        print(f"missionfs: {mission.name} has no [store] s3; nothing to sync (local store only)")
        return 0
    _check_s3(mission, args.endpoint_url)
    return 2


if __name__ == "__main__":
    sys.exit(main())
