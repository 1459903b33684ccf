"""The Merkle digest of a Fact tree, as arithmetic: tile, row and mission digests, the tree
that keeps them in O(depth) per change, and the descent that finds where two trees differ.

Pure (no IO): the definitions are in engine/digest.py's docstring, which also says where the
content hashes come from and how the daemon keeps the tree current.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from fusefs.model.codec import TaskSpace

_MOD = 1 << 256


def tile_digest(files: Mapping[str, str]) -> str:
    """Digest of one tile from {witness file name: content sha256 hex}; order of input is moot."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _term(key: str, digest: str) -> int:
    """A child's contribution to its parent's sum: H("KEY\\0DIGEST\\n") as an integer."""
    raw = hashlib.sha256(f"{key}\0{digest}\n".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(raw, "big")


def fold(kind: str, count: int, acc: int) -> str:
    """Digest of a row or the mission from its child count and the sum of the child terms."""
    return hashlib.sha256(f"{kind}\0{count}\0{acc:064x}\n".encode()).hexdigest()


EMPTY_ROOT = fold("mission", 0, 0)


class DigestTree:
    """Tile digests plus per-row and mission sums, updated in O(depth) by `set_tile`."""

    def __init__(self, space: TaskSpace) -> None:
        self.space = space
        self._tiles: dict[int, dict[int, str]] = {}  # row -> col -> tile digest
        self._acc: dict[int, int] = {}  # row -> sum of its tile terms
        self._macc = 0  # sum of the row terms
        self._root = EMPTY_ROOT

    def set_tile(self, tile: int, digest: str | None) -> bool:
        """Set (or with None, drop) the digest of tile id `tile`; True if anything changed."""
        row, col = divmod(tile, self.space.lon.n)
        cols = self._tiles.get(row)
        old = cols.get(col) if cols is not None else None
        if old == digest:
            return False
        old_row = self.row_digest(row)
        lon = self.space.lon.name(col)
        acc = self._acc.get(row, 0)
        if old is not None:
            acc -= _term(lon, old)
        if digest is not None:
            acc += _term(lon, digest)
            self._tiles.setdefault(row, {})[col] = digest
        elif cols is not None:
            del cols[col]
        if self._tiles.get(row):
            self._acc[row] = acc % _MOD
        else:
            self._tiles.pop(row, None)
            self._acc.pop(row, None)
        new_row = self.row_digest(row)
        lat = self.space.lat.name(row)
        if old_row is not None:
            self._macc -= _term(lat, old_row)
        if new_row is not None:
            self._macc += _term(lat, new_row)
        self._macc %= _MOD
        self._root = fold("mission", len(self._tiles), self._macc)
        return True

    def root(self) -> str:
        return self._root

    def row_digest(self, row: int) -> str | None:
        cols = self._tiles.get(row)
        return fold("row", len(cols), self._acc[row]) if cols else None

    def tile_digest(self, tile: int) -> str | None:
        row, col = divmod(tile, self.space.lon.n)
        return self._tiles.get(row, {}).get(col)

    def rows(self) -> dict[str, tuple[int, str]]:
        """{lat name: (row index, row digest)} of the non-empty rows."""
        return {
            self.space.lat.name(r): (r, fold("row", len(c), self._acc[r]))
            for r, c in self._tiles.items()
        }

    def tiles(self, row: int) -> dict[str, tuple[int, str]]:
        """{lon name: (tile id, tile digest)} of the non-empty tiles of `row`."""
        n = self.space.lon.n
        return {
            self.space.lon.name(c): (row * n + c, d) for c, d in self._tiles.get(row, {}).items()
        }

    def counts(self) -> tuple[int, int]:
        """(non-empty rows, non-empty tiles)."""
        return len(self._tiles), sum(len(c) for c in self._tiles.values())

    def to_json(self, depth: str) -> dict[str, Any]:
        """The tree down to `depth` (mission|row|tile), rows and tiles in grid order."""
        out: dict[str, Any] = {"root": self._root}
        if depth == "mission":
            return out
        rows: dict[str, Any] = {}
        for r in sorted(self._tiles):
            entry: dict[str, Any] = {"digest": self.row_digest(r)}
            if depth == "tile":
                cols = self._tiles[r]
                entry["tiles"] = {self.space.lon.name(c): cols[c] for c in sorted(cols)}
            rows[self.space.lat.name(r)] = entry
        out["rows"] = rows
        return out


def build_tree(space: TaskSpace, shas: Mapping[int, str]) -> DigestTree:
    """A tree from {task id: content sha256} (tests, the bucket side of `diff`)."""
    by_tile: dict[int, dict[str, str]] = {}
    for task, sha in shas.items():
        tile, phrase = divmod(task, space.nphr)
        by_tile.setdefault(tile, {})[space.phrase_names[phrase]] = sha
    tree = DigestTree(space)
    for tile, files in by_tile.items():
        tree.set_tile(tile, tile_digest(files))
    return tree


class Side(Protocol):
    """One side of `diff`: a tree and, on request, the files of one of its tiles."""

    label: str
    tree: DigestTree

    def files(self, tile: int) -> dict[str, str]: ...


def _coord_key(name: str) -> tuple[int, Decimal | str]:
    try:
        return (0, Decimal(name))
    except InvalidOperation:
        return (1, name)


@dataclass
class DiffResult:
    tasks: list[tuple[str, str]]  # (kind, rel): only-in-a | only-in-b | differs
    rows_compared: int = 0
    rows_descended: int = 0
    tiles_descended: int = 0


def diff_sides(a: Side, b: Side) -> DiffResult:
    """Descend from the roots into rows, tiles and files only where the digests differ."""
    res = DiffResult([])
    if a.tree.root() == b.tree.root():
        return res
    ra, rb = a.tree.rows(), b.tree.rows()
    res.rows_compared = len(ra.keys() | rb.keys())
    for lat in sorted(ra.keys() | rb.keys(), key=_coord_key):
        xa, xb = ra.get(lat), rb.get(lat)
        if xa is not None and xb is not None and xa[1] == xb[1]:
            continue
        res.rows_descended += 1
        ta = a.tree.tiles(xa[0]) if xa is not None else {}
        tb = b.tree.tiles(xb[0]) if xb is not None else {}
        for lon in sorted(ta.keys() | tb.keys(), key=_coord_key):
            ya, yb = ta.get(lon), tb.get(lon)
            if ya is not None and yb is not None and ya[1] == yb[1]:
                continue
            res.tiles_descended += 1
            fa = a.files(ya[0]) if ya is not None else {}
            fb = b.files(yb[0]) if yb is not None else {}
            for name in sorted(fa.keys() | fb.keys()):
                rel = f"{lat}/{lon}/{name}"
                if name not in fb:
                    res.tasks.append(("only-in-a", rel))
                elif name not in fa:
                    res.tasks.append(("only-in-b", rel))
                elif fa[name] != fb[name]:
                    res.tasks.append(("differs", rel))
    return res
