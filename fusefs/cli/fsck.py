"""`missionfs fsck`: check (and with --repair, mend) a state dir and its bucket, without a
daemon."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusefs.cli.common import UserError, state_dir_for
from fusefs.engine.fsck import Fsck
from fusefs.model.errors import S3ConfigError
from fusefs.model.mission import Mission, load_mission
from fusefs.statedir.journal import worker_id
from fusefs.statedir.layout import WITNESS_DIR, StateLayout


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the `missionfs` argument parser."""
    f = sub.add_parser(
        "fsck",
        help="check a state dir (and its bucket) for damage; --repair fixes it without "
        "deleting anything (refuses to run while the state dir is mounted)",
    )
    f.add_argument("mission", type=Path)
    f.add_argument(
        "--repair",
        action="store_true",
        help="fix what can be fixed: bad files to quarantine/ with a note, indexes rebuilt, "
        "lost uploads re-queued, altered bucket objects restored (the altered bytes kept), "
        "damaged checkpoints replaced by one written from the bucket's listing",
    )
    f.add_argument("--state", type=Path)
    f.add_argument("--endpoint-url")
    f.add_argument(
        "--local",
        action="store_true",
        help="check the state dir only: no S3 request and no credentials needed (the bucket's "
        "intent as last seen)",
    )
    f.add_argument("--worker", help="worker id (default: the one kept in the state dir)")
    f.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    from fusefs.cli.common import add_force_mission, add_umask

    add_force_mission(f)
    add_umask(f)
    f.set_defaults(func=cmd_fsck)


def cmd_fsck(args: argparse.Namespace) -> int:
    from fusefs.engine.workspace import StateDirBusy, lock_state_dir

    mission = load_mission(args.mission)
    if args.endpoint_url and not mission.s3:
        raise UserError(f"--endpoint-url given but {args.mission} has no [store] s3")
    state_dir = state_dir_for(mission, args.state, args.force_mission)
    if not StateLayout(state_dir).tiles.is_dir():
        raise UserError(f"{state_dir} is not a missionfs state dir (no {WITNESS_DIR}/)")
    try:
        lock = lock_state_dir(state_dir)
    except StateDirBusy as busy:
        raise UserError(
            f"state dir {state_dir} is mounted by missionfs pid {busy.pid}; unmount it first"
        ) from None
    try:
        return _run(args, mission, state_dir)
    except S3ConfigError as e:
        raise UserError(f"{mission.s3}: {e}") from None
    finally:
        lock.close()


def _run(args: argparse.Namespace, mission: Mission, state_dir: Path) -> int:
    worker = args.worker or worker_id(state_dir)  # an override is not written to the state dir
    s3 = None
    if mission.s3:
        mission, s3 = _connect(args, mission, state_dir)
        if getattr(args, "local", False):
            s3 = None  # the bucket and claims checks are skipped
    return Fsck(
        mission, state_dir, repair=args.repair, quiet=args.quiet, s3=s3, worker=worker
    ).run()


def _connect(args: argparse.Namespace, mission: Mission, state_dir: Path) -> tuple[Mission, Any]:
    """The bucket and the mission united with the bucket's intent (as the daemon sees it)."""
    from fusefs.engine.workspace import s3_endpoint, with_bucket_intent
    from fusefs.objects.s3store import S3Store

    s3 = S3Store(mission.s3 or "", mission.name, s3_endpoint(state_dir, args.endpoint_url))
    contact = not getattr(args, "local", False)
    try:
        return with_bucket_intent(mission, s3, state_dir, contact=contact), s3
    except S3ConfigError as e:
        raise UserError(f"{mission.s3}: {e}") from None
