"""The one CSV schema every source writes, and the task descriptor every worker reads.

Every witness written by the reference worker (and by the example workers) has exactly the
columns in COLUMNS, so results from different sources and languages merge with `cat`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

COLUMNS = (
    "source",
    "source_id",
    "name",
    "category",
    "lat",
    "lon",
    "address",
    "phone",
    "website",
    "scraped_at",
)


class DescriptorError(ValueError):
    """A task descriptor that is not the one-line JSON object the mount serves."""


@dataclass(frozen=True)
class Place:
    """One result row; coordinates are kept as text so they are written exactly as received."""

    source: str
    source_id: str
    name: str
    category: str
    lat: str
    lon: str
    address: str = ""
    phone: str = ""
    website: str = ""
    scraped_at: str = ""

    def row(self) -> list[str]:
        return [_clean(v) for v in astuple(self)]


def _clean(value: str) -> str:
    """One line per record: collapse line breaks and runs of spaces (CSV stays greppable)."""
    return " ".join(value.split())


def to_csv(places: Iterable[Place]) -> bytes:
    """The witness bytes: header plus one line per place, `\\n` line ends, minimal quoting."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for p in places:
        w.writerow(p.row())
    return buf.getvalue().encode("utf-8")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TaskInfo:
    """A parsed descriptor; coordinates stay exact decimals (never float drift in a query)."""

    rel: str
    phrase: str
    lat: Decimal
    lon: Decimal
    south: Decimal
    west: Decimal
    north: Decimal
    east: Decimal

    @classmethod
    def parse(cls, data: bytes | str) -> TaskInfo:
        try:
            d: Any = json.loads(data, parse_float=Decimal, parse_int=Decimal)
        except (ValueError, UnicodeDecodeError) as e:
            raise DescriptorError(f"task descriptor is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise DescriptorError("task descriptor is not a JSON object")
        for key in ("phrase", "rel"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise DescriptorError(f"task descriptor: {key!r} missing or not a string")
        nums = {}
        for key in ("lat", "lon", "south", "west", "north", "east"):
            v = d.get(key)
            if not isinstance(v, Decimal):
                raise DescriptorError(f"task descriptor: {key!r} missing or not a number")
            nums[key] = v
        if not (nums["south"] < nums["north"] and nums["west"] < nums["east"]):
            raise DescriptorError("task descriptor: empty bounding box")
        return cls(rel=d["rel"], phrase=d["phrase"], **nums)

    def contains(self, lat: Decimal, lon: Decimal) -> bool:
        """Half-open like the mission grid: a point on the north/east edge is the next tile's."""
        return self.south <= lat < self.north and self.west <= lon < self.east


def fmt_decimal(d: Decimal) -> str:
    """Plain positional notation (never an exponent), as the mount writes coordinates."""
    return format(d, "f")
