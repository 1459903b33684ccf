"""Deterministic, offline rows derived from the task: demos, load tests, example workers.

The rows of a task depend only on its descriptor (apart from `scraped_at`): 0 to 5 places at
fixed points inside the tile. `python -m scraper.synthetic [DESCRIPTOR]` prints the CSV of one
task (descriptor from the file or stdin), so a worker in any language can use it as a source.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from decimal import Decimal

from .schema import DescriptorError, Place, TaskInfo, fmt_decimal, to_csv, utc_now
from .source import wait_or_stop

MAX_ROWS = 5
MICRO = Decimal("0.000001")


class SyntheticSource:
    name: str = "synthetic"
    attribution: str | None = None

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # simulated latency per task, to watch a progress bar or a lease

    def fetch(self, task: TaskInfo, stop: threading.Event) -> list[Place]:
        wait_or_stop(stop, self.delay)
        return synthetic_rows(task, utc_now())


def synthetic_rows(task: TaskInfo, scraped_at: str) -> list[Place]:
    digest = hashlib.sha256(f"{task.rel}\0{task.phrase}".encode()).digest()
    n = digest[0] % (MAX_ROWS + 1)
    title = task.phrase.title()
    rows = []
    for i in range(n):
        h = hashlib.sha256(digest + bytes([i])).digest()
        rows.append(
            Place(
                source="synthetic",
                source_id=f"{digest[:6].hex()}-{i}",
                name=f"{title} {i + 1}",
                category=task.phrase,
                lat=fmt_decimal(_inside(task.south, task.north, h[0:4])),
                lon=fmt_decimal(_inside(task.west, task.east, h[4:8])),
                address=f"{int.from_bytes(h[8:10], 'big') % 999 + 1} Synthetic Street",
                phone=f"+1 555 {int.from_bytes(h[10:12], 'big') % 10000:04d}",
                website=f"https://example.invalid/{digest[:6].hex()}/{i}",
                scraped_at=scraped_at,
            )
        )
    return rows


def _inside(lo: Decimal, hi: Decimal, seed: bytes) -> Decimal:
    """A point of [lo, hi) on a micro-degree grid, chosen by `seed`."""
    steps = int((hi - lo) / MICRO)
    return (lo + int.from_bytes(seed, "big") % steps * MICRO).quantize(MICRO)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m scraper.synthetic [DESCRIPTOR]  (default: stdin)", file=sys.stderr)
        return 2
    try:
        if args:
            with open(args[0], "rb") as f:
                raw = f.read()
        else:
            raw = sys.stdin.buffer.read()
        task = TaskInfo.parse(raw)
    except (OSError, DescriptorError) as e:
        print(f"scraper.synthetic: {args[0] if args else 'stdin'}: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(to_csv(synthetic_rows(task, utc_now())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
