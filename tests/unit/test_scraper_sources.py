"""Sources of the reference scraper: the Overpass client against a local stub of the API
(recorded answers in tests/data/overpass/, no internet), the synthetic source, the shared rate
limit and the task descriptor."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from fusefs.model.mission import load_mission
from scraper.overpass import ATTRIBUTION, OverpassSource, normalise
from scraper.ratelimit import RateLimiter
from scraper.schema import COLUMNS, DescriptorError, TaskInfo, to_csv
from scraper.source import SourceError, Stopped
from scraper.synthetic import SyntheticSource, synthetic_rows
from tests.support.mounts import ROOT, write_mission
from tests.support.scraper_util import (
    COFFEE,
    OverpassStub,
    Reply,
    check_witness,
    default_reply,
    load_recorded,
)


@pytest.fixture
def descriptors(tmp_path: Path) -> dict[str, bytes]:
    """Every task's descriptor exactly as the mount serves it (the daemon's own codec)."""
    m = load_mission(write_mission(tmp_path / "m.toml", phrases=("coffee shop", "plumber")))
    return {m.space.rel(t): m.space.descriptor(t) for t in m.intent}


def task_of(descriptors: dict[str, bytes], rel: str) -> TaskInfo:
    return TaskInfo.parse(descriptors[rel])


def fetch(src: OverpassSource, task: TaskInfo) -> list:
    return src.fetch(task, threading.Event())


# -- the Overpass client -------------------------------------------------------------------
def test_query_shape_and_headers(stub: OverpassStub, descriptors: dict[str, bytes]) -> None:
    src = OverpassSource(stub.url, rate=0, retries=0, contact="ops@example.org")
    fetch(src, task_of(descriptors, COFFEE))
    [req] = stub.seen()
    assert req.path == "/api/interpreter"
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    ua = req.headers["User-Agent"]
    assert ua.startswith("missionfs-scrape/") and "ops@example.org" in ua
    lines = req.query.splitlines()
    # Exact decimals of the tile, as the mount writes them (no float drift: -74.00, not -74.0).
    assert lines[0] == "[out:json][timeout:25][bbox:40.71,-74.00,40.72,-73.99];"
    assert '  nwr[name~"coffee shop",i];' in lines
    assert any(
        line.endswith('~"^(coffee_shop)$",i];') and "amenity|shop|craft" in line for line in lines
    )
    assert '  nwr["amenity"="cafe"];' in lines  # the synonym table: coffee shop -> amenity=cafe
    assert lines[-1] == "out center tags;"


def test_query_escapes_regex_and_quotes(stub: OverpassStub) -> None:
    desc: dict[str, object] = {"lat": 1, "south": 1, "north": 2, "lon": 2, "west": 2, "east": 3}
    desc |= {"phrase": 'locksmith "24/7" (emergency)', "rel": "1/2/x.csv"}
    fetch(OverpassSource(stub.url, rate=0, retries=0), TaskInfo.parse(json.dumps(desc)))
    [req] = stub.seen()
    # ERE escapes ( and ) with a backslash; the QL string literal doubles it and escapes quotes.
    assert r'nwr[name~"locksmith \"24/7\" \\(emergency\\)",i];' in req.query


def test_normalisation_of_a_recorded_answer(
    stub: OverpassStub, descriptors: dict[str, bytes]
) -> None:
    task = task_of(descriptors, COFFEE)
    rows = fetch(OverpassSource(stub.url, rate=0, retries=0), task)
    by_id = {r.source_id: r for r in rows}
    # Which elements must be kept, decided from the recording itself: every way/relation (they
    # reach into the tile), and the nodes inside the half-open tile [south, north) x [west, east).
    elements = load_recorded("coffee_shop_40.71_-74.00.json")["elements"]
    expected = {
        f"{e['type']}/{e['id']}"
        for e in elements
        if e["type"] != "node"
        or (task.south <= e["lat"] < task.north and task.west <= e["lon"] < task.east)
    }
    assert set(by_id) == expected and len(rows) == len(expected)
    assert "node/7712345001" not in by_id  # on the north edge: the next tile's
    mott = by_id["node/4816375290"]
    assert (mott.source, mott.name, mott.category) == ("osm", "Mott Street Coffee", "amenity=cafe")
    assert (mott.lat, mott.lon) == ("40.7154306", "-73.9986342")  # exact text, not floats
    assert mott.address == "112 Mott Street, New York, NY 10013"
    assert (mott.phone, mott.website) == ("+1 212-555-0134", "https://mottstreetcoffee.example/")
    lumiere = by_id["node/6092816631"]
    assert lumiere.name == "Café Lumière" and lumiere.address == "48 Grand Street"
    assert (lumiere.phone, lumiere.website) == (
        "+1 646 555 0199",
        "https://cafelumiere.example/nyc",
    )
    assert (
        by_id["node/9876543210"].name == "" and by_id["node/9876543210"].category == "amenity=cafe"
    )
    assert by_id["node/11234509876"].category == "shop=hairdresser"  # matched by name only
    house = by_id["way/512873340"]
    assert (house.lat, house.lon) == ("40.7131774", "-73.9976542")  # the way's center
    assert house.address == "75 Mosco Street, New York, NY 10013"  # addr:full wins
    assert house.website == "http://chinatown-tea.example"  # from url
    # The CSV the worker writes: the mount accepts it and it round-trips, commas and quotes too.
    parsed = check_witness(to_csv(rows), COFFEE, {"osm"})
    assert [p["source_id"] for p in parsed] == [r.source_id for r in rows]
    assert {p["name"] for p in parsed} >= {
        "Chinatown Tea & Coffee House, Inc.",
        'Columbus Park "Kiosk"',
    }


def test_429_and_504_back_off_then_succeed(
    stub: OverpassStub, descriptors: dict[str, bytes]
) -> None:
    script = [
        Reply.recorded("rate_limited.html", 429, **{"Retry-After": "1"}),
        Reply.recorded("gateway_timeout.html", 504),
    ]
    stub.reply = lambda req: script.pop(0) if script else default_reply(req)
    src = OverpassSource(stub.url, rate=0, retries=3, backoff=0.05)
    rows = fetch(src, task_of(descriptors, COFFEE))
    reqs = stub.seen()
    assert len(reqs) == 3 and len(rows) == 6
    assert reqs[1].at - reqs[0].at >= 1.0  # the 429's Retry-After is honoured
    assert reqs[2].at - reqs[1].at >= 0.1  # exponential: 0.05 s, then 0.1 s
    assert reqs[2].query == reqs[0].query


def test_5xx_exhaustion_is_a_bounded_clear_error(
    stub: OverpassStub, descriptors: dict[str, bytes]
) -> None:
    stub.reply = lambda req: Reply.recorded("gateway_timeout.html", 504)
    src = OverpassSource(stub.url, rate=0, retries=2, backoff=0.01)
    with pytest.raises(SourceError) as e:
        fetch(src, task_of(descriptors, COFFEE))
    assert len(stub.seen()) == 3
    msg = str(e.value)
    assert "HTTP 504" in msg and stub.url in msg and "(after 3 attempts)" in msg
    assert "\n" not in msg


def test_malformed_json_is_a_clear_error(stub: OverpassStub, descriptors: dict[str, bytes]) -> None:
    stub.reply = lambda req: Reply.recorded("malformed.json")
    with pytest.raises(SourceError) as e:
        fetch(
            OverpassSource(stub.url, rate=0, retries=1, backoff=0.01), task_of(descriptors, COFFEE)
        )
    msg = str(e.value)
    assert msg.startswith(f"overpass: malformed JSON from {stub.url}: ") and "line 25" in msg
    assert "\n" not in msg and len(stub.seen()) == 2


def test_incomplete_answer_is_never_returned(
    stub: OverpassStub, descriptors: dict[str, bytes]
) -> None:
    """A 200 with a runtime-error remark carries partial data: retried, then an error."""
    stub.reply = lambda req: Reply.recorded("timeout_remark.json")
    with pytest.raises(SourceError, match="incomplete answer: runtime error: Query timed out"):
        fetch(
            OverpassSource(stub.url, rate=0, retries=1, backoff=0.01), task_of(descriptors, COFFEE)
        )
    assert len(stub.seen()) == 2


def test_bad_request_is_not_retried(stub: OverpassStub, descriptors: dict[str, bytes]) -> None:
    stub.reply = lambda req: Reply.recorded("bad_request.html", 400)
    with pytest.raises(SourceError) as e:
        fetch(
            OverpassSource(stub.url, rate=0, retries=3, backoff=0.01), task_of(descriptors, COFFEE)
        )
    assert len(stub.seen()) == 1
    assert str(e.value).startswith("overpass: HTTP 400") and "parse error: ';' expected" in str(
        e.value
    )


def test_unreachable_endpoint(descriptors: dict[str, bytes]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nobody listens there
    src = OverpassSource(
        f"http://127.0.0.1:{port}/api/interpreter", rate=0, retries=1, backoff=0.01
    )
    with pytest.raises(SourceError, match="refused"):
        fetch(src, task_of(descriptors, COFFEE))


def test_bad_endpoint_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OverpassSource("overpass-api.de/api/interpreter")


def test_normalise_refuses_foreign_json(descriptors: dict[str, bytes]) -> None:
    task = task_of(descriptors, COFFEE)
    with pytest.raises(SourceError, match="no 'elements' list"):
        normalise({"version": 0.6}, task, "2024-01-01T00:00:00Z")
    assert normalise(load_recorded("empty.json"), task, "2024-01-01T00:00:00Z") == []


# -- one rate limit per process --------------------------------------------------------------
def test_rate_limit_is_shared_by_threads() -> None:
    limiter, stop, times = RateLimiter(20.0), threading.Event(), []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(3):
            limiter.acquire(stop)
            with lock:
                times.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    times.sort()
    assert len(times) == 12
    for i, t in enumerate(times):  # request i never before start + i/rate, whatever the thread
        assert t - start >= i * 0.05 - 1e-6, (i, t - start)


def test_rate_limit_applies_to_concurrent_fetches(
    stub: OverpassStub, descriptors: dict[str, bytes]
) -> None:
    src = OverpassSource(stub.url, rate=10.0, retries=0)
    tasks = [task_of(descriptors, rel) for rel in sorted(descriptors)[:6]]
    start = time.monotonic()
    threads = [threading.Thread(target=fetch, args=(src, t)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    arrivals = sorted(r.at for r in stub.seen())
    assert len(arrivals) == 6
    for i, at in enumerate(arrivals):
        assert at - start >= i * 0.1 - 1e-6, (i, at - start)


def test_rate_limit_pause_and_stop() -> None:
    limiter, stop = RateLimiter(0.05), threading.Event()  # one request per 20 s
    limiter.acquire(stop)
    t0 = time.monotonic()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(Stopped):
        limiter.acquire(stop)  # would wait 20 s: a stop ends it at once
    assert time.monotonic() - t0 < 5
    free = RateLimiter(0)
    free.pause(0.2)
    t0 = time.monotonic()
    free.acquire(threading.Event())
    assert time.monotonic() - t0 >= 0.2


# -- the synthetic source -------------------------------------------------------------------
def test_synthetic_rows_are_deterministic_valid_and_inside_the_tile(
    descriptors: dict[str, bytes],
) -> None:
    counts = set()
    ids: set[str] = set()
    for rel, desc in descriptors.items():
        task = TaskInfo.parse(desc)
        a = SyntheticSource().fetch(task, threading.Event())
        b = synthetic_rows(task, a[0].scraped_at if a else "2024-01-01T00:00:00Z")
        assert a == b  # same task, same rows (only scraped_at is the time of scraping)
        check_witness(to_csv(a), rel, {"synthetic"})
        counts.add(len(a))
        ids |= {r.source_id for r in a}
    assert len(counts) > 2 and 0 in counts  # varied, including header-only "no results"
    assert len(ids) == sum(len(synthetic_rows(TaskInfo.parse(d), "")) for d in descriptors.values())


def test_synthetic_command_line(descriptors: dict[str, bytes], tmp_path: Path) -> None:
    desc = next(d for d in descriptors.values() if synthetic_rows(TaskInfo.parse(d), ""))
    cmd = [sys.executable, "-m", "scraper.synthetic"]
    out = subprocess.run(cmd, input=desc, capture_output=True, timeout=60, cwd=ROOT, check=True)
    task = TaskInfo.parse(desc)
    rows = check_witness(out.stdout, task.rel, {"synthetic"})
    assert [r["source_id"] for r in rows] == [p.source_id for p in synthetic_rows(task, "")]
    (tmp_path / "d.json").write_bytes(desc)
    again = subprocess.run(
        [*cmd, str(tmp_path / "d.json")], capture_output=True, timeout=60, cwd=ROOT
    )
    assert (
        again.returncode == 0
        and again.stdout.split(b"\n")[1:]
        and again.stdout.startswith(b",".join(c.encode() for c in COLUMNS))
    )
    bad = subprocess.run(cmd, input=b'{"lat": 1}', capture_output=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().count("\n") == 1 and "'phrase' missing" in bad.stderr.decode()


def test_descriptor_errors() -> None:
    with pytest.raises(DescriptorError, match="not JSON"):
        TaskInfo.parse(b"{nope")
    with pytest.raises(DescriptorError, match="'north' missing"):
        TaskInfo.parse(
            '{"phrase": "x", "rel": "a/b/x.csv", "lat": 1, "lon": 2, "south": 1, "west": 2, "east": 3}'
        )
    t = TaskInfo.parse(
        '{"phrase": "x", "rel": "1/2/x.csv", "lat": 1, "lon": 2, "south": 1, "west": 2, "north": 2, "east": 3}'
    )
    assert (
        t.north == Decimal(2)
        and t.contains(Decimal(1), Decimal(2))
        and not t.contains(Decimal(2), Decimal(2))
    )


def test_attribution_is_odbl() -> None:
    assert "OpenStreetMap contributors" in ATTRIBUTION and "ODbL" in ATTRIBUTION
