"""`missionfs digest` and `diff`: the Merkle digest of a state dir, and where two state dirs
(or a state dir and the bucket) differ."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from fusefs.cli.common import UserError, open_ws
from fusefs.engine.digest import (
    BucketSide,
    DigestKeeper,
    Hasher,
    StateSide,
    bucket_side,
    s3_of,
)
from fusefs.engine.facts import reconcile_in_memory
from fusefs.model.errors import S3ConfigError, S3Unavailable
from fusefs.model.merkle import DigestTree, Side, diff_sides
from fusefs.statedir.layout import StateLayout

log = logging.getLogger("missionfs")


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the `missionfs` argument parser."""
    d = sub.add_parser(
        "digest",
        help="Merkle digest of the Fact tree (mission root; rows and tiles with --depth)",
    )
    d.add_argument("mission", type=Path)
    d.add_argument("--state", type=Path)
    d.add_argument("--endpoint-url")
    d.add_argument("--depth", choices=("mission", "row", "tile"), default="mission")
    d.add_argument("--json", action="store_true")
    d.add_argument("--quiet", action="store_true")
    from fusefs.cli.common import add_force_mission, add_umask

    add_force_mission(d)
    add_umask(d)  # the hash cache is written to the state dir
    d.set_defaults(func=cmd_digest)

    f = sub.add_parser(
        "diff",
        help="tasks whose witnesses differ between two state dirs, or a state dir and the bucket",
    )
    f.add_argument("a", help="state dir, or `s3` / s3://BUCKET/PREFIX for the mission's bucket")
    f.add_argument("b", help="state dir, or `s3` / s3://BUCKET/PREFIX")
    f.add_argument(
        "--mission",
        type=Path,
        help="the MISSION.toml of both (default: the one the state dirs were last used with)",
    )
    f.add_argument("--endpoint-url")
    f.add_argument("--json", action="store_true")
    f.add_argument("--quiet", action="store_true")
    add_force_mission(f)
    add_umask(f)
    f.set_defaults(func=cmd_diff)


def _keeper(args: argparse.Namespace, mission: Any, state: Path | None) -> tuple[Any, DigestKeeper]:
    """The workspace of a state dir (no lock: a daemon may hold it) and its keeper."""

    ns = argparse.Namespace(
        state=state,
        endpoint_url=args.endpoint_url,
        quiet=True,
        worker=None,
        uploaders=16,
        force_mission=getattr(args, "force_mission", False),
    )
    ws = open_ws(ns, mission, lock=False, contact_s3=False)  # S3 only for hashes not kept
    reconcile_in_memory(
        ws.facts, ws.store, with_remote=ws.sync is not None, walked=not ws.from_index
    )
    keeper: DigestKeeper | None = getattr(ws, "digest", None)
    if keeper is None:  # a workspace built without the daemon's keeper: make one
        keeper = DigestKeeper(ws.state, Hasher(ws.state.space, ws.store, s3_of(ws)))
    return ws, keeper


def _close(opened: list[tuple[Any, DigestKeeper]]) -> None:
    for ws, keeper in opened:
        keeper.hasher.cache.close()
        ws.close()


def _build(keeper: DigestKeeper) -> DigestTree:

    try:
        return keeper.build()
    except (S3Unavailable, S3ConfigError) as e:
        raise UserError(str(e)) from None


def cmd_digest(args: argparse.Namespace) -> int:
    from fusefs.model.mission import load_mission

    mission = load_mission(args.mission)
    if args.endpoint_url and not mission.s3:
        raise UserError(f"--endpoint-url given but {args.mission} has no [store] s3")
    opened = [_keeper(args, mission, args.state)]
    try:
        keeper = opened[0][1]
        tree = _build(keeper)
    finally:
        _close(opened)
    out = tree.to_json(args.depth)
    if args.json:
        out["facts"] = len(keeper.known)
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['root']}  .")
    for lat, entry in out.get("rows", {}).items():
        print(f"{entry['digest']}  {lat}")
        for lon, d in entry.get("tiles", {}).items():
            print(f"{d}  {lat}/{lon}")
    return 0


