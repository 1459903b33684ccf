"""`missionfs map`: PNG, SVG and HTML pictures of a real mount's state, looked at as a person
would (the PNG decoded, the HTML rendered by headless Chromium), bad input, --serve, and speed."""

from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pyroaring import BitMap

from fusefs.cli.mapfiles import frame_for, place
from fusefs.model.codec import Axis, TaskSpace
from fusefs.model.mission import load_mission
from fusefs.model.progressmap import (
    CLAIMED,
    COLOURS,
    CONFLICT,
    DONE,
    EMPTY,
    NAMES,
    OUTSIDE,
    PARTLY,
    PENDING,
    make_layout,
    raster,
)
from tests.support.mounts import MISSIONFS, ROOT, Mount, wait_for
from tests.support.pngread import read_png
from tests.support.s3_servers import free_port

CHROMIUM = shutil.which("chromium")
WIDTH = 700


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIONFS, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def commit(m: Mount, rel: str) -> None:
    tmp = m.mnt / "tmp" / f"w-{abs(hash(rel))}"
    tmp.write_text(f"name\n{rel}\n")
    os.rename(tmp, m.mnt / "done" / rel)


@pytest.fixture
def scene(mount: Mount) -> Iterator[tuple[Mount, dict[str, int]]]:
    """A mount with one tile of each state; the states expected per tile (lat/lon)."""
    m = mount
    commit(m, "40.70/-74.02/coffee shop.csv")
    commit(m, "40.70/-74.02/plumber.csv")  # both phrases: done
    commit(m, "40.71/-74.01/plumber.csv")  # one of two: partly done
    rel = "40.72/-73.99/coffee shop.csv"
    os.rename(m.mnt / "pending" / rel, m.mnt / "claimed" / rel)  # a live claim
    # A result that lost a race, kept where the sync engine keeps it (store.replace_with_winner;
    # test_fleet_view makes a real one through S3).
    kept = m.state / "conflicts" / "40.70/-74.00/plumber.other.csv"
    kept.parent.mkdir(parents=True)
    kept.write_text("name\nlost\n")
    expected = {"40.70/-74.02": DONE, "40.71/-74.01": PARTLY, "40.72/-73.99": CLAIMED}
    expected["40.70/-74.00"] = CONFLICT
    expected["40.72/-74.02"] = PENDING
    expected["40.71/-73.99"] = PENDING
    yield m, expected


def cell_centres(mission: Path) -> Callable[[str], tuple[int, int]]:
    """Pixel centre of a tile in the picture, from the map's documented geometry."""
    space = load_mission(mission).space
    fr, map_w, max_h = frame_for(space, WIDTH)
    lay = make_layout(space, map_w, max_h)
    r = raster(space, lay, BitMap(), BitMap(), BitMap(), BitMap())
    fr = place(fr, r)

    def centre(tile: str) -> tuple[int, int]:
        lat, lon = tile.split("/")
        row, col = space.lat.index(lat), space.lon.index(lon)
        assert row is not None and col is not None, tile
        x, y = lay.cell(row, col)
        return fr.map_x + x * lay.px + lay.px // 2, fr.map_y + y * lay.px + lay.px // 2

    return centre


def assert_colours(
    img: np.ndarray, centre: Callable[[str], tuple[int, int]], expected: dict[str, int]
) -> None:
    for tile, state in expected.items():
        x, y = centre(tile)
        got = tuple(int(v) for v in img[y, x])
        want = COLOURS[state]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 6, (
            f"{tile}: pixel {got} at ({x},{y}), expected {NAMES[state]} {want}"
        )


def test_png_shows_each_tile_state(scene: tuple[Mount, dict[str, int]], tmp_path: Path) -> None:
    m, expected = scene
    out = tmp_path / "map.png"
    res = run("map", str(m.mission), "--state", str(m.state), "-o", str(out), "--width", str(WIDTH))
    assert res.returncode == 0, res.stderr
    img = read_png(out)
    assert img.shape[1] == WIDTH
    centre = cell_centres(m.mission)
    assert_colours(img, centre, expected)
    # North is up: the 40.72 row is drawn above the 40.70 row.
    assert centre("40.72/-74.02")[1] < centre("40.70/-74.02")[1]
    # The legend shows every state's colour (swatches in the legend row).
    legend = {tuple(int(v) for v in px) for px in img[26 + 5, :]}
    for state in (CONFLICT, DONE, CLAIMED, PARTLY, PENDING, OUTSIDE):
        assert COLOURS[state] in legend


