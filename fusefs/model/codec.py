"""The one place that maps tasks to names, relative paths and task ids.

A task lives at ``{lat}/{lon}/{phrase}.csv`` under every view and in every store. Coordinates
are kept as scaled integers (degrees * 10**scale) so formatting is exact for any grid size, and
a task id is a dense integer over the universe ``lat rows x lon columns x phrases`` so that sets
of tasks are compressed bitmaps, never sets of strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

SUFFIX = ".csv"
NAME_MAX = 255

# Characters that may not appear literally in a file name or would hide it / split a line.
_ESCAPED = {"/", "%", "\0"} | {chr(c) for c in range(1, 32)} | {"\x7f"}


def format_scaled(value: int, scale: int) -> str:
    """Format degrees*10**scale with exactly `scale` decimals; never '-0.00'."""
    sign = "-" if value < 0 else ""
    mag = -value if value < 0 else value
    if scale == 0:
        return f"{sign}{mag}"
    unit = 10**scale
    return f"{sign}{mag // unit}.{mag % unit:0{scale}d}"


def parse_scaled(text: str, scale: int) -> int | None:
    """Inverse of format_scaled; None unless `text` is exactly the canonical form."""
    body = text[1:] if text.startswith("-") else text
    if scale == 0:
        whole, frac = body, ""
    else:
        whole, dot, frac = body.partition(".")
        if not dot or len(frac) != scale:
            return None
    if not whole.isdigit() or not (frac.isdigit() or frac == "") or not whole.isascii():
        return None
    if not frac.isascii():
        return None
    value = int(whole + frac)
    if text.startswith("-"):
        value = -value
    return value if format_scaled(value, scale) == text else None


def encode_phrase(phrase: str) -> str:
    """Phrase -> file-name stem; percent-encodes '/', '%', control characters and a leading '.'."""
    out = [f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in phrase]
    if out and out[0] == ".":
        out[0] = "%2E"
    return "".join(out)


def decode_phrase(stem: str) -> str | None:
    """File-name stem -> phrase, or None if `stem` is not the canonical encoding of any phrase."""
    if "%" not in stem:
        phrase = stem
    else:
        parts = stem.split("%")
        chars = [parts[0]]
        for part in parts[1:]:
            code = part[:2]
            if len(code) != 2 or not all(c in "0123456789ABCDEF" for c in code):
                return None
            chars.append(chr(int(code, 16)) + part[2:])
        phrase = "".join(chars)
    return phrase if phrase and encode_phrase(phrase) == stem else None


def phrase_filename(phrase: str) -> str:
    return encode_phrase(phrase) + SUFFIX


NAMES_KEPT = 1 << 16  # names an Axis keeps made (a grid's rows or columns: far fewer)


@dataclass(frozen=True)
class Axis:
    """An arithmetic sequence of coordinates: start + i*step for i in range(n), scaled ints."""

    start: int
    step: int
    n: int
    scale: int

    def value(self, i: int) -> int:
        return self.start + i * self.step

    # Names made so far (index -> name): every path of every request names a row and a
    # column; a dict lookup instead of formatting (or an lru_cache hashing the whole Axis).
    _names: dict[int, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def name(self, i: int) -> str:
        name = self._names.get(i)
        if name is None:
            name = format_scaled(self.value(i), self.scale)
            if len(self._names) < NAMES_KEPT:
                self._names[i] = name
        return name

    def index(self, name: str) -> int | None:
        value = parse_scaled(name, self.scale)
        if value is None:
            return None
        offset = value - self.start
        if offset % self.step:
            return None
        i = offset // self.step
        return i if 0 <= i < self.n else None

    def index_of_value(self, value: int) -> int | None:
        offset = value - self.start
        if offset % self.step:
            return None
        i = offset // self.step
        return i if 0 <= i < self.n else None


class OutOfPlan(ValueError):
    """A path that does not name a task of this mission's universe."""


@dataclass(frozen=True)
class Task:
    row: int
    col: int
    phrase: int


