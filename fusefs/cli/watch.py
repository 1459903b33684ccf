# layer: cli
"""`missionfs status TARGET --watch [--interval S]`: a live view of a mount or a state dir.

In a terminal the block of lines is redrawn in place (ANSI: cursor up to the block's first line,
erase to the end of the screen), with no curses dependency; when stdout is not a terminal, one
plain line per interval, for logs. Ctrl-C (SIGINT) is how one leaves it: exit status 0, cursor
restored. A closed pipe (`... --watch | head -3`) ends it with status 0 too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"


def add_options(status_parser: Any) -> None:
    """Add --watch/--interval to `missionfs status` and route --watch here."""
    status_parser.add_argument(
        "--watch", action="store_true", help="redraw counts, rates, queue and ETA until Ctrl-C"
    )
    status_parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (2)"
    )
    plain = status_parser.get_default("func")

    def route(args: argparse.Namespace) -> int:
        return watch(args) if args.watch else int(plain(args) or 0)

    status_parser.set_defaults(func=route)


def read_info(args: argparse.Namespace) -> dict[str, Any]:
    """What `missionfs status --json` prints: a mount's status file or the state dir's counts."""
    from fusefs.cli.common import UserError, hold_logged_claims, open_ws
    from fusefs.model.mission import load_mission

    target: Path = args.target
    if target.is_dir():
        if not os.path.ismount(target):
            raise UserError(f"{target} is a directory but not a missionfs mount")
        try:
            info: dict[str, Any] = json.loads((target / "status").read_text())
            return info
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {target}/status: {e}") from None
    args.quiet = True  # no progress bar under the live view
    ws = open_ws(args, load_mission(target), lock=False)
    try:
        hold_logged_claims(ws)
        info = ws.status.snapshot()
    finally:
        ws.close()
    return info


def render(info: dict[str, Any], rate_now: float | None) -> list[str]:
    """The lines of one frame."""
    from fusefs.engine.eta import human_duration

    c = info["counts"]
    total, done = c["intent"], c["done"]
    pct = 100.0 * done / total if total else 100.0
    width = 30
    filled = width * done // total if total else width
    pace = info.get("pace") or {}
    now = time.strftime("%H:%M:%S")
    lines = [
        f"{info['mission']}  {now}  ({'mounted' if info.get('pid') else 'state dir'})",
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done ({pct:.1f}%)",
        f"pending {c['pending']}  claimed {c['claimed']}  "
        f"claimed elsewhere {c.get('claimed_elsewhere', 0)}",
        f"rate {'-' if rate_now is None else f'{rate_now:.1f}'}/min now, "
        f"{pace.get('rate_per_minute', 0)}/min over 10 min  "
        f"ETA {human_duration(pace.get('eta_seconds')) if pace else '-'}",
    ]
    sync = info.get("sync") or {}
    if sync.get("enabled"):
        lines.append(
            f"s3: {sync.get('state')}; upload queue {sync.get('queue')}, "
            f"conflicts {sync.get('conflicts')}, errors {sync.get('errors')}"
        )
    errors = info.get("errors") or []
    lines.append(f"last errors ({len(errors)}):" if errors else "no recent errors")
    for err in errors[-3:]:
        when = time.strftime("%H:%M:%S", time.localtime(err.get("time", 0)))
        lines.append(f"  {when} {err.get('path')}: {err.get('error')}")
    return lines


def plain_line(info: dict[str, Any], rate_now: float | None) -> str:
    c, pace = info["counts"], info.get("pace") or {}
    sync = info.get("sync") or {}
    queue = f" queue={sync.get('queue')}" if sync.get("enabled") else ""
    rate = "-" if rate_now is None else f"{rate_now:.1f}"
    return (
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} done={c['done']}/{c['intent']} "
        f"pending={c['pending']} claimed={c['claimed']} rate={rate}/min{queue} "
        f"eta={pace.get('eta_seconds', '-')} errors={len(info.get('errors') or [])}"
    )


def watch(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> int:
    from fusefs.cli.common import UserError

    if args.interval <= 0:
        raise UserError("--interval must be a positive number of seconds")
    if args.json:
        raise UserError("--watch draws for people; for JSON, poll `missionfs status --json`")
    out = sys.stdout
    tty = out.isatty()
    drawn = 0
    last: tuple[float, int] | None = None
    try:
        if tty:
            out.write(HIDE)
        while True:
            info = read_info(args)
            now, done = time.monotonic(), info["counts"]["done"]
            rate = (done - last[1]) / (now - last[0]) * 60 if last and now > last[0] else None
            last = (now, done)
            if tty:
                cols = shutil.get_terminal_size().columns
                lines = [line[: cols - 1] for line in render(info, rate)]
                up = f"\x1b[{drawn}F\x1b[J" if drawn else ""
                out.write(up + "\n".join(lines) + "\n")
                drawn = len(lines)
            else:
                out.write(plain_line(info, rate) + "\n")
            out.flush()
            sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `... --watch | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        if tty:
            try:
                out.write(SHOW)
                out.flush()
            except OSError:
                pass
