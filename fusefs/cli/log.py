"""`missionfs log`: the history of a task, tile, row or mission, from the journal and the bucket's object versions."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from fusefs.cli.common import (
    UserError,
    add_force_mission,
    state_dir_for,
)
from fusefs.model.mission import Mission, load_mission

log = logging.getLogger("missionfs")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register this module's command(s) on the `missionfs` parser."""
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
    return lg


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
    from fusefs.statedir.journal import read_journal
    from fusefs.statedir.layout import StateLayout

    mission = load_mission(args.mission)
    state_dir = state_dir_for(mission, args.state, args.force_mission)
    since = _parse_since(args.since)
    where = args.where.strip("/")
    entries = [
        e
        for e in read_journal(StateLayout(state_dir).journal)
        if _matches(e.get("rel"), where) and (since is None or e.get("t", 0) >= since)
    ]
    if mission.s3:
        entries += _s3_versions(mission, args, where, since, state_dir)
        entries.sort(key=lambda e: e.get("t", 0))
    if not entries and not StateLayout(state_dir).journal.is_dir():
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
    from fusefs.engine.leases import chunks_of_part
    from fusefs.engine.workspace import s3_endpoint
    from fusefs.objects.s3store import S3Store

    s3 = S3Store(mission.s3 or "", mission.name, s3_endpoint(state_dir, args.endpoint_url))
    try:
        enabled = s3.versioning_enabled()
    except Exception as e:  # unreachable or not allowed: the journal is still the history
        print(
            f"missionfs: bucket history not read ({type(e).__name__}); journal only",
            file=sys.stderr,
        )
        return []
    if not enabled:
        print(
            f"missionfs: versioning is off on s3://{s3.loc.bucket}: showing the local journal "
            "only (enable versioning to keep every writer's result in the bucket)",
            file=sys.stderr,
        )
        return []
    out: list[dict[str, Any]] = []
    for area in ("scraped-tiles", "claims", "conflicts"):
        part = where if where.endswith(".csv") else (where + "/" if where else "")
        if area == "conflicts" and where.endswith(".csv"):
            part = part.removesuffix(".csv")
        try:
            found = (
                s3.lease_versions(part, chunks_of_part(mission.space, part))  # claims/{chunk}/
                if area == "claims"
                else s3.versions(area, part)
            )
            for rel, v in found:
                if since is not None and v.last_modified < since:
                    continue
                entry: dict[str, Any] = {
                    "t": v.last_modified,
                    "ev": f"s3:{area}" + (":deleted" if v.deleted else ""),
                    "rel": rel,
                    "version": v.version_id,
                    "latest": v.is_latest,
                    "worker": "?",
                    "host": f"s3://{s3.loc.bucket}",
                }
                if where.endswith(".csv") and not v.deleted and area != "claims":
                    meta = s3.version_metadata(v.key, v.version_id)
                    entry["worker"] = meta.get("worker", "?")
                    entry["sha256"] = meta.get("sha256", "?")
                out.append(entry)
        except Exception as e:  # unreachable, not allowed: the journal still tells
            print(f"missionfs: {area}/ versions not read ({type(e).__name__})", file=sys.stderr)
    return out
