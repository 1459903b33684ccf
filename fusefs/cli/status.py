"""`missionfs status` and `pending`: counts and the live difference, from a mount or a state dir."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fusefs.cli.common import (
    UserError,
    add_force_mission,
    add_umask,
    hold_logged_claims,
    open_ws,
)
from fusefs.model.mission import load_mission

log = logging.getLogger("missionfs")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register this module's command(s) on the `missionfs` parser."""
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
    return s


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
        ws = open_ws(args, mission, lock=False, contact_s3=False)
        hold_logged_claims(ws)
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
        from fusefs.engine.eta import human_duration

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
    ws = open_ws(args, mission, lock=False, contact_s3=False)
    hold_logged_claims(ws)
    space = ws.state.space
    out = sys.stdout
    for task in ws.state.pending:  # `missionfs pending M | head`: see closed_pipe()
        out.write(space.rel(task) + "\n")
    return 0