class TaskSpace:
    """Dense ids over lat rows x lon columns x phrases: id = (row*ncols + col)*nphrases + phrase."""

    def __init__(self, lat: Axis, lon: Axis, phrases: tuple[str, ...]) -> None:
        self.lat = lat
        self.lon = lon
        self.phrases = phrases
        self.nphr = len(phrases)
        self.tile_size = self.nphr
        self.row_size = lon.n * self.nphr
        self.size = lat.n * self.row_size
        self.phrase_names = tuple(phrase_filename(p) for p in phrases)
        self._phrase_index = {name: i for i, name in enumerate(self.phrase_names)}
        self._phrase_len: tuple[int, ...] | None = None

    # -- ids -------------------------------------------------------------------------------
    def task_id(self, row: int, col: int, phrase: int) -> int:
        return (row * self.lon.n + col) * self.nphr + phrase

    def split(self, task: int) -> Task:
        tile, phrase = divmod(task, self.nphr)
        row, col = divmod(tile, self.lon.n)
        return Task(row, col, phrase)

    def row_range(self, row: int) -> tuple[int, int]:
        lo = row * self.row_size
        return lo, lo + self.row_size

    def tile_range(self, row: int, col: int) -> tuple[int, int]:
        lo = (row * self.lon.n + col) * self.nphr
        return lo, lo + self.nphr

    # -- names -----------------------------------------------------------------------------
    def row_of(self, name: str) -> int | None:
        return self.lat.index(name)

    def col_of(self, name: str) -> int | None:
        return self.lon.index(name)

    def phrase_of(self, filename: str) -> int | None:
        return self._phrase_index.get(filename)

    def rel(self, task: int) -> str:
        tile, phrase = divmod(task, self.nphr)
        row, col = divmod(tile, self.lon.n)
        return f"{self.lat.name(row)}/{self.lon.name(col)}/{self.phrase_names[phrase]}"

    def parse_rel(self, rel: str) -> int:
        """Relative path -> task id; raises OutOfPlan with the reason."""
        parts = rel.strip("/").split("/")
        if len(parts) != 3:
            raise OutOfPlan(f"{rel!r} is not of the form LAT/LON/PHRASE.csv")
        lat, lon, filename = parts
        row = self.row_of(lat)
        if row is None:
            raise OutOfPlan(f"latitude {lat!r} is not a row of the mission grid")
        col = self.col_of(lon)
        if col is None:
            raise OutOfPlan(f"longitude {lon!r} is not a column of the mission grid")
        phrase = self.phrase_of(filename)
        if phrase is None:
            raise OutOfPlan(f"{filename!r} is not the file name of a mission phrase")
        return self.task_id(row, col, phrase)

    def fingerprint(self) -> str:
        """Identifies the id layout, so a saved bitmap is only reused for the same universe."""
        h = hashlib.sha256()
        h.update(repr((self.lat, self.lon)).encode())
        for p in self.phrases:
            h.update(p.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()[:32]

    # -- descriptor ------------------------------------------------------------------------
    def descriptor(self, task: int) -> bytes:
        """One JSON line describing the task, enough for a scraper that only sees the mount."""
        t = self.split(task)
        return b"".join(
            (
                _row_part(self, t.row),
                _col_part(self, t.col),
                _phrase_part(self, t.phrase),
                _done_part(self, t.row, t.col, t.phrase),
            )
        )

    def descriptor_size_parts(self, tile: int) -> tuple[int, tuple[int, ...]]:
        """(base, per_phrase) with descriptor_size(tile * nphr + p) == base + per_phrase[p]:
        a listing of one tile computes the tile's part once."""
        first = self.descriptor_size(tile * self.nphr)
        assert self._phrase_len is not None
        return first - self._phrase_len[0], self._phrase_len

    def descriptor_size(self, task: int) -> int:
        """len(descriptor(task)) without building it (readdir asks for every listed task)."""
        if self._phrase_len is None:
            self._phrase_len = tuple(
                len(_phrase_part(self, p)) + _phrase_done_len(self, p) for p in range(self.nphr)
            )
        tile, phrase = divmod(task, self.nphr)
        row, col = divmod(tile, self.lon.n)
        return (
            _row_len(self, row)
            + _col_len(self, col)
            + self._phrase_len[phrase]
            + 2 * (len(self.lat.name(row)) + len(self.lon.name(col)))
        )


def _json_str(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


@lru_cache(maxsize=1 << 14)
def _row_part(space: TaskSpace, row: int) -> bytes:
    lat = space.lat.name(row)
    north = format_scaled(space.lat.value(row) + space.lat.step, space.lat.scale)
    return f'{{"lat": {lat}, "south": {lat}, "north": {north}, '.encode()


@lru_cache(maxsize=1 << 14)
def _col_part(space: TaskSpace, col: int) -> bytes:
    lon = space.lon.name(col)
    east = format_scaled(space.lon.value(col) + space.lon.step, space.lon.scale)
    return f'"lon": {lon}, "west": {lon}, "east": {east}, '.encode()


@lru_cache(maxsize=1 << 12)
def _phrase_part(space: TaskSpace, phrase: int) -> bytes:
    return f'"phrase": {_json_str(space.phrases[phrase])}, '.encode()


def _done_part(space: TaskSpace, row: int, col: int, phrase: int) -> bytes:
    rel = f"{space.lat.name(row)}/{space.lon.name(col)}/{space.phrase_names[phrase]}"
    return f'"rel": {_json_str(rel)}, "done": {_json_str("done/" + rel)}}}\n'.encode()


@lru_cache(maxsize=1 << 12)
def _phrase_done_len(space: TaskSpace, phrase: int) -> int:
    name = space.phrase_names[phrase]
    # name appears twice, JSON-escaped, inside "rel" and "done" strings.
    return 2 * (len(_json_str(name).encode()) - 2)


_DONE_FIXED = len('"rel": "", "done": "done/"}\n') + 4  # + the two "/" of each path


@lru_cache(maxsize=1 << 14)
def _row_len(space: TaskSpace, row: int) -> int:
    return len(_row_part(space, row)) + _DONE_FIXED


@lru_cache(maxsize=1 << 14)
def _col_len(space: TaskSpace, col: int) -> int:
    return len(_col_part(space, col))
