# layer: cli
"""`missionfs map MISSION.toml|MNT -o FILE [--state DIR] [--width PX]`, or `--serve HOST:PORT`.

The state is read from the state dir the way `missionfs status MISSION.toml` reads it (works
beside a running mount: its claims come from STATE/claims.log), plus the results that lost a
race, kept under STATE/conflicts/. `--serve` answers `/` with the page and `/map.json` with a
freshly computed map, which the page polls: a page opened from a file:// URL cannot read a
mount's files, so a small loopback HTTP server is the simple way for a browser to follow one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.mission import load_mission

FORMATS = (".png", ".svg", ".html")
MIN_WIDTH, MAX_WIDTH = 200, 8000


def add_parser(sub: Any) -> None:
    """Register `missionfs map`."""
    p = sub.add_parser("map", help="draw the mission's progress as a PNG, SVG or HTML map")
    p.add_argument("mission", type=Path, help="MISSION.toml, or a mountpoint")
    p.add_argument("-o", "--output", type=Path, help="FILE.png, FILE.svg or FILE.html")
    p.add_argument("--state", type=Path, help="state directory (default: as for mount)")
    p.add_argument("--endpoint-url")
    p.add_argument("--width", type=int, default=900, help="picture width in pixels (900)")
    p.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="serve the HTML page at http://HOST:PORT/; it redraws from the state dir "
        "every --interval seconds (use a loopback address)",
    )
    p.add_argument("--interval", type=float, default=5.0, help="page refresh with --serve (5)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_map)


def cmd_map(args: argparse.Namespace) -> int:
    from fusefs.cli.common import UserError

    if args.output is None and not args.serve:
        raise UserError("map: give -o FILE.png|FILE.svg|FILE.html, or --serve HOST:PORT")
    if args.output is not None and args.output.suffix.lower() not in FORMATS:
        raise UserError(f"{args.output}: the map is written as .png, .svg or .html")
    if not MIN_WIDTH <= args.width <= MAX_WIDTH:
        raise UserError(f"--width {args.width}: use {MIN_WIDTH} to {MAX_WIDTH} pixels")
    if args.interval <= 0:
        raise UserError("--interval must be a positive number of seconds")
    address = _address(args.serve) if args.serve else None
    if args.mission.is_dir():
        args.mission, args.state = _of_mount(args.mission)
    mission = load_mission(args.mission)
    if args.output is not None:
        out: Path = args.output
        if not out.parent.is_dir():
            raise UserError(f"{out}: no such directory {out.parent}")
        t0 = time.monotonic()
        body = render(args, mission, out.suffix.lower())
        _write(out, body)
        if not args.quiet:
            print(f"missionfs: map written to {out} in {time.monotonic() - t0:.2f} s")
    if address is not None:
        serve(args, mission, address)
    return 0


def _of_mount(mnt: Path) -> tuple[Path, Path]:
    """(mission file, state dir) of a mountpoint, from its status file and the state dir."""
    from fusefs.cli.common import UserError
    from fusefs.engine.workspace import remembered_mission

    if not os.path.ismount(mnt):
        raise UserError(f"{mnt} is a directory but not a missionfs mount")
    try:
        state = Path(json.loads((mnt / "status").read_text())["state_dir"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read {mnt}/status: {e}") from None
    mission = remembered_mission(state)
    if mission is None:
        raise UserError(f"cannot tell the mission of {mnt}: give MISSION.toml --state {state}")
    return mission, state


def _address(text: str) -> tuple[str, int]:
    from fusefs.cli.common import UserError

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--serve {text!r}: use HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def _write(out: Path, body: bytes) -> None:
    """Write atomically (a browser polling the file never sees half a picture)."""
    from fusefs.cli.common import UserError

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None


def snapshot(args: argparse.Namespace, mission: Any) -> tuple[TaskSpace, Any]:
    """The raster of the state dir now (see progressmap.raster)."""
    from fusefs.cli.common import hold_logged_claims, open_ws
    from fusefs.cli.mapfiles import frame_for
    from fusefs.model.progressmap import make_layout, raster

    ws = open_ws(args, mission, lock=False)
    try:
        hold_logged_claims(ws)
        st = ws.state
        space = st.space
        conflicts = conflict_tasks(space, ws.store.layout.conflicts)
        _, map_w, max_h = frame_for(space, args.width)
        lay = make_layout(space, map_w, max_h)
        return space, raster(space, lay, st.intent, st.fact, st.claimed | st.foreign, conflicts)
    finally:
        ws.close()


def render(args: argparse.Namespace, mission: Any, fmt: str) -> bytes:
    from fusefs.cli.mapfiles import (
        frame_for,
        html_text,
        map_json,
        picture,
        place,
        png_bytes,
        svg_text,
    )

    space, r = snapshot(args, mission)
    fr = place(frame_for(space, args.width)[0], r)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if fmt == ".png":
        return png_bytes(picture(space, r, fr, mission.name, when))
    if fmt == ".svg":
        return svg_text(space, r, fr, mission.name, when).encode()
    return html_text(map_json(space, r, fr, mission.name, when), None).encode()


def conflict_tasks(space: TaskSpace, root: Path) -> BitMap:
    """Tasks with a result kept under STATE/conflicts/LAT/LON/PHRASE.WORKER.csv (store.py)."""
    out = BitMap()
    if not root.is_dir():
        return out
    stems = [(name.removesuffix(".csv") + ".", name) for name in space.phrase_names]
    for dirpath, _, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for f in files:
            for stem, name in stems:
                if f.startswith(stem) and f.endswith(".csv"):
                    try:
                        out.add(space.parse_rel(f"{rel_dir}/{name}"))
                    except OutOfPlan:
                        pass
                    break
    return out


def ipaddress_is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace, mission: Any, address: tuple[str, int]) -> None:
    """Serve the page and /map.json until interrupted (Ctrl-C ends it with status 130)."""
    from fusefs.cli.common import UserError
    from fusefs.cli.mapfiles import frame_for, html_text, map_json, place
    from fusefs.model.mission import MissionError

    def data() -> dict[str, Any]:
        space, r = snapshot(args, mission)
        fr = place(frame_for(space, args.width)[0], r)
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return map_json(space, r, fr, mission.name, when)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    body, kind = html_text(data(), args.interval).encode(), "text/html"
                elif path == "/map.json":
                    body, kind = json.dumps(data()).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
            except (UserError, MissionError) as e:  # e.g. the state dir went away: say so
                self.send_error(503, str(e))
                return
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: Any) -> None:  # quiet: one line per poll is noise
            pass

    try:
        server = ThreadingHTTPServer(address, Handler)
    except OSError as e:
        raise UserError(f"--serve {address[0]}:{address[1]}: {e.strerror}") from None
    if not args.quiet:
        print(f"missionfs: map served at http://{address[0]}:{address[1]}/", flush=True)
    if not ipaddress_is_loopback(address[0]):
        print(
            f"missionfs: warning: {address[0]} is not a loopback address; the map server has no "
            "authentication",
            file=sys.stderr,
        )
    with server:
        try:
            server.serve_forever()
        finally:
            sys.stdout.flush()
