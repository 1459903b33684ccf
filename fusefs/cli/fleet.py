# layer: cli
"""`missionfs fleet MISSION.toml [--json]`: every worker seen in the mission's bucket.

Built from segments and leases only (fleetview.py); no coordinator, no listing of witnesses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fusefs.model.mission import load_mission

DEFAULT_SILENT = 3 * 30.0 + 5.0  # as a mount judges a worker silent with --refresh 30


def add_parser(sub: Any) -> None:
    """Register `missionfs fleet`."""
    p = sub.add_parser("fleet", help="the workers seen in the bucket: last seen, pace, share")
    p.add_argument("mission", type=Path)
    p.add_argument("--state", type=Path, help="state dir that remembers segments already counted")
    p.add_argument("--endpoint-url")
    p.add_argument(
        "--silent",
        type=float,
        default=DEFAULT_SILENT,
        help="seconds without uploads in a segment or a lease write after which a worker is silent (95)",
    )
    p.add_argument(
        "--lease", type=float, default=900.0, help="lease length of unreadable leases (900)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet)


def cmd_fleet(args: argparse.Namespace) -> int:
    from fusefs.cli.common import UserError, state_dir_for
    from fusefs.engine.fleetview import fleet
    from fusefs.engine.workspace import s3_endpoint
    from fusefs.model.errors import S3ConfigError, S3Unavailable
    from fusefs.objects.s3store import S3Store
    from fusefs.statedir.layout import StateLayout

    if args.silent <= 0 or args.lease <= 0:
        raise UserError("--silent and --lease must be positive numbers of seconds")
    mission = load_mission(args.mission)
    if not mission.s3:
        raise UserError(f"{args.mission} has no [store] s3: a fleet shares a bucket")
    state_dir = state_dir_for(mission, args.state)
    cache = StateLayout(state_dir).fleet_cache if state_dir.is_dir() else None
    try:
        endpoint = s3_endpoint(state_dir, args.endpoint_url)  # remembered by mount
        s3 = S3Store(mission.s3, mission.name, endpoint)
        view = fleet(s3, cache, lease_seconds=args.lease, silent_after=args.silent)
    except (S3ConfigError, S3Unavailable) as e:
        raise UserError(f"{mission.s3}: {e}") from None
    except ValueError as e:  # a malformed s3:// URL or endpoint
        raise UserError(f"{mission.s3}: {e}") from None
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        _print(view)
    return 0


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _print(view: dict[str, Any]) -> None:
    ws = view["workers"]
    if not ws:
        print("no worker seen in the bucket (no segment counts, no live lease)")
        return
    print(
        f"{'worker':<28} {'last seen':>12} {'10 min':>7} {'done':>8} {'/min':>7} "
        f"{'leases':>6} {'share':>6}  state"
    )
    for e in ws:
        print(
            f"{e['worker']:<28} {_ago(e['seconds_since_seen']):>12} {e['done_recent']:>7} "
            f"{e['done']:>8} {e['rate_per_minute']:>7} {e['live_leases']:>6} "
            f"{100 * e['share']:>5.1f}%  {'SILENT' if e['silent'] else 'active'}"
        )
    since = view["since"]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since)) + " UTC" if since else "-"
    print(
        f"fleet: {len(ws)} worker(s), {sum(not e['silent'] for e in ws)} active; "
        f"{view['rate_per_minute']}/min over the last 10 min; {view['live_leases']} live "
        f"lease(s); done counted from segments since {when}"
    )
