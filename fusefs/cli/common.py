"""Helpers every command shares: one-line errors, the state dir of a mission, opening its workspace, common options."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fusefs.model.mission import Mission

log = logging.getLogger("missionfs")


class UserError(Exception):
    """Printed as one line `missionfs: ...`, exit status 2."""


DEFAULT_LEASE = 15 * 60.0


def add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3 endpoint URL for non-AWS servers (MinIO, Ceph, ...)")
    p.add_argument(
        "--worker",
        help="worker id used in conflict and manifest names "
        "(default: hostname + random suffix, kept in the state dir)",
    )
    p.add_argument("--uploaders", type=int, default=16, help="parallel S3 requests (16)")


def state_dir_for(mission: Mission, state: Path | None, force_mission: bool = False) -> Path:
    from fusefs.engine.workspace import OtherMission, check_mission, default_state_dir

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


def parse_umask(text: str) -> int:
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
        type=parse_umask,
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
def walk_progress(quiet: bool, what: str) -> Iterator[Callable[[int], None]]:
    """A counting progress bar that only appears when the walk takes more than a moment."""
    from tqdm import tqdm

    bar = tqdm(desc=what, unit=" files", disable=quiet or None, delay=0.5, file=sys.stderr)

    def update(n: int) -> None:
        bar.update(n - bar.n)

    try:
        yield update
    finally:
        bar.close()


def sync_options(args: argparse.Namespace) -> Any:
    from fusefs.engine.workspace import SyncOptions

    worker = getattr(args, "worker", None)
    if worker is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", worker):
        raise UserError(f"--worker {worker!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return SyncOptions(
        endpoint_url=getattr(args, "endpoint_url", None),
        worker=worker,
        uploaders=max(1, getattr(args, "uploaders", 16)),
        refresh=getattr(args, "refresh", 30.0),
        full_refresh=getattr(args, "full_refresh", 3600.0),
        claim_timeout=getattr(args, "claim_timeout", 2.0),
    )


def open_ws(
    args: argparse.Namespace,
    mission: Mission,
    *,
    lock: bool,
    lease: float = DEFAULT_LEASE,
    contact_s3: bool = True,
) -> Any:
    """The workspace of the mission's state dir; contact_s3=False for local commands (no S3
    request, no credentials: see open_workspace)."""
    from fusefs.engine.workspace import StateDirBusy, open_workspace
    from fusefs.model.errors import S3ConfigError

    state_dir = state_dir_for(
        mission, getattr(args, "state", None), getattr(args, "force_mission", False)
    )
    with walk_progress(getattr(args, "quiet", False), "indexing witnesses") as progress:
        try:
            return open_workspace(
                mission,
                state_dir,
                lease=lease,
                sync=sync_options(args),
                lock=lock,
                progress=progress,
                contact_s3=contact_s3,
                durability=getattr(args, "durability", "strict"),
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


def hold_logged_claims(ws: Any) -> None:
    """Hold the live claims of STATE/claims.log (a running or stopped daemon's), as a mount
    would: a claimed task is not pending for `status` and `pending` either."""
    from fusefs.statedir.claimlog import ClaimLog

    ClaimLog(ws.store.layout.claims_log, ws.state).claim_live(owner="claims.log")


def check_s3(ws: Any, quiet: bool) -> None:
    """Refuse settings that cannot work; an unreachable endpoint only warns (work offline)."""
    from fusefs.model.errors import S3ConfigError, S3NoCredentials, S3Unavailable

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


SIGPIPE_STATUS = 128 + signal.SIGPIPE  # 141: what `seq 1 1e6 | head -1` and git exit with


def closed_pipe() -> int:
    """Quiet exit when stdout's reader closed the pipe: no traceback, and nothing more for
    Python to flush into the closed pipe at exit (stdout becomes /dev/null). The status is
    141, as coreutils and git give when SIGPIPE ends them, so `set -o pipefail` scripts see
    the same thing as with those tools."""
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_STATUS
