# layer: cli
"""Writing a progress map (progressmap.Raster) as PNG, SVG or a self-contained HTML page.

All three share one geometry (`Frame`): the title with counts and the time on top, the legend
under it, the map, latitude ticks on the left and longitude ticks below. The PNG is written with
zlib + struct and drawn with a built-in 3x5 pixel font (upper case, digits, a few signs), so the
map needs no imaging library; the HTML page draws the same picture on a canvas.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import numpy.typing as npt

from fusefs.model.codec import TaskSpace
from fusefs.model.progressmap import COLOURS, GRID_PX, NAMES, TASK_LETTERS, Raster, rgb, ticks

TITLE_Y, LEGEND_Y, MAP_Y = 8, 26, 48
CHAR_W, SCALE = 8, 2  # advance of one character in pixels; font pixels per glyph pixel
TEXT = (0x22, 0x22, 0x22)

# 3x5 glyphs, rows top to bottom, "1" = ink.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101",
    "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    " ": "000000000000000", ".": "000000000000010", "-": "000000111000000",
    "/": "001001010100100", "(": "001010010010001", ")": "100010010010100",
    "%": "101001010100101", ":": "000010000010000", ",": "000000000010100",
    "_": "000000000000111", "+": "000010111010000", "=": "000111000111000",
    "?": "111001010000010", "#": "101111101111101",
}  # fmt: skip


@dataclass(frozen=True)
class Frame:
    """Where things go in the picture, in pixels."""

    width: int
    height: int
    map_x: int
    map_y: int
    map_w: int
    map_h: int


def frame_for(space: TaskSpace, width: int) -> tuple[Frame, int, int]:
    """The frame for a picture `width` pixels wide; also (map width, max map height) budgets."""
    label = max(len(space.lat.name(0)), len(space.lat.name(space.lat.n - 1)))
    left = 12 + label * CHAR_W
    map_w = max(8, width - left - 16)
    return Frame(width, 0, left, MAP_Y, map_w, 0), map_w, map_w


def place(fr: Frame, r: Raster) -> Frame:
    lay = r.layout
    mw, mh = lay.w * lay.px, lay.h * lay.px
    return Frame(fr.width, MAP_Y + mh + 30, fr.map_x, MAP_Y, mw, mh)


def title(name: str, r: Raster, when: str) -> str:
    t = r.totals
    planned = t["intent"]
    pct = 100.0 * t["done"] / planned if planned else 100.0
    return (
        f"{name}  done {t['done']}/{planned} ({pct:.1f}%)  claimed {t['claimed']}  "
        f"pending {t['pending']}  conflicts {t['conflict']}  {when}"
    )


def tick_labels(space: TaskSpace, r: Raster, fr: Frame) -> tuple[list[Any], list[Any]]:
    """([(y px, label)], [(x px, label)]): latitudes at the left, longitudes below."""
    lay, px = r.layout, r.layout.px
    lat_t = ticks(lay.rows, lay.h, max(2, fr.map_h // 40))
    lon_label = max(len(space.lon.name(0)), len(space.lon.name(space.lon.n - 1)))
    lon_t = ticks(lay.cols, lay.w, max(2, fr.map_w // ((lon_label + 2) * CHAR_W)))
    ys = []
    for row, y in lat_t:
        yy = lay.h - 1 - y if lay.flip_y else y
        ys.append((fr.map_y + yy * px + px // 2, space.lat.name(row)))
    xs = []
    for col, x in lon_t:
        xx = lay.w - 1 - x if lay.flip_x else x
        xs.append((fr.map_x + xx * px + px // 2, space.lon.name(col)))
    return ys, xs


def hex_colour(c: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


# -- PNG ----------------------------------------------------------------------------------------
def _text(img: npt.NDArray[np.uint8], x: int, y: int, text: str) -> None:
    for ch in text.upper():
        glyph = _FONT.get(ch, _FONT["?"])
        for i, bit in enumerate(glyph):
            if bit == "1":
                gy, gx = y + (i // 3) * SCALE, x + (i % 3) * SCALE
                if (
                    gy >= 0
                    and gy + SCALE <= img.shape[0]
                    and gx >= 0
                    and gx + SCALE <= img.shape[1]
                ):
                    img[gy : gy + SCALE, gx : gx + SCALE] = TEXT
        x += CHAR_W


def picture(space: TaskSpace, r: Raster, fr: Frame, name: str, when: str) -> npt.NDArray[np.uint8]:
    """The whole picture as an RGB array (the PNG's pixels)."""
    img = np.full((fr.height, fr.width, 3), 255, dtype=np.uint8)
    _text(img, 8, TITLE_Y, title(name, r, when))
    x = 8
    for colour, label in zip(COLOURS[:-1], NAMES[:-1], strict=True):
        img[LEGEND_Y - 1 : LEGEND_Y + 11, x - 1 : x + 11] = TEXT
        img[LEGEND_Y : LEGEND_Y + 10, x : x + 10] = colour
        _text(img, x + 14, LEGEND_Y, label)
        x += 14 + len(label) * CHAR_W + 14
    img[fr.map_y : fr.map_y + fr.map_h, fr.map_x : fr.map_x + fr.map_w] = rgb(r)
    ys, xs = tick_labels(space, r, fr)
    for y, label in ys:
        img[y, fr.map_x - 5 : fr.map_x - 1] = TEXT
        _text(img, fr.map_x - 7 - len(label) * CHAR_W, y - 5, label)
    for x, label in xs:
        img[fr.map_y + fr.map_h + 1 : fr.map_y + fr.map_h + 5, x] = TEXT
        _text(img, x - len(label) * CHAR_W // 2, fr.map_y + fr.map_h + 8, label)
    return img


def png_bytes(img: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit RGB PNG: every scanline with filter 0, one zlib stream."""
    h, w, _ = img.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 1:] = img.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            chunk(b"IEND", b""),
        )
    )


# -- SVG ----------------------------------------------------------------------------------------
SVG_RECTS = 40_000
HOVER_COUNTS = 1_500_000  # numbers embedded for the HTML hover (5 per cell), about 8 MiB  # cells drawn as <rect> up to this many; above, the map is an embedded PNG


def svg_text(space: TaskSpace, r: Raster, fr: Frame, name: str, when: str) -> str:
    hexes = [hex_colour(c) for c in COLOURS]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{fr.width}" height="{fr.height}" '
        f'viewBox="0 0 {fr.width} {fr.height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{fr.width}" height="{fr.height}" fill="#ffffff"/>',
        f'<text x="8" y="{TITLE_Y + 10}" font-weight="bold">{escape(title(name, r, when))}</text>',
    ]
    x = 8
    for colour, label in zip(hexes[:-1], NAMES[:-1], strict=True):
        out.append(
            f'<rect x="{x}" y="{LEGEND_Y}" width="10" height="10" fill="{colour}" stroke="#222"/>'
            f'<text x="{x + 14}" y="{LEGEND_Y + 10}">{escape(label)}</text>'
        )
        x += 14 + len(label) * CHAR_W + 14
    lay, px = r.layout, r.layout.px
    if lay.h * lay.w <= SVG_RECTS:
        out.append('<g class="map" shape-rendering="crispEdges">')
        edge = ' stroke="#ffffff"' if px >= GRID_PX else ""
        for y in range(lay.h):
            for x in range(lay.w):
                s = int(r.state[y, x])
                out.append(
                    f'<rect x="{fr.map_x + x * px}" y="{fr.map_y + y * px}" width="{px}" '
                    f'height="{px}" fill="{hexes[s]}"{edge} data-x="{x}" data-y="{y}">'
                    f"<title>{escape(cell_label(space, r, x, y))}</title></rect>"
                )
        out.append("</g>")
    else:
        data = base64.b64encode(png_bytes(rgb(r))).decode()
        out.append(
            f'<image x="{fr.map_x}" y="{fr.map_y}" width="{fr.map_w}" height="{fr.map_h}" '
            f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>'
        )
    ys, xs = tick_labels(space, r, fr)
    for y, label in ys:
        out.append(
            f'<line x1="{fr.map_x - 5}" y1="{y}" x2="{fr.map_x - 1}" y2="{y}" stroke="#222"/>'
            f'<text x="{fr.map_x - 7}" y="{y + 4}" text-anchor="end">{label}</text>'
        )
    bottom = fr.map_y + fr.map_h
    for x, label in xs:
        out.append(
            f'<line x1="{x}" y1="{bottom + 1}" x2="{x}" y2="{bottom + 5}" stroke="#222"/>'
            f'<text x="{x}" y="{bottom + 18}" text-anchor="middle">{label}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cell_label(space: TaskSpace, r: Raster, x: int, y: int) -> str:
    """What a cell covers and holds, as its tooltip says."""
    lay = r.layout
    (r0, r1), (c0, c1) = lay.tile_rows(y), lay.tile_cols(x)
    lat = space.lat.name(r0) if r1 - r0 == 1 else f"{space.lat.name(r0)}..{space.lat.name(r1 - 1)}"
    lon = space.lon.name(c0) if c1 - c0 == 1 else f"{space.lon.name(c0)}..{space.lon.name(c1 - 1)}"
    i = y * lay.w + x
    c = {k: int(v[i]) for k, v in r.counts.items()}
    return (
        f"{lat}/{lon}: {NAMES[int(r.state[y, x])]}; done {c['done']}/{c['intent']}, "
        f"claimed {c['claimed']}, conflicts {c['conflict']}, outside the plan {c['outside']}"
    )


# -- HTML ---------------------------------------------------------------------------------------
def map_json(space: TaskSpace, r: Raster, fr: Frame, name: str, when: str) -> dict[str, Any]:
    """Everything the page draws; also what `--serve` answers at /map.json."""
    lay = r.layout
    counts = np.stack(
        [
            r.counts[k].astype(np.uint32)
            for k in ("intent", "done", "claimed", "conflict", "outside")
        ]
    )
    ys, xs = tick_labels(space, r, fr)
    return {
        "title": title(name, r, when),
        "totals": r.totals,
        "frame": fr.__dict__,
        "layout": lay.__dict__,
        "state": base64.b64encode(r.state.tobytes()).decode(),
        # per-cell counts for the hover, unless they would make the page huge (then states only)
        "counts": base64.b64encode(counts.tobytes()).decode()
        if counts.size <= HOVER_COUNTS
        else None,
        "letters": r.task_letters,
        "lat": _axis(space.lat),
        "lon": _axis(space.lon),
        "phrases": list(space.phrases),
        "ticks": {"lat": ys, "lon": xs},
    }


def _axis(axis: Any) -> dict[str, int]:
    return {"start": axis.start, "step": axis.step, "n": axis.n, "scale": axis.scale}


def html_text(data: dict[str, Any], refresh: float | None) -> str:
    """A self-contained page (no network) drawing `data`; with `refresh`, it polls
    ./map.json every `refresh` seconds (the page served by `missionfs map --serve`)."""
    config = {
        "colours": [hex_colour(c) for c in COLOURS],
        "names": list(NAMES),
        "letters": TASK_LETTERS,
        "refresh": refresh,
        "gridPx": GRID_PX,
        "geometry": {"titleY": TITLE_Y, "legendY": LEGEND_Y, "charW": CHAR_W},
    }
    payload = json.dumps(data).replace("</", "<\\/")
    return (
        _PAGE.replace("@TITLE@", escape(data["title"]))
        .replace("@CONFIG@", json.dumps(config))
        .replace("@DATA@", payload)
    )


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body { margin: 0; background: #fff; font: 12px sans-serif; }
#map { display: block; }
#tip { position: absolute; display: none; background: #fffff0; border: 1px solid #444;
       padding: 4px 6px; white-space: pre; pointer-events: none; }
</style></head>
<body><canvas id="map"></canvas><div id="tip"></div>
<script>
"use strict";
const CONFIG = @CONFIG@;
let DATA = @DATA@;
function bytes(b64) { const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
function coord(ax, i) { return ((ax.start + i * ax.step) / 10 ** ax.scale).toFixed(ax.scale); }
function draw() {
  const f = DATA.frame, L = DATA.layout, px = L.px, g = CONFIG.geometry;
  const cv = document.getElementById("map"), cx = cv.getContext("2d");
  cv.width = f.width; cv.height = f.height;
  cx.fillStyle = "#fff"; cx.fillRect(0, 0, f.width, f.height);
  cx.fillStyle = "#222"; cx.font = "bold 12px sans-serif"; cx.textBaseline = "top";
  cx.fillText(DATA.title, 8, g.titleY); cx.font = "12px sans-serif";
  let x = 8;
  for (let s = 0; s < CONFIG.names.length - 1; s++) {
    cx.fillStyle = "#222"; cx.fillRect(x - 1, g.legendY - 1, 12, 12);
    cx.fillStyle = CONFIG.colours[s]; cx.fillRect(x, g.legendY, 10, 10);
    cx.fillStyle = "#222"; cx.fillText(CONFIG.names[s], x + 14, g.legendY);
    x += 14 + cx.measureText(CONFIG.names[s]).width + 20;
  }
  const st = bytes(DATA.state), img = cx.createImageData(L.w * px, L.h * px);
  const rgb = CONFIG.colours.map(c => [1, 3, 5].map(i => parseInt(c.substr(i, 2), 16)));
  for (let y = 0; y < L.h * px; y++) for (let xx = 0; xx < L.w * px; xx++) {
    const line = px >= CONFIG.gridPx && (y % px === px - 1 || xx % px === px - 1);
    const c = line ? [255, 255, 255] : rgb[st[Math.floor(y / px) * L.w + Math.floor(xx / px)]];
    const o = 4 * (y * L.w * px + xx);
    img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
  }
  cx.putImageData(img, f.map_x, f.map_y);
  cx.fillStyle = "#222"; cx.textAlign = "right"; cx.textBaseline = "middle";
  for (const [y, label] of DATA.ticks.lat) {
    cx.fillRect(f.map_x - 5, y, 4, 1); cx.fillText(label, f.map_x - 7, y);
  }
  cx.textAlign = "center"; cx.textBaseline = "top";
  for (const [x, label] of DATA.ticks.lon) {
    cx.fillRect(x, f.map_y + f.map_h + 1, 1, 4); cx.fillText(label, x, f.map_y + f.map_h + 8);
  }
  document.title = DATA.title;
}
function tileRange(i, n, cells, flip) {
  const ii = flip ? cells - 1 - i : i;
  return [Math.ceil(ii * n / cells), Math.ceil((ii + 1) * n / cells)];
}
function describe(x, y) {
  const L = DATA.layout, cells = L.w * L.h, i = y * L.w + x;
  const counts = DATA.counts ? new Uint32Array(bytes(DATA.counts).buffer) : null;
  const [r0, r1] = tileRange(y, L.rows, L.h, L.flip_y), [c0, c1] = tileRange(x, L.cols, L.w, L.flip_x);
  const lat = r1 - r0 === 1 ? coord(DATA.lat, r0) : coord(DATA.lat, r0) + ".." + coord(DATA.lat, r1 - 1);
  const lon = c1 - c0 === 1 ? coord(DATA.lon, c0) : coord(DATA.lon, c0) + ".." + coord(DATA.lon, c1 - 1);
  const st = bytes(DATA.state)[i];
  let out = lat + " / " + lon + ": " + CONFIG.names[st];
  if (counts) out += "\\n" + "done " + counts[cells + i] + "/" + counts[i] + ", claimed " + counts[2 * cells + i] +
    ", conflicts " + counts[3 * cells + i] + ", outside the plan " + counts[4 * cells + i];
  if (DATA.letters && r1 - r0 === 1 && c1 - c0 === 1) {
    const n = DATA.phrases.length, base = (r0 * L.cols + c0) * n;
    const words = {"!": "conflict", "d": "done", "c": "claimed", ".": "pending",
                   "o": "done, outside the plan", "x": "not planned"};
    for (let p = 0; p < n; p++) out += "\\n  " + DATA.phrases[p] + ": " + words[DATA.letters[base + p]];
  }
  return out;
}
document.getElementById("map").addEventListener("mousemove", ev => {
  const f = DATA.frame, L = DATA.layout, tip = document.getElementById("tip");
  const x = Math.floor((ev.offsetX - f.map_x) / L.px), y = Math.floor((ev.offsetY - f.map_y) / L.px);
  if (x < 0 || y < 0 || x >= L.w || y >= L.h) { tip.style.display = "none"; return; }
  tip.textContent = describe(x, y); tip.style.display = "block";
  tip.style.left = (ev.pageX + 12) + "px"; tip.style.top = (ev.pageY + 12) + "px";
});
function showTile(spec) {
  // `page.html#tile=LAT/LON`: open with that tile's tooltip shown (a link to one tile).
  const [lat, lon] = decodeURIComponent(spec).split("/"), L = DATA.layout, f = DATA.frame;
  const index = (ax, v) => Math.round((parseFloat(v) * 10 ** ax.scale - ax.start) / ax.step);
  const row = index(DATA.lat, lat), col = index(DATA.lon, lon);
  if (!(row >= 0 && row < L.rows && col >= 0 && col < L.cols)) return;
  let y = Math.floor(row * L.h / L.rows), x = Math.floor(col * L.w / L.cols);
  if (L.flip_y) y = L.h - 1 - y;
  if (L.flip_x) x = L.w - 1 - x;
  const tip = document.getElementById("tip");
  tip.textContent = describe(x, y); tip.style.display = "block";
  tip.style.left = (f.map_x + x * L.px + 4) + "px"; tip.style.top = (f.map_y + y * L.px + 4) + "px";
}
draw();
const wanted = location.hash.match(/^#tile=(.+)$/);
if (wanted) showTile(wanted[1]);
if (CONFIG.refresh) setInterval(async () => {
  try { const r = await fetch("map.json", {cache: "no-store"}); if (r.ok) { DATA = await r.json(); draw(); } }
  catch (e) { /* the server may be restarting: keep the last picture */ }
}, CONFIG.refresh * 1000);
</script></body></html>
"""
