"""Mission files (TOML) -> a Mission: the task universe and the Intent bitmap.

Every refusal names the file, the key, the value and the reason, in one line, before anything is
mounted. Numbers are parsed as Decimal so a grid of any size formats without float drift.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from fusefs.model.codec import (
    NAME_MAX,
    SUFFIX,
    Axis,
    TaskSpace,
    decode_phrase,
    encode_phrase,
    parse_scaled,
)

CLAIM_MODES = ("strict", "optimistic", "local")
MAX_TASKS = 2**32 - 1  # task ids live in 32-bit roaring bitmaps
MAX_FILE_BYTES = 16 * 2**20  # a mission file is a few lines; phrases lists stay far below
MAX_DECIMALS = 9  # a nanodegree is ~0.1 mm: more is a typo (and scaled ints would explode)
MAX_MAGNITUDE = Decimal(1000)  # coordinates lie within +-180, a step within 360
_NAME_RE = re.compile(r"^[a-z0-9-]+$")


class MissionError(ValueError):
    """A mission file that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class GridSpec:
    south: int
    west: int
    rows: int
    cols: int
    step: int
    scale: int
    phrases: tuple[str, ...]


@dataclass
class Mission:
    name: str
    path: Path
    space: TaskSpace
    intent: BitMap
    grid: GridSpec | None
    s3: str | None = None
    intent_dir: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    tree: list[tuple[int, int, str]] = field(default_factory=list)
    step: int = 1
    scale: int = 0
    claims: str = "strict"  # with S3: "strict" | "optimistic" fleet leases, or "local" only


