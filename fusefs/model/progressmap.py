# layer: model
"""The progress map as a raster: which state each cell of the picture shows. Pure, no I/O.

A cell is one tile (lat x lon, all its phrases) when the grid fits the picture, or a block of
tiles when it does not. Counting tasks per cell must not be a Python loop over the mission (a
10M-task mission renders in seconds), so each roaring bitmap is turned into a numpy array of
task ids once and counted per cell with `bincount`: tasks are laid out row-major
(task = (row * ncols + col) * nphrases + phrase, see codec.TaskSpace), so a cell index is plain
integer arithmetic on the ids.

A cell's state, first match wins: conflict (a result lost a race there), done (every planned task
done), claimed (a live claim, ours or another worker's), partly done, pending, outside the plan
(witnesses but no planned task), not planned (nothing at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from fusefs.model.codec import TaskSpace

CONFLICT, DONE, CLAIMED, PARTLY, PENDING, OUTSIDE, EMPTY = range(7)
NAMES = ("conflict", "done", "claimed", "partly done", "pending", "outside the plan", "not planned")
COLOURS: tuple[tuple[int, int, int], ...] = (
    (0xD7, 0x19, 0x1C),  # conflict: red
    (0x1A, 0x96, 0x41),  # done: green
    (0x2B, 0x6C, 0xD9),  # claimed: blue
    (0xF2, 0xC1, 0x2E),  # partly done: amber
    (0xCF, 0xCF, 0xCF),  # pending: grey
    (0x8E, 0x3C, 0xA8),  # outside the plan: purple
    (0xFF, 0xFF, 0xFF),  # not planned: the background
)
TASK_LETTERS = "!dcp.ox"  # per task, in the HTML hover: conflict, done, claimed, -, pending, ...
GRID_PX = 8  # cells at least this many pixels wide are separated by a white line
CHUNK = 1 << 20  # ids counted at a time (bounds the temporary arrays to a few MiB each)

Counts = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Layout:
    """How tiles map to cells and cells to pixels. Rows of cells are counted in latitude order
    (row 0 = the mission's first latitude); `flip_y` puts north at the top of the picture."""

    rows: int  # tile rows (latitudes)
    cols: int  # tile columns (longitudes)
    h: int  # cell rows
    w: int  # cell columns
    px: int  # pixels per cell side
    flip_y: bool
    flip_x: bool

    @property
    def single_tiles(self) -> bool:
        return self.h == self.rows and self.w == self.cols

    def cell(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of the cell showing tile (row, col), y counted from the top of the picture."""
        y = row * self.h // self.rows
        x = col * self.w // self.cols
        return (self.w - 1 - x if self.flip_x else x), (self.h - 1 - y if self.flip_y else y)

    def tile_rows(self, y: int) -> tuple[int, int]:
        """[r0, r1): the tile rows shown by picture cell row y."""
        yy = self.h - 1 - y if self.flip_y else y
        return -(-yy * self.rows // self.h), -(-(yy + 1) * self.rows // self.h)

    def tile_cols(self, x: int) -> tuple[int, int]:
        xx = self.w - 1 - x if self.flip_x else x
        return -(-xx * self.cols // self.w), -(-(xx + 1) * self.cols // self.w)


def make_layout(space: TaskSpace, width: int, max_height: int) -> Layout:
    """Cells at most `width` x `max_height` pixels, tiles aggregated with one factor on both axes
    (so the map keeps the grid's proportions as far as the bounds allow)."""
    rows, cols = space.lat.n, space.lon.n
    w = max(1, min(cols, width))
    factor = cols / w
    h = max(1, min(rows, max_height, round(rows / factor) or 1))
    px = max(1, min(width // w, max_height // h))
    return Layout(rows, cols, h, w, px, space.lat.step > 0, space.lon.step < 0)


@dataclass
class Raster:
    layout: Layout
    state: npt.NDArray[np.uint8]  # h x w, picture order (row 0 at the top)
    counts: dict[str, Counts] = field(default_factory=dict)  # per cell, picture order
    totals: dict[str, int] = field(default_factory=dict)
    task_letters: str | None = None  # per task of the mission, when cells are single tiles


def _ids(bm: BitMap) -> Iterator[npt.NDArray[np.int64]]:
    arr = np.frombuffer(bm.to_array(), dtype=np.uint32) if len(bm) else np.zeros(0, np.uint32)
    for i in range(0, len(arr), CHUNK):
        yield arr[i : i + CHUNK].astype(np.int64)


def _per_cell(space: TaskSpace, lay: Layout, bm: BitMap) -> Counts:
    out = np.zeros(lay.h * lay.w, dtype=np.int64)
    for ids in _ids(bm):
        tile = ids // space.nphr
        row, col = np.divmod(tile, space.lon.n)
        y = row * lay.h // lay.rows
        x = col * lay.w // lay.cols
        if lay.flip_y:
            y = lay.h - 1 - y
        if lay.flip_x:
            x = lay.w - 1 - x
        out += np.bincount(y * lay.w + x, minlength=lay.h * lay.w)
    return out


def raster(
    space: TaskSpace,
    lay: Layout,
    intent: BitMap,
    fact: BitMap,
    busy: BitMap,
    conflicts: BitMap,
    *,
    letters_limit: int = 2_000_000,
) -> Raster:
    """Count planned, done, claimed, outside and conflicting tasks per cell and pick states."""
    done_bm = fact & intent
    sets = {
        "intent": intent,
        "done": done_bm,
        "claimed": (busy & intent) - fact,
        "outside": fact - intent,
        "conflict": conflicts,
    }
    counts = {k: _per_cell(space, lay, bm) for k, bm in sets.items()}
    n_int, n_done = counts["intent"], counts["done"]
    state = np.select(
        [
            counts["conflict"] > 0,
            (n_int > 0) & (n_done == n_int),
            counts["claimed"] > 0,
            n_done > 0,
            n_int > 0,
            counts["outside"] > 0,
        ],
        [CONFLICT, DONE, CLAIMED, PARTLY, PENDING, OUTSIDE],
        default=EMPTY,
    ).astype(np.uint8)
    totals = {k: len(bm) for k, bm in sets.items()}
    totals["pending"] = len(intent) - len(done_bm) - totals["claimed"]
    r = Raster(lay, state.reshape(lay.h, lay.w), counts, totals)
    if lay.single_tiles and space.size <= letters_limit:
        r.task_letters = _letters(space, sets)
    return r


def _letters(space: TaskSpace, sets: dict[str, BitMap]) -> str:
    """One letter per task id (TASK_LETTERS), for the hover of a tile in the HTML page."""
    codes = np.full(space.size, ord("x"), dtype=np.uint8)
    for name, letter in (
        ("intent", "."),
        ("claimed", "c"),
        ("done", "d"),
        ("outside", "o"),
        ("conflict", "!"),
    ):
        for ids in _ids(sets[name]):
            codes[ids[ids < space.size]] = ord(letter)
    return codes.tobytes().decode("ascii")


def rgb(r: Raster) -> npt.NDArray[np.uint8]:
    """The cells as an (h*px) x (w*px) x 3 RGB image."""
    palette = np.array(COLOURS, dtype=np.uint8)
    img = palette[r.state]
    px = r.layout.px
    if px == 1:
        return img
    big = np.repeat(np.repeat(img, px, axis=0), px, axis=1)
    if px >= GRID_PX:  # a white line between tiles, so neighbours of one state stay tiles
        big[px - 1 :: px, :] = 255
        big[:, px - 1 :: px] = 255
    return big


def ticks(axis_n: int, cells: int, target: int) -> list[tuple[int, int]]:
    """(tile index, cell index) pairs for about `target` evenly spaced axis labels."""
    step = max(1, -(-axis_n // max(1, target)))
    out = []
    for i in range(0, axis_n, step):
        out.append((i, i * cells // axis_n))
    return out