def test_svg_cells_say_their_state(scene: tuple[Mount, dict[str, int]], tmp_path: Path) -> None:
    m, expected = scene
    out = tmp_path / "map.svg"
    res = run("map", str(m.mnt), "-o", str(out))  # a mountpoint names its mission and state
    assert res.returncode == 0, res.stderr
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(out).getroot()
    fills = {}
    for rect in root.iter(f"{ns}rect"):
        el = rect.find(f"{ns}title")
        if el is not None and el.text:
            fills[el.text.split(":")[0]] = (rect.get("fill"), el.text)
    assert len(fills) == 12  # 3 x 4 tiles, one cell each
    for tile, state in expected.items():
        fill, label = fills[tile]
        assert fill == "#{:02x}{:02x}{:02x}".format(*COLOURS[state]), label
        assert NAMES[state] in label
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert any("done 3/24" in t and "claimed 1" in t and "conflicts 1" in t for t in texts), texts
    assert "40.72" in texts and "-73.99" in texts  # latitude and longitude ticks


def screenshot(url: str, out: Path, tmp: Path, size: tuple[int, int] = (WIDTH, 600)) -> np.ndarray:
    """Headless Chromium opens the page and takes a screenshot, as a person would look."""
    assert CHROMIUM, "chromium is needed (scripts/setup.sh installs it)"
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={size[0]},{size[1]}",
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.exists(), res.stderr[-2000:]
    return read_png(out)


def tooltip(url: str, tmp: Path) -> str:
    """The text of the page's tooltip after Chromium ran the page (--dump-dom)."""
    assert CHROMIUM
    profile = tmp / "chromium-dom"
    profile.mkdir(exist_ok=True)
    res = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    m = re.search(r'<div id="tip" style="display: block;[^"]*">(.*?)</div>', res.stdout, re.S)
    assert m, res.stdout[-1500:] + res.stderr[-1500:]
    return html.unescape(m.group(1))


def test_html_page_in_chromium(scene: tuple[Mount, dict[str, int]], tmp_path: Path) -> None:
    m, expected = scene
    out = tmp_path / "map.html"
    res = run("map", str(m.mission), "--state", str(m.state), "-o", str(out), "--width", str(WIDTH))
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert "http://" not in page.replace('"http://www.w3.org', "") and "https://" not in page
    img = screenshot(out.as_uri(), tmp_path / "shot.png", tmp_path)
    assert_colours(img, cell_centres(m.mission), expected)
    # The hover: the page opened on one tile (#tile=LAT/LON) shows that tile's tooltip, which
    # lists its tasks and their states; the DOM as Chromium has it after running the page.
    for tile, lines in {
        "40.72/-73.99": ["40.72 / -73.99: claimed", "coffee shop: claimed", "plumber: pending"],
        "40.71/-74.01": ["partly done", "done 1/2", "coffee shop: pending", "plumber: done"],
    }.items():
        tip = tooltip(f"{out.as_uri()}#tile={tile}", tmp_path)
        for line in lines:
            assert line in tip, tip


def test_served_page_follows_the_mount(scene: tuple[Mount, dict[str, int]], tmp_path: Path) -> None:
    m, _ = scene
    port = free_port()
    proc = subprocess.Popen(
        [
            *MISSIONFS,
            *("map", str(m.mission), "--state", str(m.state), "--width", str(WIDTH)),
            *("--serve", f"127.0.0.1:{port}", "--interval", "0.5"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def state_of(tile_x: int, tile_y: int) -> int | None:
            try:
                with urllib.request.urlopen(f"{url}/map.json", timeout=10) as r:
                    data = json.loads(r.read())
            except OSError:
                return None
            import base64

            cells = base64.b64decode(data["state"])
            return cells[tile_y * data["layout"]["w"] + tile_x]

        space = load_mission(m.mission).space
        lay = make_layout(space, *frame_for(space, WIDTH)[1:])
        x, y = lay.cell(2, 0)  # 40.72/-74.02, pending
        wait_for(lambda: state_of(x, y) == PENDING, timeout=60, what="the server answers")
        img = screenshot(url + "/", tmp_path / "served.png", tmp_path)
        assert_colours(img, cell_centres(m.mission), {"40.72/-74.02": PENDING})
        commit(m, "40.72/-74.02/coffee shop.csv")
        commit(m, "40.72/-74.02/plumber.csv")
        wait_for(lambda: state_of(x, y) == DONE, timeout=60, what="the map follows the mount")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 130, proc.stderr.read() if proc.stderr else ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("-o", "{tmp}/map.jpg"), ".png, .svg or .html"),
        (("-o", "{tmp}/nodir/map.png"), "no such directory"),
        (("-o", "{tmp}/afile/map.png"), "no such directory"),
        (("-o", "{tmp}/map.png", "--width", "10"), "--width 10"),
        ((), "-o FILE"),
        (("--serve", "nonsense"), "HOST:PORT"),
        (("-o", "/proc/map.png"), "cannot write"),  # a directory nobody creates files in
    ],
)
def test_map_refuses_bad_input(
    mission: Path, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in args]
    res = run("map", str(mission), "--state", str(tmp_path / "state"), *argv)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("missionfs: "), res.stderr
    assert needle in res.stderr, res.stderr