def load_mission(path: str | os.PathLike[str]) -> Mission:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded: never a whole huge file in memory
        if len(data) > MAX_FILE_BYTES:
            raise MissionError(
                f"{p}: larger than {MAX_FILE_BYTES // 2**20} MiB: not a mission file"
                " (list big intents as an [intent] dir)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise MissionError(f"{p}: no such mission file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MissionError(f"{p}: cannot read mission file: {e}") from None
    return parse_mission(text, p)


def parse_mission(text: str, path: Path) -> Mission:
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as e:
        raise MissionError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise MissionError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise MissionError(f"{path}: not valid TOML: {e}") from None
    ctx = _Ctx(path)
    ctx.allowed(doc, "", {"name", "grid", "store", "intent"})
    name = ctx.string(doc, "", "name")
    if not _NAME_RE.match(name):
        ctx.fail("name", name, "must match [a-z0-9-]+ (it is also the S3 sub-prefix)")
    grid = _parse_grid(ctx, doc["grid"]) if "grid" in doc else None
    if "grid" in doc and not isinstance(doc["grid"], dict):
        ctx.fail("grid", doc["grid"], "must be a table [grid]")
    s3 = None
    if "store" in doc:
        store = ctx.table(doc, "store")
        ctx.allowed(store, "store", {"s3", "claims"})
        if "s3" in store:
            s3 = ctx.string(store, "store", "s3")
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", s3):
                ctx.fail("store.s3", s3, "must look like s3://bucket/optional/prefix")
        if "claims" in store:
            claims = ctx.string(store, "store", "claims")
            if claims not in CLAIM_MODES:
                ctx.fail("store.claims", claims, f"must be one of {', '.join(CLAIM_MODES)}")
    claims = "strict"
    if "store" in doc and "claims" in doc["store"]:
        claims = doc["store"]["claims"]
    intent_dir, intent_step = None, None
    if "intent" in doc:
        intent = ctx.table(doc, "intent")
        ctx.allowed(intent, "intent", {"dir", "step"})
        d = Path(ctx.string(intent, "intent", "dir"))
        intent_dir = d if d.is_absolute() else path.parent / d
        if not intent_dir.is_dir():
            ctx.fail("intent.dir", str(d), f"is not a directory (looked at {intent_dir})")
        if "step" in intent:
            intent_step = ctx.decimal(intent, "intent", "step")
    if grid is None and intent_dir is None and not (s3 and intent_step is not None):
        ctx.fail(
            "grid",
            "(missing)",
            "a mission needs a [grid] table or an [intent] dir"
            " (or [intent] step with an intent/ tree in the [store] s3 bucket)",
        )
    if grid is not None:
        step, scale = grid.step, grid.scale
        if intent_step is not None and _scaled(intent_step, scale) != step:
            ctx.fail("intent.step", intent_step, "must equal [grid] step")
    else:
        if intent_step is None:
            ctx.fail("intent.step", "(missing)", "needed when there is no [grid] table")
        assert intent_step is not None
        scale = _decimals(intent_step)
        step = _scaled(intent_step, scale)
        if step <= 0:
            ctx.fail("intent.step", intent_step, "must be positive")
    tree = list(_walk_intent(ctx, intent_dir, scale, step, grid)) if intent_dir else []
    space, intent_bm = _build_universe(ctx, grid, tree, scale, step)
    return Mission(
        name, path, space, intent_bm, grid, s3, intent_dir, doc, tree, step, scale, claims
    )


def extend_intent(mission: Mission, rels: Iterable[str], source: str) -> Mission:
    """The mission united with more intent-tree entries (e.g. the bucket's intent/ prefix)."""
    ctx = _Ctx(mission.path)
    origin_lat = mission.grid.south if mission.grid else 0
    origin_lon = mission.grid.west if mission.grid else 0
    extra = []
    for rel in rels:
        parts = rel.split("/")
        lat = parse_scaled(parts[0], mission.scale) if len(parts) == 3 else None
        lon = parse_scaled(parts[1], mission.scale) if len(parts) == 3 else None
        stem = (
            parts[2].removesuffix(SUFFIX) if len(parts) == 3 and parts[2].endswith(SUFFIX) else None
        )
        phrase = decode_phrase(stem) if stem is not None else None
        if lat is None or lon is None or phrase is None:
            ctx.fail(
                "intent", source, f"{rel} is not LAT/LON/PHRASE.csv with {mission.scale} decimals"
            )
        assert lat is not None and lon is not None and phrase is not None
        if (lat - origin_lat) % mission.step or (lon - origin_lon) % mission.step:
            ctx.fail("intent", source, f"{rel} is not a tile corner of the grid")
        if not (
            -90 * 10**mission.scale <= lat < 90 * 10**mission.scale
            and -180 * 10**mission.scale <= lon < 180 * 10**mission.scale
        ):
            ctx.fail("intent", source, f"{rel} is outside the globe")
        extra.append((lat, lon, phrase))
    if not extra:
        return mission
    tree = mission.tree + extra
    space, intent_bm = _build_universe(ctx, mission.grid, tree, mission.scale, mission.step)
    return Mission(
        mission.name,
        mission.path,
        space,
        intent_bm,
        mission.grid,
        mission.s3,
        mission.intent_dir,
        mission.raw,
        tree,
        mission.step,
        mission.scale,
        mission.claims,
    )


class _Ctx:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, value: object, reason: str) -> None:
        raise MissionError(f"{self.path}: {key} = {_show(value)}: {reason}")

    def allowed(self, table: dict[str, Any], prefix: str, keys: set[str]) -> None:
        for k in table:
            if k not in keys:
                where = f"{prefix}.{k}" if prefix else k
                self.fail(
                    where, table[k], f"unknown key (expected one of: {', '.join(sorted(keys))})"
                )

    def table(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        v = doc[key]
        if not isinstance(v, dict):
            self.fail(key, v, f"must be a table [{key}]")
        return v

    def string(self, table: dict[str, Any], prefix: str, key: str) -> str:
        where = f"{prefix}.{key}" if prefix else key
        if key not in table:
            self.fail(where, "(missing)", "required")
        v = table[key]
        if not isinstance(v, str):
            self.fail(where, v, "must be a string")
        return v

    def decimal(self, table: dict[str, Any], prefix: str, key: str) -> Decimal:
        where = f"{prefix}.{key}"
        if key not in table:
            self.fail(where, "(missing)", "required")
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | Decimal):
            self.fail(where, v, "must be a number")
        try:
            d = Decimal(v)
        except InvalidOperation:
            self.fail(where, v, "must be a number")
        if not d.is_finite():
            self.fail(where, v, "must be a finite number")
        if d.copy_abs() > MAX_MAGNITUDE:  # exact (abs() overflows): 1e99999999 never scaled
            self.fail(where, v, f"out of range (a degree value within +-{MAX_MAGNITUDE})")
        if _decimals(d) > MAX_DECIMALS:
            self.fail(where, v, f"at most {MAX_DECIMALS} decimals are supported")
        return d


