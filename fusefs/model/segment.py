"""Protocol v2's pure parts: windows, node-manifest lines, window segments, rendezvous.

Pure (no I/O, no clock): engine/factlog.py does the requests and the timing. Why each piece:

- Windows: `w = floor(server_time / W)`. Every node names a window from the S3 server's clock
  (Date headers), so a node whose own clock is minutes off still writes into, and reads, the
  right window.
- A node manifest line is `rel<TAB>sha256<TAB>size` (the sha256 is empty for a fact found by a
  verification listing, which gives no hash): the line format of protocol v1's manifests.
- A segment is the merge of every node manifest of one window, written once: a first line of
  JSON (`v`, `window`, `manifests`: the manifest names merged, `workers`: worker -> lines it
  uploaded, `sha256`: of the rest), then the lines sorted and deduplicated by rel. A body whose
  hash does not match is corrupt, which readers treat like a missing segment.
- Rendezvous (highest blake2b(worker, key)): every node ranks the same crew the same way for a
  window (or a shard) without talking to the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

VERSION = 2


class CorruptSegment(ValueError):
    """A segment body that does not decode or whose payload hash does not match."""


def window_of(t: float, width: float) -> int:
    """The window holding server time `t`."""
    return math.floor(t / width)


def window_end(w: int, width: float) -> float:
    """Server time at which window `w` closes."""
    return (w + 1) * width


def manifest_name(worker: str, seq: int) -> str:
    """A node manifest's name inside `log/{w}/`."""
    return f"{worker}-{seq:08d}.txt"


def manifest_worker(name: str) -> str | None:
    """The worker of a node manifest name; None for anything else (not ours to judge)."""
    if not name.endswith(".txt"):
        return None
    worker, _, seq = name.removesuffix(".txt").rpartition("-")
    return worker if worker and seq.isdigit() else None


def line(rel: str, sha256: str, size: int | None) -> str:
    """A manifest/segment line (a missing size is written as empty)."""
    return f"{rel}\t{sha256}\t{'' if size is None else size}"


@dataclass(frozen=True)
class Fact:
    """One parsed line: a witness in the bucket, its hash (or "") and size (or None)."""

    rel: str
    sha256: str
    size: int | None


def parse_line(text: str) -> Fact | None:
    """A line of a manifest or segment (older forms: `rel<TAB>sha256`, `rel`); None if empty."""
    rel, _, rest = text.partition("\t")
    if not rel:
        return None
    sha, _, size = rest.partition("\t")
    sha = sha if len(sha) == 64 else ""
    return Fact(rel, sha, int(size) if size.isascii() and size.isdigit() else None)


def parse_lines(body: bytes) -> list[Fact]:
    out = []
    for text in body.decode("utf-8", "surrogateescape").splitlines():
        fact = parse_line(text)
        if fact is not None:
            out.append(fact)
    return out


@dataclass
class Segment:
    """A decoded segment: the window, what it merged, and its facts in rel order."""

    window: int
    manifests: list[str]
    workers: dict[str, int]
    facts: list[Fact] = field(default_factory=list)


def merge(window: int, manifests: dict[str, list[Fact]]) -> Segment:
    """The segment of a window from its node manifests (name -> facts): dedup by rel, a line
    with a hash preferred; `workers` counts the lines each worker uploaded (hashed lines: a
    verification's finds are not its work)."""
    best: dict[str, Fact] = {}
    workers: dict[str, int] = {}
    for name in sorted(manifests):
        worker = manifest_worker(name) or "?"
        facts = manifests[name]
        workers[worker] = workers.get(worker, 0) + sum(1 for f in facts if f.sha256)
        for f in facts:
            old = best.get(f.rel)
            if old is None or (not old.sha256 and f.sha256):
                best[f.rel] = f
    facts = [best[rel] for rel in sorted(best)]
    return Segment(window, sorted(manifests), workers, facts)


def encode(seg: Segment) -> bytes:
    payload = "".join(line(f.rel, f.sha256, f.size) + "\n" for f in seg.facts)
    raw = payload.encode("utf-8", "surrogateescape")
    header = {
        "v": VERSION,
        "window": seg.window,
        "manifests": seg.manifests,
        "workers": seg.workers,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode() + b"\n" + raw


def decode(body: bytes, window: int | None = None) -> Segment:
    """A segment body; CorruptSegment if it is not one (of `window`, when given)."""
    head, nl, raw = body.partition(b"\n")
    try:
        h = json.loads(head)
        ok = (
            nl
            and h["v"] == VERSION
            and isinstance(h["window"], int)
            and (window is None or h["window"] == window)
            and hashlib.sha256(raw).hexdigest() == h["sha256"]
        )
        if not ok:
            raise CorruptSegment(f"segment {window}: bad header or hash")
        names = [str(n) for n in h["manifests"]]
        workers = {str(k): int(v) for k, v in h["workers"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptSegment(f"segment {window}: {e}") from None
    return Segment(h["window"], names, workers, parse_lines(raw))


def rendezvous(key: str, members: Iterable[str]) -> list[str]:
    """Members ranked for `key`, highest blake2b(member, key) first (same order on every node
    that knows the same members; ties impossible in practice, broken by name)."""

    def score(m: str) -> tuple[bytes, str]:
        return hashlib.blake2b(f"{m}\0{key}".encode(), digest_size=8).digest(), m

    return sorted(set(members), key=score, reverse=True)
