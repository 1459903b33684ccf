"""Checkpoints: the whole Fact set of a fleet in one object, so a new or returning node learns
every fact with a few GETs, whatever the bucket holds (protocol v2, docs/protocol.md).

Pure: bytes in, bytes out; the object store side is fusefs.engine.checkpoints. A checkpoint is
derived state (the witness objects are the truth; fsck rebuilds it), so a reader must never
trust it blindly: `decode` checks every length and the SHA-256 of the payload, and answers a
bad or foreign body with `CorruptCheckpoint` (never another exception), so the caller falls
back to the previous checkpoint.

Layout: one JSON header line, then the payload, whose sections follow each other:

    {"v":2,"window":w,"tasks":n,"fingerprint":fp,"tile":t,"bitmap":b,"hashed":h,"tiles":m,
     "tilemap":g,
     "sha256":hex}\\n   (SHA-256 of the other fields, as sorted compact JSON, "\\n", payload)
    bitmap   b bytes    pyroaring serialize() of the task ids (the facts)
    sizes    4n bytes   uint32 little-endian, one per fact in bitmap order; 0xFFFFFFFF unknown
    hashed   h bytes    pyroaring serialize() of the facts whose (rel, sha256) is in the digests
    tilemap  g bytes    pyroaring serialize() of the m tile numbers that have a digest
    digests  16m bytes  the set hash of each of those tiles (see `TileDigests`)

Columns, not Python objects: 10M facts are 40 MB of sizes and a few MB of bitmap, encoded and
decoded with numpy in well under a second; `Sizes` and `TileDigests` read them in place.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from fusefs.model.codec import OutOfPlan, TaskSpace

VERSION = 2
UNKNOWN_SIZE = 0xFFFFFFFF  # a size not known (or not representable in 32 bits)
DIGEST_BYTES = 16
HEADER_MAX = 4096  # bytes: a longer first line is not ours
_U32 = np.dtype("<u4")
_INT_MAX = 1 << 40  # bound on every header integer (windows, counts, lengths)


class CorruptCheckpoint(ValueError):
    """The body is not a valid checkpoint (truncated, altered, hostile): use the previous one."""


class ForeignCheckpoint(CorruptCheckpoint):
    """A valid checkpoint of another task space (the mission's grid or phrases changed): its
    task ids mean other tasks, so it is unusable here just like a corrupt one."""


def fingerprint(space: TaskSpace) -> str:
    """Names the task-id layout: two spaces with the same fingerprint give every rel the same
    id (the grid axes and the phrases in order). The intent may change freely."""
    return f"ts1-{space.fingerprint()}"


def tile_of(task: int, tile_size: int) -> int:
    """The tile number of a task: the codec numbers tasks tile by tile (id = tile*nphr + p)."""
    return task // tile_size


# -- sizes ------------------------------------------------------------------------------------
class Sizes(Mapping[int, int]):
    """task -> size for the facts of a checkpoint whose size is known: a uint32 column in
    bitmap order (UNKNOWN_SIZE where unknown), read in place (10M facts stay 40 MB)."""

    def __init__(self, facts: BitMap, column: np.ndarray) -> None:
        if len(column) != len(facts):
            raise ValueError("one size per fact")
        self.facts = facts
        self.column = column

    @classmethod
    def of(cls, facts: BitMap, sizes: Mapping[int, int]) -> Sizes:
        """The column for `facts` from any mapping (sizes of other tasks are dropped; sizes of
        4 GiB and more, or below 1, are unknown)."""
        if isinstance(sizes, Sizes) and sizes.facts == facts:
            return sizes
        column = np.full(len(facts), UNKNOWN_SIZE, dtype=_U32)
        if sizes and len(facts):
            ids = np.array(facts.to_array(), dtype=np.int64)
            keys, vals = _pairs(sizes)
            at = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
            ok = (ids[at] == keys) & (vals > 0) & (vals < UNKNOWN_SIZE)
            column[at[ok]] = vals[ok]
        return cls(facts, column)

    @classmethod
    def from_dense(cls, facts: BitMap, dense: Any) -> Sizes:
        """The column from a dense per-task array (RemoteSizes' `array('I')`, 0 = unknown)."""
        arr = np.frombuffer(dense, dtype=np.uint32)
        ids = np.array(facts.to_array(), dtype=np.int64)
        column = np.full(len(ids), UNKNOWN_SIZE, dtype=_U32)
        inside = ids < len(arr)
        picked = arr[ids[inside]]
        column[inside] = np.where(picked == 0, UNKNOWN_SIZE, picked)
        return cls(facts, column)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(task ids, sizes) of the known sizes, as int64 columns."""
        keep = self.column != UNKNOWN_SIZE
        ids = np.array(self.facts.to_array(), dtype=np.int64)[keep]
        return ids, self.column[keep].astype(np.int64)

    def __getitem__(self, task: int) -> int:
        if task not in self.facts:
            raise KeyError(task)
        size = int(self.column[self.facts.rank(task) - 1])
        if size == UNKNOWN_SIZE:
            raise KeyError(task)
        return size

    def __iter__(self) -> Iterator[int]:
        return iter(self.arrays()[0].tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.column != UNKNOWN_SIZE))

    def known(self) -> Iterator[tuple[int, int]]:
        """(task, size) of every fact whose size is known, in task order (fast `items()`)."""
        ids, sizes = self.arrays()
        return zip(ids.tolist(), sizes.tolist(), strict=True)


def _pairs(sizes: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of a size mapping as int64 columns (a `Sizes` without a Python loop)."""
    if isinstance(sizes, Sizes):
        return sizes.arrays()
    keys = np.fromiter(sizes.keys(), dtype=np.int64, count=len(sizes))
    vals = np.fromiter(sizes.values(), dtype=np.int64, count=len(sizes))
    return keys, vals


# -- per-tile digests -------------------------------------------------------------------------
def witness_hash(rel: str, sha256: str) -> int:
    """One witness's contribution to its tile's set hash: blake2b-16 of "rel<TAB>sha256"."""
    data = f"{rel}\t{sha256}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest(), "little")


class TileDigests(Mapping[int, bytes]):
    """tile number -> 16-byte order-independent set hash of its witnesses' (rel, sha256): the
    XOR of `witness_hash` over them, so two nodes compare a tile without listing it.

    Only witnesses whose sha256 is known count; `hashed` says which (so adding the same
    witness twice, e.g. from a checkpoint and again from a later segment, changes nothing: an
    XOR would cancel it). Decoded digests stay numpy columns until the first change.
    """

    def __init__(self, tile_size: int, space: TaskSpace | None = None) -> None:
        if tile_size < 1:
            raise ValueError("tile_size must be positive")
        self.tile_size = tile_size
        self.space = space  # needed by add(rel, ...) only
        self.hashed = BitMap()
        self._acc: dict[int, int] | None = {}
        self._tiles: np.ndarray = np.zeros(0, dtype=_U32)
        self._table: np.ndarray = np.zeros((0, DIGEST_BYTES), dtype=np.uint8)

    @classmethod
    def for_space(cls, space: TaskSpace) -> TileDigests:
        return cls(space.tile_size, space)

    @classmethod
    def from_columns(
        cls, tile_size: int, hashed: BitMap, tiles: np.ndarray, table: np.ndarray
    ) -> TileDigests:
        """Digests read from a checkpoint: ascending tiles, a (len(tiles), 16) uint8 table."""
        out = cls(tile_size)
        out.hashed = hashed
        out._acc, out._tiles, out._table = None, tiles, table
        return out

    # -- reading --
    def __getitem__(self, tile: int) -> bytes:
        if self._acc is not None:
            value = self._acc[tile]
            return value.to_bytes(DIGEST_BYTES, "little")
        at = int(np.searchsorted(self._tiles, tile))
        if at >= len(self._tiles) or int(self._tiles[at]) != tile:
            raise KeyError(tile)
        return self._table[at].tobytes()

    def __iter__(self) -> Iterator[int]:
        if self._acc is not None:
            return iter(sorted(self._acc))
        return iter(self._tiles.tolist())

    def __len__(self) -> int:
        return len(self._acc) if self._acc is not None else len(self._tiles)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """(ascending uint32 tiles, (m, 16) uint8 digests): what `encode` writes."""
        if self._acc is None:
            return self._tiles, self._table
        tiles = sorted(t for t, v in self._acc.items() if v)
        raw = b"".join(self._acc[t].to_bytes(DIGEST_BYTES, "little") for t in tiles)
        table = np.frombuffer(raw, dtype=np.uint8).reshape(len(tiles), DIGEST_BYTES)
        return np.array(tiles, dtype=_U32), table

    def copy(self) -> TileDigests:
        """An independent copy (a checkpoint's digests must not grow with the builder's)."""
        out = TileDigests(self.tile_size, self.space)
        out.hashed = BitMap(self.hashed)
        if self._acc is None:
            out._acc, out._tiles, out._table = None, self._tiles, self._table  # read-only
        else:
            out._acc = dict(self._acc)
        return out

    # -- changing --
    def thaw(self) -> None:
        """Turn decoded columns into the dict that additions change now (a Python int per
        tile: seconds at millions of tiles), e.g. in a worker thread, rather than at the first
        addition (a segment's, on the trio thread)."""
        self._mutable()

    def _mutable(self) -> dict[int, int]:
        if self._acc is None:
            rows = (int.from_bytes(r, "little") for r in map(bytes, self._table))
            self._acc = dict(zip(self._tiles.tolist(), rows, strict=True))
        return self._acc

    def add_task(self, task: int, rel: str, sha256: str) -> bool:
        """Count the witness of `task` (named `rel`) with this sha256; False if it was already
        counted (a witness is created once: its first known sha256 is its sha256)."""
        if task in self.hashed:
            return False
        acc = self._mutable()
        tile = tile_of(task, self.tile_size)
        acc[tile] = acc.get(tile, 0) ^ witness_hash(rel, sha256)
        self.hashed.add(task)
        return True

    def add(self, rel: str, sha256: str) -> bool:
        """`add_task` by rel; False for a rel outside the space (or already counted)."""
        if self.space is None:
            raise ValueError("TileDigests.add(rel) needs the task space")
        try:
            task = self.space.parse_rel(rel)
        except OutOfPlan:
            return False
        return self.add_task(task, rel, sha256)

    def merge(self, other: TileDigests) -> None:
        """Take the other's digests of the tiles where it counted witnesses we did not: a tile
        is taken whole (its digest and its counted tasks), since XOR cannot subtract unknown
        parts; where both counted different witnesses, the one that counted more wins."""
        if other.tile_size != self.tile_size:
            raise ValueError("digests of different tile sizes")
        acc = self._mutable()
        for tile in other:
            span = BitMap(range(tile * self.tile_size, (tile + 1) * self.tile_size))
            theirs, ours = other.hashed & span, self.hashed & span
            if theirs <= ours or (not ours <= theirs and len(ours) >= len(theirs)):
                continue
            acc[tile] = int.from_bytes(other[tile], "little")
            self.hashed -= ours
            self.hashed |= theirs


# -- the checkpoint ---------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """The Fact set known through segment `window`. `sizes` may be any mapping task -> size
    (encode keeps those of facts); decoded ones are `Sizes` columns. `digests` maps a tile to
    its 16-byte set hash; give a `TileDigests` to keep which witnesses it counted."""

    window: int
    facts: BitMap
    sizes: Mapping[int, int] = field(default_factory=dict)
    digests: Mapping[int, bytes] = field(default_factory=dict)


class CheckpointBuilder:
    """The Fact set a node accumulates for its next checkpoint: a base (the checkpoint it
    loaded, or nothing) plus what the segments after it said (rel, sha256, size per line).

    Sizes and digests of the facts come from the checkpoint and the segments themselves, never
    from local files (a node would have to stat millions of them). `build` folds what was added
    into a new base, so memory stays at the columns plus one window's lines.
    """

    def __init__(self, space: TaskSpace, base: Checkpoint | None = None) -> None:
        self.space = space
        self.window = -1 if base is None else base.window
        self._facts = BitMap() if base is None else BitMap(base.facts)
        self._column = Sizes.of(self._facts, {} if base is None else base.sizes).column
        self.digests = TileDigests.for_space(space)
        if base is not None and isinstance(base.digests, TileDigests):
            self.digests = base.digests.copy()  # the loaded checkpoint stays as it was read
            self.digests.space = space
        self._new: dict[int, int] = {}  # task -> size (UNKNOWN_SIZE) not yet in the columns

    def __len__(self) -> int:
        return len(self._facts | BitMap(self._new))

    def add(self, task: int, rel: str, sha256: str | None = None, size: int | None = None) -> None:
        """One fact (a segment or manifest line): its size if known, its sha256 if known."""
        if task not in self._facts or size is not None:
            old = self._new.get(task, UNKNOWN_SIZE)
            self._new[task] = size if size is not None and 0 < size < UNKNOWN_SIZE else old
        if sha256:
            self.digests.add_task(task, rel, sha256)

    def build(self, window: int) -> Checkpoint:
        """The checkpoint of everything added so far, as of `window`; it becomes the base."""
        facts = self._facts | BitMap(self._new)
        if len(facts) != len(self._facts):
            ids = np.array(facts.to_array(), dtype=np.int64)
            column = np.full(len(ids), UNKNOWN_SIZE, dtype=_U32)
            old = np.array(self._facts.to_array(), dtype=np.int64)
            column[np.searchsorted(ids, old)] = self._column
        else:
            column = self._column.copy()
        delta = Sizes.of(facts, {t: s for t, s in self._new.items() if s != UNKNOWN_SIZE})
        known = delta.column != UNKNOWN_SIZE
        column[known] = delta.column[known]
        self._facts, self._column, self._new = facts, column, {}
        self.window = window
        snapshot = BitMap(facts)
        return Checkpoint(window, snapshot, Sizes(snapshot, column.copy()), self.digests.copy())


def encode(cp: Checkpoint, fingerprint: str, tile_size: int = 1) -> bytes:
    """The checkpoint's bytes (header line + payload). `tile_size` (space.tile_size) is
    recorded for readers that extend the digests; a `TileDigests` brings its own."""
    if not 0 <= cp.window < _INT_MAX:
        raise ValueError(f"window {cp.window} out of range")
    facts = BitMap(cp.facts)  # a copy: run_optimize() must not touch the caller's set
    facts.run_optimize()
    column = Sizes.of(facts, cp.sizes).column.astype(_U32, copy=False)
    hashed, tiles, table, tile_size = _digest_columns(cp.digests, tile_size)
    if not hashed <= facts:  # a reader would refuse it: fail the writer instead
        raise ValueError("the digests count witnesses that are not facts of the checkpoint")
    bitmap, hashed_bytes = facts.serialize(), hashed.serialize()
    tilemap = BitMap(array("I", tiles.astype(_U32).tobytes()))  # array: pyroaring's fast path
    tilemap.run_optimize()
    tile_bytes = tilemap.serialize()
    payload = b"".join((bitmap, column.tobytes(), hashed_bytes, tile_bytes, table.tobytes()))
    header = {
        "v": VERSION,
        "window": cp.window,
        "tasks": len(facts),
        "fingerprint": fingerprint,
        "tile": tile_size,
        "bitmap": len(bitmap),
        "hashed": len(hashed_bytes),
        "tiles": len(tiles),
        "tilemap": len(tile_bytes),
    }
    header["sha256"] = _checksum(header, payload)
    line = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return line + payload


def _digest_columns(
    digests: Mapping[int, bytes], tile_size: int
) -> tuple[BitMap, np.ndarray, np.ndarray, int]:
    if isinstance(digests, TileDigests):
        tiles, table = digests.columns()
        return digests.hashed, tiles, table, digests.tile_size
    rows = sorted((t, d) for t, d in digests.items() if any(d))
    if any(len(d) != DIGEST_BYTES or not 0 <= t <= 0xFFFFFFFF for t, d in rows):
        raise ValueError("a digest is 16 bytes of a tile number below 2**32")
    raw = b"".join(d for _, d in rows)
    table = np.frombuffer(raw, dtype=np.uint8).reshape(len(rows), DIGEST_BYTES)
    return BitMap(), np.array([t for t, _ in rows], dtype=_U32), table, max(1, tile_size)


def peek_window(body: bytes) -> int | None:
    """The window a body's header names (no checks beyond the header's JSON), for reports."""
    try:
        return int(_header(body)[0]["window"])
    except (CorruptCheckpoint, KeyError, TypeError, ValueError):
        return None


def decode(body: bytes, fingerprint: str) -> Checkpoint:
    """The checkpoint in `body`; CorruptCheckpoint if it is not exactly a valid one, and
    ForeignCheckpoint (a CorruptCheckpoint) if it is valid for another task space."""
    try:
        return _decode(body, fingerprint)
    except CorruptCheckpoint:
        raise
    except Exception as e:  # hostile bytes must never surface as anything else
        raise CorruptCheckpoint(f"unreadable checkpoint: {type(e).__name__}: {e}") from None


def _decode(body: bytes, fingerprint: str) -> Checkpoint:
    header, payload = _header(body)
    n = _int(header, "tasks", 1 << 32)
    nb, nh, m = _int(header, "bitmap"), _int(header, "hashed"), _int(header, "tiles", 1 << 32)
    ng = _int(header, "tilemap")
    tile_size = _int(header, "tile", 1 << 32)
    window = _int(header, "window")
    sha = header.get("sha256")
    if not isinstance(sha, str) or _checksum(header, payload) != sha:
        raise CorruptCheckpoint("does not match its sha256 (altered or truncated)")
    if header.get("fingerprint") != fingerprint:
        raise ForeignCheckpoint(f"made for another task space ({header.get('fingerprint')!r})")
    if tile_size < 1 or nb + 4 * n + nh + ng + 16 * m != len(payload):
        raise CorruptCheckpoint("section lengths do not add up to the payload")
    view = memoryview(payload)
    facts = _bitmap(view[:nb], n)
    at = nb + 4 * n
    column = np.frombuffer(payload, dtype=_U32, count=n, offset=nb)
    hashed = _bitmap(view[at : at + nh], None)
    at += nh
    tiles = np.array(_bitmap(view[at : at + ng], m).to_array(), dtype=_U32)
    table = np.frombuffer(payload, dtype=np.uint8, count=16 * m, offset=at + ng)
    if not hashed <= facts:
        raise CorruptCheckpoint("digests count witnesses that are not facts")
    digests = TileDigests.from_columns(tile_size, hashed, tiles, table.reshape(m, DIGEST_BYTES))
    return Checkpoint(window, facts, Sizes(facts, column), digests)


def _checksum(header: dict[str, Any], payload: bytes) -> str:
    """SHA-256 of the header's other fields (canonical JSON) and the payload: a changed
    window or count is as corrupt as a changed byte of the bitmap."""
    fields = {k: v for k, v in header.items() if k != "sha256"}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n")
    h.update(payload)
    return h.hexdigest()


def _header(body: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise CorruptCheckpoint("not bytes")
    body = bytes(body)
    end = body.find(b"\n", 0, HEADER_MAX)
    if end < 0:
        raise CorruptCheckpoint("no header line")
    try:
        header = json.loads(body[:end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptCheckpoint("header is not JSON") from None
    if not isinstance(header, dict):
        raise CorruptCheckpoint("header is not an object")
    if header.get("v") != VERSION or isinstance(header.get("v"), bool):
        raise CorruptCheckpoint(f"not a version {VERSION} checkpoint")
    return header, body[end + 1 :]


def _int(header: dict[str, Any], name: str, bound: int = _INT_MAX) -> int:
    value = header.get(name)
    if type(value) is not int or not 0 <= value < bound:
        raise CorruptCheckpoint(f"header field {name!r} is not a count below {bound}")
    return value


def _bitmap(raw: memoryview, count: int | None) -> BitMap:
    try:
        bm = BitMap.deserialize(bytes(raw))
    except Exception as e:
        raise CorruptCheckpoint(f"bad bitmap: {e}") from None
    if count is not None and len(bm) != count:
        raise CorruptCheckpoint("bitmap holds another number of tasks than the header says")
    return bm
