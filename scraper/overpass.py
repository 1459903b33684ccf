"""OpenStreetMap through the Overpass API: places in a tile whose name or tags match a phrase.

One POST per task to an Overpass endpoint (default the main public instance), spaced by a
process-wide rate limit (1 request/s by default: the public instances serve a few slots per
IP), with bounded retries and exponential backoff on 429/502/503/504, timeouts, truncated or
malformed answers and Overpass "runtime error" remarks: a witness is write-once, so a partial
answer must never be committed. Elements are normalised to the scraper's one CSV schema.

Data licence: OpenStreetMap data is © OpenStreetMap contributors and available under the Open
Database License (ODbL 1.0, https://www.openstreetmap.org/copyright). Anything published from
the witnesses must credit "© OpenStreetMap contributors" and share derived databases alike.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any

from . import __version__
from .ratelimit import RateLimiter
from .schema import Place, TaskInfo, fmt_decimal, utc_now
from .source import SourceError, wait_or_stop

DEFAULT_URL = "https://overpass-api.de/api/interpreter"
ATTRIBUTION = (
    "Data © OpenStreetMap contributors, ODbL 1.0 (https://www.openstreetmap.org/copyright)"
)
RETRY_STATUS = {429, 502, 503, 504}
QUERY_TIMEOUT = 25  # seconds the server may spend ([timeout:25], the Overpass default is 180)
MAX_BACKOFF = 120.0

# Keys whose values say what a place is, in the order used for the `category` column.
CATEGORY_KEYS = (
    "amenity",
    "shop",
    "craft",
    "office",
    "healthcare",
    "tourism",
    "leisure",
    "cuisine",
)
# Phrases whose OSM tag is not simply the phrase with underscores (that case is always matched).
PHRASE_TAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "coffee shop": (("amenity", "cafe"),),
    "coffee": (("amenity", "cafe"),),
    "bar": (("amenity", "bar"), ("amenity", "pub")),
    "doctor": (("amenity", "doctors"), ("healthcare", "doctor")),
    "gym": (("leisure", "fitness_centre"),),
    "grocery": (("shop", "supermarket"), ("shop", "convenience"), ("shop", "greengrocer")),
    "hair salon": (("shop", "hairdresser"),),
    "barber": (("shop", "hairdresser"),),
    "gas station": (("amenity", "fuel"),),
    "mechanic": (("shop", "car_repair"),),
    "hotel": (("tourism", "hotel"),),
    "lawyer": (("office", "lawyer"),),
    "accountant": (("office", "accountant"),),
    "pharmacy": (("amenity", "pharmacy"), ("healthcare", "pharmacy")),
}


class IncompleteAnswer(SourceError):
    """Overpass answered 200 but says it stopped early (timeout, memory): never commit it."""


_ERE_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


def user_agent(contact: str | None = None) -> str:
    """Overpass and OSM ask clients to identify themselves; add a contact for heavy use."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    ua = f"missionfs-scrape/{__version__} (missionfs reference worker; Python-urllib/{py})"
    return f"{ua} contact: {contact}" if contact else ua


def ql_string(text: str) -> str:
    """A double-quoted Overpass QL string literal."""
    esc = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{esc}"'


def slug(phrase: str) -> str:
    return "_".join(phrase.lower().split())


def build_query(task: TaskInfo, timeout: int = QUERY_TIMEOUT) -> str:
    """Overpass QL: nodes, ways and relations in the tile whose name contains the phrase
    (case-insensitive) or whose category tag is the phrase (or a known synonym); ways and
    relations come with their center, so every element has one point."""
    bbox = ",".join(fmt_decimal(v) for v in (task.south, task.west, task.north, task.east))
    name_re = _ERE_SPECIAL.sub(r"\\\1", " ".join(task.phrase.split()))
    s = slug(task.phrase)
    values = sorted({s, s[:-1]} if s.endswith("s") and len(s) > 3 else {s})
    keys = "|".join(CATEGORY_KEYS)
    values_re = "|".join(_ERE_SPECIAL.sub(r"\\\1", v) for v in values)
    lines = [
        f"[out:json][timeout:{timeout}][bbox:{bbox}];",
        "(",
        f"  nwr[name~{ql_string(name_re)},i];",
        f"  nwr[~{ql_string(f'^({keys})$')}~{ql_string(f'^({values_re})$')},i];",
    ]
    for key, value in PHRASE_TAGS.get(" ".join(task.phrase.lower().split()), ()):
        lines.append(f"  nwr[{ql_string(key)}={ql_string(value)}];")
    lines += [");", "out center tags;"]
    return "\n".join(lines) + "\n"