def _is_bucket(arg: str) -> bool:
    return arg == "s3" or arg.startswith("s3://")


def _diff_mission(a: str, b: str) -> Path:
    """The mission file the state dirs among `a`, `b` were last used with (one, or the same)."""
    from fusefs.engine.workspace import remembered_mission

    dirs = [arg for arg in (a, b) if not _is_bucket(arg)]
    found = {arg: remembered_mission(Path(arg)) for arg in dirs}
    paths = {p for p in found.values() if p is not None}
    if not paths:
        raise UserError(f"cannot tell the mission of {' or '.join(dirs)}: pass --mission M.toml")
    if len(paths) > 1:
        names = ", ".join(f"{arg}: {p}" for arg, p in found.items())
        raise UserError(
            f"the state dirs were used with different mission files ({names}): "
            "pass --mission M.toml"
        )
    path = paths.pop()
    if not path.is_file():
        raise UserError(f"{path} (the state dir's mission file) is gone: pass --mission M.toml")
    return path


def cmd_diff(args: argparse.Namespace) -> int:
    from fusefs.model.mission import load_mission

    if _is_bucket(args.a) and _is_bucket(args.b):
        raise UserError("diff compares two state dirs, or a state dir and the bucket")
    for arg in (args.a, args.b):
        if not _is_bucket(arg) and not StateLayout(Path(arg)).tiles.is_dir():
            raise UserError(f"{arg} is not a missionfs state directory (no scraped-tiles/)")
    mission = load_mission(args.mission or _diff_mission(args.a, args.b))
    sides: dict[str, Side] = {}
    opened: list[tuple[Any, DigestKeeper]] = []
    try:
        for arg in (args.a, args.b):
            if not _is_bucket(arg):
                opened.append(_keeper(args, mission, Path(arg)))
                keeper = opened[-1][1]
                sides[arg] = StateSide(arg, keeper, _build(keeper))
        for arg in (args.a, args.b):
            if _is_bucket(arg):
                sides[arg] = _bucket(args, arg, mission, opened[0][1])
        result = diff_sides(sides[args.a], sides[args.b])
    except (S3Unavailable, S3ConfigError) as e:
        raise UserError(str(e)) from None
    finally:
        _close(opened)
    a, b = sides[args.a], sides[args.b]
    if args.json:
        print(
            json.dumps(
                {
                    "equal": not result.tasks and a.tree.root() == b.tree.root(),
                    "a": {"where": args.a, "root": a.tree.root()},
                    "b": {"where": args.b, "root": b.tree.root()},
                    "rows_descended": result.rows_descended,
                    "tiles_descended": result.tiles_descended,
                    "tasks": [{"rel": rel, "diff": kind} for kind, rel in result.tasks],
                },
                indent=2,
            )
        )
    else:
        for kind, rel in result.tasks:
            print(f"{kind:<10} {rel}")
    if not args.quiet and not args.json:
        if a.tree.root() == b.tree.root():
            print(f"same facts: root {a.tree.root()}", file=sys.stderr)
        else:
            print(
                f"{len(result.tasks)} task(s) differ; descended into {result.rows_descended} of "
                f"{result.rows_compared} row(s), {result.tiles_descended} tile(s)",
                file=sys.stderr,
            )
    return 1 if a.tree.root() != b.tree.root() else 0


def _bucket(args: argparse.Namespace, arg: str, mission: Any, other: DigestKeeper) -> BucketSide:
    from fusefs.objects.s3store import S3Store

    url = mission.s3 if arg == "s3" else arg
    if not url:
        raise UserError(f"{args.mission} has no [store] s3: give the bucket as s3://BUCKET/PREFIX")
    ours = other.hasher.s3  # the state side's store knows the endpoint its state dir remembers
    s3 = S3Store(url, mission.name, args.endpoint_url or (ours.endpoint_url if ours else None))
    started = time.monotonic()
    side = bucket_side(s3, other.space, arg)
    log.info("bucket listed and hashed in %.1f s", time.monotonic() - started)
    return side
