"""Helpers for the scraper tests: a local Overpass API stub, witness checks, worker processes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fusefs.model.witness import check_csv
from scraper.schema import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "overpass"
EXAMPLES = ROOT / "scraper" / "examples"
SCRAPER = [sys.executable, "-m", "scraper"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the server shuts down)

    @classmethod
    def recorded(cls, name: str, status: int | None = None, **headers: str) -> Reply:
        ctype = "application/json" if name.endswith(".json") else "text/html; charset=utf-8"
        code = status if status is not None else (200 if name.endswith(".json") else 500)
        return cls(code, (DATA / name).read_bytes(), {"Content-Type": ctype, **headers})


@dataclass
class Seen:
    """One request as the server saw it."""

    at: float
    path: str
    headers: dict[str, str]
    query: str  # the Overpass QL text (form field `data`)
    bbox: str  # "s,w,n,e" from the query's [bbox:...] setting, "" if absent
    tile: str  # "LAT/LON" (south/west) of that bbox


def default_reply(req: Seen) -> Reply:
    """Recorded answers by tile and phrase; an empty result for anything else."""
    if req.tile == "40.71/-74.00" and "coffee" in req.query:
        return Reply.recorded("coffee_shop_40.71_-74.00.json")
    if req.tile == "40.70/-74.02" and "plumber" in req.query:
        return Reply.recorded("plumber_40.70_-74.02.json")
    return Reply.recorded("empty.json")


class OverpassStub:
    """A ThreadingHTTPServer on 127.0.0.1 that answers like the Overpass API from recordings.

    `reply` decides the answer to each request (swap it in a test); `requests` records them.
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.reply: Callable[[Seen], Reply] = default_reply
        self.release = threading.Event()  # ends hanging requests
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                query = form.get("data", [""])[0]
                m = re.search(r"\[bbox:([^\]]*)\]", query)
                bbox = m.group(1) if m else ""
                tile = "/".join(bbox.split(",")[:2])
                seen = Seen(time.monotonic(), self.path, dict(self.headers), query, bbox, tile)
                with stub._lock:
                    stub.requests.append(seen)
                r = stub.reply(seen)
                if r.hang:
                    stub.release.wait(120)
                    return
                self.send_response(r.status)
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                self.wfile.write(r.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/interpreter"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def seen(self, tile: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if tile is None or r.tile == tile]


@contextlib.contextmanager
def overpass_stub() -> Iterator[OverpassStub]:
    stub = OverpassStub()
    stub._thread.start()
    try:
        yield stub
    finally:
        stub.release.set()
        stub.server.shutdown()
        stub.server.server_close()


def load_recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"), parse_float=Decimal)


# -- witnesses ---------------------------------------------------------------------------------
def check_witness(data: bytes, rel: str, sources: set[str]) -> list[dict[str, str]]:
    """A witness of the reference schema for task `rel`: the mount's CSV rules, our header,
    a known source, points inside the tile (edges as the grid: [south, north)), a UTC time."""
    check_csv(data)  # the mount's own well-formedness rules
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    header = data.split(b"\n", 1)[0].decode()
    assert tuple(header.split(",")) == COLUMNS, f"{rel}: header {header!r}"
    lat, lon = (Decimal(x) for x in rel.split("/")[:2])
    step = Decimal("0.01")
    for r in rows:
        assert r["source"] in sources, f"{rel}: source {r['source']!r}"
        assert r["source_id"], rel
        assert lat <= Decimal(r["lat"]) < lat + step, f"{rel}: lat {r['lat']}"
        assert lon <= Decimal(r["lon"]) < lon + step, f"{rel}: lon {r['lon']}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["scraped_at"]), r["scraped_at"]
    return rows


def tree_files(root: Path) -> set[str]:
    """Relative paths of the regular files under `root` (a view of the mount or a state dir)."""
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


# -- worker processes --------------------------------------------------------------------------
@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; killed by PID (with their process group) on the way out."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                p.wait(timeout=30)


def start(
    procs: list[subprocess.Popen[str]], cmd: list[str], cwd: Path = ROOT
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: a kill reaches the generator children too
    )
    procs.append(p)
    return p


def finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


COFFEE = "40.71/-74.00/coffee shop.csv"
PLUMBER = "40.70/-74.02/plumber.csv"