def _show(value: object) -> str:
    if isinstance(value, str):
        return value if value.startswith("(") else repr(value)
    return str(value)


def _decimals(d: Decimal) -> int:
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def _scaled(d: Decimal, scale: int) -> int:
    return int(d.scaleb(scale))


def _parse_grid(ctx: _Ctx, grid: Any) -> GridSpec:
    if not isinstance(grid, dict):
        ctx.fail("grid", grid, "must be a table [grid]")
    ctx.allowed(grid, "grid", {"south", "west", "north", "east", "step", "phrases"})
    step_d = ctx.decimal(grid, "grid", "step")
    if step_d <= 0:
        ctx.fail("grid.step", step_d, "must be positive")
    scale = _decimals(step_d)
    if scale > 9:
        ctx.fail("grid.step", step_d, "at most 9 decimals are supported")
    bounds = {}
    for key in ("south", "west", "north", "east"):
        d = ctx.decimal(grid, "grid", key)
        if key in ("south", "west") and _decimals(d) > scale:
            ctx.fail(f"grid.{key}", d, f"has more decimals than step ({step_d})")
        bounds[key] = d
    lat_ok = Decimal(-90) <= bounds["south"] < bounds["north"] <= Decimal(90)
    if not lat_ok:
        ctx.fail(
            "grid.south",
            bounds["south"],
            f"need -90 <= south < north <= 90 (north = {bounds['north']})",
        )
    if not Decimal(-180) <= bounds["west"] < bounds["east"] <= Decimal(180):
        ctx.fail(
            "grid.west",
            bounds["west"],
            f"need -180 <= west < east <= 180 (east = {bounds['east']})",
        )
    if "phrases" not in grid:
        ctx.fail("grid.phrases", "(missing)", "required: a list of search phrases")
    phrases = grid["phrases"]
    if not isinstance(phrases, list) or not phrases:
        ctx.fail("grid.phrases", phrases, "must be a non-empty list of strings")
    seen: set[str] = set()
    for ph in phrases:
        _check_phrase(ctx, "grid.phrases", ph)
        if ph in seen:
            ctx.fail("grid.phrases", ph, "listed twice")
        seen.add(ph)
    rows = int(
        ((bounds["north"] - bounds["south"]) / step_d).to_integral_value(rounding="ROUND_CEILING")
    )
    cols = int(
        ((bounds["east"] - bounds["west"]) / step_d).to_integral_value(rounding="ROUND_CEILING")
    )
    return GridSpec(
        _scaled(bounds["south"], scale),
        _scaled(bounds["west"], scale),
        rows,
        cols,
        _scaled(step_d, scale),
        scale,
        tuple(phrases),
    )


def _check_phrase(ctx: _Ctx, key: str, ph: object) -> None:
    if not isinstance(ph, str) or not ph.strip():
        ctx.fail(key, ph, "each phrase must be a non-empty string")
    assert isinstance(ph, str)
    if len((encode_phrase(ph) + SUFFIX).encode("utf-8", "surrogatepass")) > NAME_MAX:
        ctx.fail(key, ph, f"too long: its file name would exceed {NAME_MAX} bytes")


def _walk_intent(
    ctx: _Ctx, root: Path | None, scale: int, step: int, grid: GridSpec | None
) -> Iterable[tuple[int, int, str]]:
    """Yield (lat, lon, phrase) of every marker file intent/{lat}/{lon}/{phrase}.csv."""
    assert root is not None
    for lat_e in sorted(os.scandir(root), key=lambda e: e.name):
        lat = _tree_coord(ctx, root, lat_e, scale, step, grid, is_lat=True)
        for lon_e in sorted(os.scandir(lat_e.path), key=lambda e: e.name):
            lon = _tree_coord(ctx, root, lon_e, scale, step, grid, is_lat=False)
            for f in os.scandir(lon_e.path):
                rel = f"{lat_e.name}/{lon_e.name}/{f.name}"
                stem = f.name[: -len(SUFFIX)] if f.name.endswith(SUFFIX) else None
                phrase = decode_phrase(stem) if stem is not None else None
                if phrase is None or not f.is_file():
                    ctx.fail("intent.dir", str(root), f"{rel} is not a PHRASE.csv marker file")
                assert phrase is not None
                yield lat, lon, phrase


