"""fsck's `segments` check (protocol v2, docs/protocol.md): the bucket's window segments.

Segments are derived state (each merges one window's node manifests), so fsck judges them by
what they are made from, not by the witness listing (the `checkpoints` check does that):

- corrupt: a body that does not decode or whose hash does not match (readers treat it as
  missing and rebuild it; fsck says so);
- missing: a closed window that has node manifests under `log/` but no segment while a later
  window has one (its compactor and every fallback failed; windows nobody wrote in have no
  segment, by design);
- orphan: such a window whose manifests' facts are all in segments (a manifest PUT that timed
  out, so its writer published the lines again later, then landed after the window was passed
  over as empty). A note: nothing is hidden;
- unmerged tail: closed windows after the newest segment (a fleet that stopped: the last node
  to unmount published its manifest, nobody was left to merge it). Not a problem: nothing is
  lost, the next node to run merges them as it reads; fsck notes them and `--repair` merges.

Repair: each is rebuilt from the window's node manifests (If-Match on the corrupt object's ETag,
If-None-Match for a missing one), exactly as a compactor would. A window whose manifests are
gone too cannot be rebuilt here; its witnesses are in the listing, and the `checkpoints` check
(and its repair) covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusefs.model import segment as sg
from fusefs.objects.base import NotFound
from fusefs.objects.s3store import S3Store


@dataclass(frozen=True)
class SegmentFinding:
    kind: str  # "segment-corrupt", "segment-missing", "segment-orphan", "segment-unmerged"
    where: str
    what: str
    window: int
    etag: str | None = None  # of the corrupt object (the repair replaces only that one)


def audit(s3: S3Store, period: float, now: float) -> list[SegmentFinding]:
    """Every segment read and checked, and the closed windows of `log/` without one (a LIST of
    each area and a GET per segment; retention keeps both to about an hour)."""
    findings = []
    have = list(s3.segment_windows())
    merged: set[str] = set()  # every rel the segments hold
    for w in have:
        found = s3.get_segment(w)
        if found is None:
            continue  # deleted since the listing: a reader rebuilds it
        try:
            merged.update(f.rel for f in sg.decode(found[0], w).facts)
        except sg.CorruptSegment as e:
            findings.append(SegmentFinding("segment-corrupt", _where(s3, w), str(e), w, found[1]))
    closed = sg.window_of(now, period) - 1  # the current and the last window may be in work
    have_set = set(have)
    logged = sorted({w for w, _ in s3.log_windows_before(closed, limit=100_000)})
    newest = max(have, default=-1)
    for w in logged:
        if w in have_set:
            continue
        if w < newest and _merged_elsewhere(s3, w, merged):
            what = "node manifests whose facts are all in segments (a late PUT): nothing hidden"
            findings.append(SegmentFinding("segment-orphan", _where(s3, w), what, w))
        elif w < newest:
            what = "node manifests but no segment: nobody has merged this window"
            findings.append(SegmentFinding("segment-missing", _where(s3, w), what, w))
        else:
            what = "node manifests after the newest segment: merged by the next node to run"
            findings.append(SegmentFinding("segment-unmerged", _where(s3, w), what, w))
    return findings


def _merged_elsewhere(s3: S3Store, w: int, merged: set[str]) -> bool:
    """Are the facts of window w's node manifests all in segments (blocking: a GET each)?"""
    for name, key in s3.node_manifests(w):
        if sg.manifest_worker(name) is None:
            continue
        try:
            facts = sg.parse_lines(s3.get(key)[0])
        except NotFound:
            continue  # removed by retention since the listing
        if any(f.rel not in merged for f in facts):
            return False
    return True


def rebuild(s3: S3Store, finding: SegmentFinding) -> tuple[bool, str]:
    """Merge the window's node manifests into its segment (blocking); whether it is sound
    now, and what was done."""
    manifests = {
        name: sg.parse_lines(s3.get(key)[0])
        for name, key in s3.node_manifests(finding.window)
        if sg.manifest_worker(name) is not None
    }
    if not manifests:
        return False, "its node manifests are gone too: not rebuilt (see the checkpoints check)"
    seg = sg.merge(finding.window, manifests)
    if s3.put_segment(finding.window, sg.encode(seg), finding.etag):
        return True, f"rebuilt from {len(manifests)} node manifest(s), {len(seg.facts)} fact(s)"
    return True, "another node wrote it meanwhile"


def _where(s3: S3Store, w: int) -> str:
    return s3.segment_key(w)[len(s3.base) + 1 :]