def normalise(doc: Any, task: TaskInfo, scraped_at: str) -> list[Place]:
    """Overpass JSON -> rows of the schema. Raises SourceError for anything but a complete
    answer. Points on the tile's north or east edge are left to the neighbouring tile."""
    if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
        raise SourceError("overpass: unexpected answer: no 'elements' list")
    remark = doc.get("remark")
    if isinstance(remark, str) and "error" in remark.lower():
        raise IncompleteAnswer(f"overpass: incomplete answer: {' '.join(remark.split())}")
    rows: list[Place] = []
    seen: set[str] = set()
    for el in doc["elements"]:
        if not isinstance(el, dict) or el.get("type") not in ("node", "way", "relation"):
            continue
        point = el if el["type"] == "node" else el.get("center")
        if not isinstance(point, dict):
            continue  # a way or relation without geometry: nothing to place
        lat, lon = point.get("lat"), point.get("lon")
        if not isinstance(lat, Decimal) or not isinstance(lon, Decimal):
            continue
        if el["type"] == "node" and not task.contains(lat, lon):
            continue  # on the north/east edge: the neighbouring tile's (a way may straddle)
        raw_tags = el.get("tags")
        tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
        source_id = f"{el['type']}/{el.get('id')}"
        if source_id in seen:
            continue
        seen.add(source_id)
        rows.append(
            Place(
                source="osm",
                source_id=source_id,
                name=_tag(tags, "name", "brand", "operator"),
                category=_category(tags),
                lat=fmt_decimal(lat),
                lon=fmt_decimal(lon),
                address=address(tags),
                phone=_tag(tags, "phone", "contact:phone"),
                website=_tag(tags, "website", "contact:website", "url"),
                scraped_at=scraped_at,
            )
        )
    return rows


def _tag(tags: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = tags.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""


def _category(tags: dict[str, Any]) -> str:
    for k in CATEGORY_KEYS:
        v = _tag(tags, k)
        if v:
            return f"{k}={v}"
    return ""


def address(tags: dict[str, Any]) -> str:
    """`addr:full`, else "housenumber street, city, state postcode" from the addr:* tags."""
    full = _tag(tags, "addr:full")
    if full:
        return full
    street = " ".join(
        x for x in (_tag(tags, "addr:housenumber"), _tag(tags, "addr:street", "addr:place")) if x
    )
    city = _tag(tags, "addr:city", "addr:suburb", "addr:hamlet")
    region = " ".join(x for x in (_tag(tags, "addr:state"), _tag(tags, "addr:postcode")) if x)
    return ", ".join(x for x in (street, city, region) if x)


class OverpassSource:
    """An Overpass API client shared by all workers of a process (one rate limit for all)."""

    name: str = "overpass"
    attribution: str | None = ATTRIBUTION

    def __init__(
        self,
        url: str = DEFAULT_URL,
        rate: float = 1.0,
        retries: int = 4,
        backoff: float = 2.0,
        timeout: float = 60.0,
        contact: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"overpass URL {url!r}: not an http(s) URL")
        self.url = url
        self.limiter = RateLimiter(rate)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.user_agent = user_agent(contact)
        self.requests = 0
        self._lock = threading.Lock()

    def fetch(self, task: TaskInfo, stop: threading.Event) -> list[Place]:
        body = urllib.parse.urlencode({"data": build_query(task)}).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait_or_stop(stop, self._delay(attempt))
            self.limiter.acquire(stop)
            with self._lock:
                self.requests += 1
            try:
                status, headers, raw = self._post(body)
            except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
                last = f"{self.url}: {_reason(e)}"
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status} from {self.url}"
                retry_after = _retry_after(headers.get("Retry-After"))
                if status == 429:  # over quota: the whole process waits, not only this thread
                    self.limiter.pause(max(retry_after, self._delay(attempt + 1)))
                elif retry_after:
                    self.limiter.pause(retry_after)
                continue
            if status != 200:
                raise SourceError(f"overpass: HTTP {status} from {self.url}: {_error_text(raw)}")
            try:
                doc = json.loads(raw, parse_float=Decimal)
            except (ValueError, UnicodeDecodeError) as e:
                last = f"malformed JSON from {self.url}: {e}"
                continue
            try:
                return normalise(doc, task, utc_now())
            except IncompleteAnswer as e:  # e.g. "Query timed out": transient, try again
                last = str(e).removeprefix("overpass: ")
        raise SourceError(f"overpass: {last} (after {self.retries + 1} attempts)")

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter on top (never shorter than the base schedule)."""
        base = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
        return base + random.uniform(0, self.backoff / 2)

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "User-Agent": self.user_agent,
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, dict(e.headers.items()), e.read()


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_BACKOFF, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: fall back to our own backoff


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None) or e
    return str(r) or type(r).__name__


def _error_text(raw: bytes) -> str:
    """Overpass explains a refused query in an HTML page; keep its first error line."""
    text = raw.decode("utf-8", "replace")
    m = re.search(r"<strong[^>]*>Error</strong>:\s*(.*?)</p>", text, re.S)
    text = m.group(1) if m else re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return (text[:200] + "…") if len(text) > 200 else text or "(empty body)"