def _tree_coord(
    ctx: _Ctx,
    root: Path,
    entry: os.DirEntry[str],
    scale: int,
    step: int,
    grid: GridSpec | None,
    *,
    is_lat: bool,
) -> int:
    rel = os.path.relpath(entry.path, root)
    v = parse_scaled(entry.name, scale)
    if v is None or not entry.is_dir():
        ctx.fail("intent.dir", str(root), f"{rel} is not a directory named with {scale} decimals")
    assert v is not None
    origin = (grid.south if is_lat else grid.west) if grid else 0
    lo, hi = (-90 * 10**scale, 90 * 10**scale) if is_lat else (-180 * 10**scale, 180 * 10**scale)
    if (v - origin) % step or not lo <= v < hi:
        ctx.fail("intent.dir", str(root), f"{rel} is not a tile corner of the grid (step {step})")
    return v


def _build_universe(
    ctx: _Ctx, grid: GridSpec | None, tree: list[tuple[int, int, str]], scale: int, step: int
) -> tuple[TaskSpace, BitMap]:
    lats = [t[0] for t in tree]
    lons = [t[1] for t in tree]
    if grid is None and not tree:  # intent comes later (from the bucket): an empty universe
        return TaskSpace(Axis(0, step, 0, scale), Axis(0, step, 0, scale), ()), BitMap()
    phrases = list(grid.phrases) if grid else []
    known = set(phrases)
    for _, _, ph in tree:
        if ph not in known:
            known.add(ph)
            phrases.append(ph)
    if grid:
        lats += [grid.south, grid.south + (grid.rows - 1) * step]
        lons += [grid.west, grid.west + (grid.cols - 1) * step]
    lat = Axis(min(lats), step, (max(lats) - min(lats)) // step + 1, scale)
    lon = Axis(min(lons), step, (max(lons) - min(lons)) // step + 1, scale)
    space = TaskSpace(lat, lon, tuple(phrases))
    if space.size > MAX_TASKS:
        ctx.fail(
            "grid",
            f"{lat.n} x {lon.n} tiles x {len(phrases)} phrases",
            f"{space.size} tasks is more than the supported {MAX_TASKS}",
        )
    intent = BitMap()
    if grid:
        intent = _grid_intent(space, grid)
    if tree:
        pidx = {p: i for i, p in enumerate(phrases)}
        ids = []
        for la, lo, ph in tree:
            r, c = lat.index_of_value(la), lon.index_of_value(lo)
            assert r is not None and c is not None
            ids.append(space.task_id(r, c, pidx[ph]))
        intent |= BitMap(ids)
    intent.run_optimize()
    return space, intent


def _grid_intent(space: TaskSpace, grid: GridSpec) -> BitMap:
    """All grid tiles x grid phrases, built one row template at a time (fast for 10^7 tiles)."""
    r0 = space.lat.index_of_value(grid.south)
    c0 = space.lon.index_of_value(grid.west)
    assert r0 is not None and c0 is not None
    rows, cols = grid.rows, grid.cols
    nph = len(grid.phrases)
    template = BitMap()
    if nph == space.nphr:
        template.add_range(c0 * space.nphr, (c0 + cols) * space.nphr)
    else:
        for c in range(c0, c0 + cols):
            template.add_range(c * space.nphr, c * space.nphr + nph)
    intent = BitMap()
    if cols == space.lon.n and nph == space.nphr:
        intent.add_range(r0 * space.row_size, (r0 + rows) * space.row_size)
        return intent
    for r in range(r0, r0 + rows):
        intent |= template.shift(r * space.row_size)
    return intent