def test_map_of_a_missing_mission(tmp_path: Path) -> None:
    res = run("map", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "m.png"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("missionfs: ") and "no such mission file" in res.stderr
    res = run("map", str(tmp_path), "-o", str(tmp_path / "m.png"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("missionfs: ") and "not a missionfs mount" in res.stderr


def test_aggregated_cells_count_every_task() -> None:
    """A grid larger than the picture: each cell sums its block of tiles; states follow."""
    space = TaskSpace(Axis(0, 1, 600, 0), Axis(0, 1, 900, 0), ("a", "b"))
    lay = make_layout(space, 300, 300)
    assert (lay.w, lay.h) == (300, 200) and not lay.single_tiles
    rng = random.Random(7)
    intent = BitMap()
    intent.add_range(0, space.size - space.row_size * 3)  # the 3 northmost rows: not planned
    fact = BitMap(rng.sample(range(space.size), 20_000))
    busy = BitMap(rng.sample(range(space.size), 3_000))
    conflicts = BitMap(rng.sample(range(space.size), 30))
    r = raster(space, lay, intent, fact, busy, conflicts)
    # The same counts, the slow way, for a sample of cells.
    for x, y in [(0, 0), (299, 199), (150, 100), (7, 190), (250, 3)]:
        (r0, r1), (c0, c1) = lay.tile_rows(y), lay.tile_cols(x)
        tasks = [
            space.task_id(row, col, p)
            for row in range(r0, r1)
            for col in range(c0, c1)
            for p in range(2)
        ]
        i = y * lay.w + x
        assert r.counts["intent"][i] == sum(t in intent for t in tasks)
        assert r.counts["done"][i] == sum(t in intent and t in fact for t in tasks)
        assert r.counts["outside"][i] == sum(t in fact and t not in intent for t in tasks)
        assert r.counts["conflict"][i] == sum(t in conflicts for t in tasks)
    assert int(r.counts["intent"].sum()) == len(intent)
    # north is at the top: the unplanned last rows are in the first picture row
    top = r.state[0]
    assert set(top.tolist()) <= {EMPTY, OUTSIDE, CONFLICT}
    assert OUTSIDE in top.tolist() or CONFLICT in top.tolist() or set(top.tolist()) == {EMPTY}


def test_ten_million_tasks_render_in_seconds(tmp_path: Path) -> None:
    space = TaskSpace(Axis(0, 1, 1000, 2), Axis(0, 1, 1000, 2), tuple(f"p{i}" for i in range(10)))
    intent = BitMap()
    intent.add_range(0, space.size)
    fact = BitMap()
    fact.add_range(0, space.size // 3)
    fact |= BitMap(random.Random(1).sample(range(space.size), 300_000))
    t0 = time.monotonic()
    _, map_w, max_h = frame_for(space, 900)
    r = raster(space, make_layout(space, map_w, max_h), intent, fact, BitMap(), BitMap())
    elapsed = time.monotonic() - t0
    assert r.totals["intent"] == 10_000_000 and int(r.counts["done"].sum()) == len(fact)
    assert elapsed < 30, f"{elapsed:.1f} s"  # about 2-3 s on a busy 2-core machine
    assert r.state[-1, 0] == DONE  # the first third (southern rows) is done
    # Too many cells for one <rect> each: the SVG embeds the map as a PNG, the PNG writer's
    # pixels decode to the same states.
    from fusefs.cli.mapfiles import png_bytes, svg_text
    from fusefs.model.progressmap import rgb

    fr = place(frame_for(space, 900)[0], r)
    svg = ET.fromstring(svg_text(space, r, fr, "big", "now"))
    images = list(svg.iter("{http://www.w3.org/2000/svg}image"))
    assert len(images) == 1 and not list(svg.iter("{http://www.w3.org/2000/svg}title"))
    png = tmp_path / "cells.png"
    png.write_bytes(png_bytes(rgb(r)))
    cells = read_png(png)
    assert (cells == np.array(COLOURS, dtype=np.uint8)[r.state]).all()
    assert {int(v) for v in np.unique(r.state)} == {DONE, PARTLY, PENDING}
