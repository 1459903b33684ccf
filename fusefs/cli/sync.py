"""`missionfs sync`: ask a mounted daemon to refresh and upload now, or run the offline batch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fusefs.cli.common import (
    UserError,
    add_force_mission,
    add_s3_options,
    add_umask,
    open_ws,
    state_dir_for,
)
from fusefs.model.mission import load_mission

log = logging.getLogger("missionfs")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register this module's command(s) on the `missionfs` parser."""
    sy = sub.add_parser(
        "sync",
        help="push local witnesses to S3 and read what other nodes published; --verify also "
        "lists the bucket "
        "(without a mount; on a mounted state dir, asks the daemon to do it now)",
    )
    sy.add_argument("mission", type=Path)
    sy.add_argument("--state", type=Path)
    add_s3_options(sy)
    sy.add_argument("--quiet", action="store_true")
    sy.add_argument(
        "--verify",
        action="store_true",
        help="also list every witness in the bucket (the truth) and publish what nobody had "
        "published; without it, the bucket's fact log is read (a few requests)",
    )
    add_force_mission(sy)
    add_umask(sy)
    sy.set_defaults(func=cmd_sync)
    return sy


SYNC_WAIT_SECONDS = 600.0


def cmd_sync(args: argparse.Namespace) -> int:
    from fusefs.engine.workspace import daemon_pid

    mission = load_mission(args.mission)
    if not mission.s3:
        print(f"missionfs: {mission.name} has no [store] s3; nothing to sync (local store only)")
        return 0
    state_dir = state_dir_for(mission, args.state, args.force_mission)
    pid = daemon_pid(state_dir)
    if pid is not None:
        return _sync_through_daemon(state_dir, pid, args.quiet, args.verify)
    ws = open_ws(args, mission, lock=True)
    try:
        return _batch_sync(ws, args.quiet, args.verify)
    finally:
        ws.close()


def _sync_through_daemon(state_dir: Path, pid: int, quiet: bool, verify: bool) -> int:
    from fusefs.statedir.layout import StateLayout

    result = StateLayout(state_dir).sync_result
    before = result.stat().st_mtime_ns if result.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR2 if verify else signal.SIGUSR1)
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
        f"learned from the bucket {info['learned_remote']}, conflicts {info['conflicts']}, "
        f"errors {info['errors']}, left to upload {info['queue']}"
    )


def _batch_sync(ws: Any, quiet: bool, verify: bool) -> int:
    """The air-gapped worker's batch: connect, catch up with the fleet's fact log (or list the
    bucket: `--verify`), upload everything, publish our manifest, report."""
    import trio
    from tqdm import tqdm

    from fusefs.model.errors import S3ConfigError

    engine = ws.sync
    total = engine.queue_size()

    async def run() -> None:
        if not await engine.connect():
            return
        await engine.refresh(force=True, verify=verify)
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
