"""`missionfs fsck MISSION.toml [--repair]`: check a state dir (and its bucket) for damage.

Modelled on S3QL's fsck: a fixed list of small named checks, each reporting what it found and,
with --repair, fixing it conservatively. **No repair deletes a byte of a result**: bad files are
moved to `STATE/quarantine/` (or `STATE/rejected/` for staging leftovers) next to a `.why` note,
index files are rewritten from the witness files (the truth), and a bucket object that was
altered after we uploaded it is first copied to `conflicts/` before our witness is put back.

Checks, in order:
    staging    files left in STATE/staging/ (a direct write cut short)     -> rejected/ + .why
    witnesses  every file under scraped-tiles/: a plan task, canonical name, regular file, not
               empty, ends in a newline, well-formed CSV, SHA-256 = the journal's last record
                                                                            -> quarantine/ + .why
    index      the start-up index (facts.roaring + logs) against a walk of the files -> rebuilt
    bucket     (S3) the upload queue against the bucket: tasks marked uploaded but missing there
               (re-queued), remote-index entries gone from the bucket, objects whose bytes differ
               from our committed witness (restored, the altered bytes kept under conflicts/)
    checkpoints (S3, protocol v2) the bucket's checkpoints against the listing: corrupt,
               foreign, future, behind the listing, or none    -> a fresh one from the listing
    claims     (S3) live leases of this worker although no daemon runs       -> released

fsck refuses to run on a mounted state dir (exit 2, one line): it takes the state dir's lock for
its whole run, so no daemon can start meanwhile. Exit status: 0 clean (or everything repaired),
1 problems left, 2 usage errors.

Quarantining a witness makes its task pending again (it is no longer done locally; with S3 a
good copy in the bucket keeps it done and is fetched on first read). The bytes stay in
quarantine/ for a human to inspect.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroaring import BitMap

from fusefs.engine.facts import Drift, walk
from fusefs.engine.fsckckpt import CheckpointAudit, Listed, protocol_window
from fusefs.engine.fsckscan import Local, Problem, Report, journal_origins, tree_entries
from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.model.errors import S3Unavailable
from fusefs.model.mission import Mission
from fusefs.model.witness import InvalidWitness, check_csv
from fusefs.statedir.index import FactIndex
from fusefs.statedir.journal import Journal
from fusefs.statedir.layout import WITNESS_DIR
from fusefs.statedir.store import LocalStore, fsync_dir

if TYPE_CHECKING:
    from fusefs.objects.s3store import S3Store

CONFLICTS = "conflicts"  # the bucket area where altered objects are kept


class Fsck:
    """One run over one state dir; `run()` returns the exit status."""

    def __init__(
        self,
        mission: Mission,
        state_dir: Path,
        *,
        repair: bool,
        quiet: bool,
        s3: S3Store | None,
        worker: str,
    ) -> None:
        self.mission = mission
        self.space: TaskSpace = mission.space
        self.root = state_dir
        self.store = LocalStore(state_dir)
        self.repair = repair
        self.quiet = quiet
        self.s3 = s3
        self.worker = worker
        self.report = Report()
        self.good: dict[int, Local] = {}  # task -> digests of its well-formed local witness
        self.moved: BitMap = BitMap()  # tasks whose witness was quarantined by this run
        self.present: BitMap = BitMap()  # tasks with a witness file (good or not) after repairs
        self.journal: Journal | None = None
        self.stamp = time.strftime("%Y%m%dT%H%M%S")
        self.origins: dict[int, tuple[str, str]] = {}  # task -> (journal event, sha256)
        self.listing: dict[int, Listed] | None = None  # the bucket's witnesses (check_bucket)
        self.listed_from = 0.0  # server time when that listing began
        self.etags: dict[int, str] = {}  # task -> ETag of its witness in the bucket

    # -- driver ----------------------------------------------------------------------------
    def checks(self) -> list[Callable[[], None]]:
        out = [self.check_staging, self.check_witnesses, self.check_index]
        if self.s3 is not None:
            out += [self.check_bucket, self.check_checkpoints, self.check_segments]
            out.append(self.check_claims)
        return out

    def run(self) -> int:
        self.say(f"fsck {self.mission.name}: state {self.root}" + self._s3_label())
        try:
            offline = False
            for check in self.checks():
                before = len(self.report.problems)
                name = check.__name__.removeprefix("check_")
                if offline and name in ("bucket", "checkpoints", "segments", "claims"):
                    self.say(f"{name}: skipped (S3 unreachable)")
                    continue
                try:
                    check()
                except S3Unavailable as e:
                    offline = True
                    self.problem(name, "s3-unreachable", self._s3_label().lstrip(", "), str(e))
                self._summary_line(name, before)
        finally:
            if self.journal is not None:
                self.journal.close()
        return self._finish()

    def _s3_label(self) -> str:
        return f", bucket {self.s3.url}" if self.s3 is not None else ""

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

    def note(self, line: str) -> None:
        self.report.notes.append(line)
        self.say(f"  note: {line}")

    def problem(self, check: str, kind: str, where: str, what: str) -> Problem:
        p = Problem(check, kind, where, what)
        self.report.problems.append(p)
        return p

    def fixed(self, p: Problem, how: str) -> None:
        p.repaired = how
        self._journal("fsck", p.where, kind=p.kind, action=how)

    def _journal(self, ev: str, where: str, **fields: Any) -> None:
        """Repairs go into the journal too, so `missionfs log REL` tells what fsck did."""
        if self.journal is None:
            self.journal = Journal(self.store.layout.journal, self.worker)
        rel = where.removeprefix(f"{WITNESS_DIR}/")
        try:
            self.space.parse_rel(rel)
        except OutOfPlan:
            self.journal.append(ev, None, where=where, **fields)
        else:
            self.journal.append(ev, rel, **fields)

    def _summary_line(self, name: str, before: int) -> None:
        found = self.report.problems[before:]
        for p in found:
            tail = f"  [repaired: {p.repaired}]" if p.repaired else ""
            print(f"  [{p.kind}] {p.where}: {p.what}{tail}", flush=True)
        fixed = sum(1 for p in found if p.repaired)
        extra = f" ({fixed} repaired)" if fixed else ""
        self.say(f"{name}: {'ok' if not found else f'{len(found)} problem(s)'}{extra}")

    def _finish(self) -> int:
        total = len(self.report.problems)
        left = len(self.report.unrepaired())
        if not total:
            print("fsck: clean")
            return 0
        if not left:
            print(f"fsck: {total} problem(s), all repaired")
            return 0
        hint = "" if self.repair else "; run again with --repair to fix them"
        print(f"fsck: {total} problem(s), {left} not repaired{hint}")
        return 1

    # -- moving things aside (never deleting) ------------------------------------------------
    def move_aside(self, src: Path, dst: Path, why: str) -> Path:
        """Move src to dst (a fresh name, never replacing anything) with a `.why` note."""
        n = 0
        base = dst
        while os.path.lexists(dst) or os.path.lexists(_why(dst)):
            n += 1
            dst = base.with_name(f"{base.name}-{n}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        _why(dst).write_text(why + "\n", encoding="utf-8")
        if src.is_dir() and not src.is_symlink():
            os.rename(src, dst)
        else:
            os.link(src, dst, follow_symlinks=False)  # fails rather than replace
            os.unlink(src)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return dst

    def quarantine(self, rel: str, why: str) -> str:
        dst = self.store.layout.quarantine / WITNESS_DIR / f"{rel}.{self.stamp}"
        kept = self.move_aside(self.store.tiles / rel, dst, f"{WITNESS_DIR}/{rel}: {why}")
        return f"moved to {kept.relative_to(self.root)}"

    # -- staging -----------------------------------------------------------------------------
    def check_staging(self) -> None:
        """Files in staging/ are direct writes that never committed (the daemon was stopped)."""
        try:
            entries = sorted(os.scandir(self.store.staging), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for e in entries:
            linked = e.stat(follow_symlinks=False).st_nlink > 1 and not e.is_dir(
                follow_symlinks=False
            )
            what = (
                "a second name of a committed witness (crash between link and unlink)"
                if linked
                else "an uncommitted direct write left in staging/"
            )
            p = self.problem("staging", "staging-leftover", f"staging/{e.name}", what)
            if self.repair:
                dst = self.store.rejected / f"{self.stamp}.fsck.{e.name}"
                kept = self.move_aside(Path(e.path), dst, f"staging/{e.name}: {what}")
                self.fixed(p, f"moved to {kept.relative_to(self.root)}")

    # -- witnesses ---------------------------------------------------------------------------
    def check_witnesses(self) -> None:
        """Every entry of the witness tree, checked against the plan, the CSV rules and the
        SHA-256 the journal recorded when it was committed (or fetched, or won a conflict)."""
        from tqdm import tqdm

        self.origins = journal_origins(self.store.layout.journal, self.space)
        expected = {task: sha for task, (_, sha) in self.origins.items()}
        entries = list(tree_entries(self.store.tiles))
        with tqdm(
            entries,
            desc="checking witnesses",
            unit=" files",
            disable=self.quiet or None,
            file=sys.stderr,
            delay=0.5,
        ) as bar:
            for rel, regular in bar:
                self._check_one(rel, regular, expected)
        self.say(f"  {len(entries)} file(s) under {WITNESS_DIR}/, {len(self.good)} good witnesses")
        self._note_outside_intent()

    def _check_one(self, rel: str, regular: bool, expected: dict[int, str]) -> None:
        kind, what, task = self._classify(rel, regular)
        if kind is None:
            assert task is not None
            self.present.add(task)
            data = (self.store.tiles / rel).read_bytes()
            kind, what = self._content(data, expected.get(task))
            if kind is None:
                self.good[task] = Local(_sha(data), hashlib.md5(data).hexdigest())
                return
        p = self.problem("witnesses", kind, f"{WITNESS_DIR}/{rel}", what)
        if self.repair:
            self.fixed(p, self.quarantine(rel, what))
            if task is not None:
                self.moved.add(task)
                self.present.discard(task)

    def _classify(self, rel: str, regular: bool) -> tuple[str | None, str, int | None]:
        """(problem kind or None, why, task id) from the name and the file type alone."""
        try:
            task = self.space.parse_rel(rel)
        except OutOfPlan as e:
            return "outside-plan", f"not a task of the mission: {e}", None
        if self.space.rel(task) != rel:
            return "not-canonical", f"the codec names this task {self.space.rel(task)}", None
        if not regular:
            return "not-a-file", "not a regular file", None
        return None, "", task

    def _content(self, data: bytes, sha: str | None) -> tuple[str | None, str]:
        try:
            check_csv(data)
        except InvalidWitness as e:
            kind = "empty" if not data else "truncated" if not data.endswith(b"\n") else "malformed"
            return kind, str(e)
        if sha is not None and _sha(data) != sha:
            return "changed", f"bytes changed after commit (journal sha256 {sha[:12]}…)"
        return None, ""

    def _note_outside_intent(self) -> None:
        extra = BitMap(self.good) - self.mission.intent
        if extra:
            self.note(f"{len(extra)} witness(es) of tasks no longer in the intent (kept)")

    # -- start-up index ----------------------------------------------------------------------
    def check_index(self) -> None:
        """The index only makes mounting fast; the walk of the files is the truth."""
        self.store.index_dir.mkdir(parents=True, exist_ok=True)
        index = FactIndex(self.store.index_dir, self.space)
        loaded = index.load()
        found, _ = walk(self.store, self.space)
        if loaded is not None and Drift.between(loaded, found).clean:
            return
        if loaded is None:
            p = self.problem("index", "index-missing", "index/facts.roaring", _missing_why(index))
        else:
            mismatch = self._index_mismatch(Drift.between(loaded, found))
            if mismatch is None:  # only the witnesses this run quarantined: part of that repair
                index.replace(found)
                return
            p = mismatch
        if self.repair:
            index.replace(found)
            self.fixed(p, f"rebuilt from the files ({len(found)} witnesses)")

    def _index_mismatch(self, drift: Drift) -> Problem | None:
        stale = drift.gone - self.moved
        unindexed = drift.new
        if not stale and not unindexed:
            return None
        what = f"{len(stale)} indexed task(s) without a witness file, {len(unindexed)} not indexed"
        return self.problem("index", "index-stale", "index/facts.roaring", what)

    # -- bucket --------------------------------------------------------------------------------
    def check_bucket(self) -> None:
        """The upload queue (local - synced) and the remote set against a listing of the bucket."""
        listed = self._list_bucket()
        self.etags = {task: etag for task, (etag, _) in listed.items()}
        listing = BitMap(listed)
        synced_ix = FactIndex(self.store.index_dir, self.space, "synced")
        synced = synced_ix.load() or BitMap()
        self._check_synced(synced_ix, synced, listing)
        self._check_remote(listing)
        self._check_contents(listed, synced)
        waiting = len(BitMap(self.good) - synced)
        self.note(f"upload queue: {waiting} witness(es) waiting (uploaded by the daemon)")
        self.note(f"{len(listing - self.present)} remote-only witness(es) (fine)")

    def _list_bucket(self) -> dict[int, tuple[str, int]]:
        """task -> (ETag without quotes, size) for every plan witness in the bucket."""
        from tqdm import tqdm

        from fusefs.objects.s3store import WITNESSES

        assert self.s3 is not None
        out: dict[int, tuple[str, int]] = {}
        self.listed_from = self.s3.server_time()
        self.listing = listing = {}
        outside = 0
        bar = tqdm(desc="listing the bucket", unit=" keys", disable=self.quiet or None, delay=0.5)
        with bar:
            for rel, obj in self.s3.objects_in(WITNESSES):
                bar.update(1)
                try:
                    task = self.space.parse_rel(rel)
                except OutOfPlan:
                    outside += 1
                    continue
                out[task] = (obj.etag, obj.size)
                listing[task] = Listed(obj.size, obj.last_modified)
        if outside:
            self.note(f"{outside} bucket object(s) under {WITNESSES}/ outside the plan (ignored)")
        return out

    def _check_synced(self, ix: FactIndex, synced: BitMap, listing: BitMap) -> None:
        """A task marked uploaded must have a local witness and an object in the bucket."""
        lost = (synced & BitMap(self.good)) - listing
        orphans = synced - self.present
        for task in lost:
            p = self.problem(
                "bucket", "upload-lost", self.space.rel(task), "marked uploaded, not in the bucket"
            )
            if self.repair:
                self.fixed(p, "re-queued for upload")
        for task in orphans - self.moved:
            p = self.problem(
                "bucket", "synced-orphan", self.space.rel(task), "marked uploaded, no local witness"
            )
            if self.repair:
                self.fixed(p, "unmarked")
        if (lost or orphans) and self.repair:
            ix.replace(synced - lost - orphans)

    def _check_remote(self, listing: BitMap) -> None:
        """The remote set makes tasks done; one that left the bucket would be unreadable."""
        ix = FactIndex(self.store.index_dir, self.space, "remote")
        remote = ix.load()
        if remote is None:
            return
        gone = remote - listing
        for task in gone - self.present:
            p = self.problem(
                "bucket", "remote-gone", self.space.rel(task), "known as remote, not in the bucket"
            )
            if self.repair:
                self.fixed(p, "forgotten (the next listing is the truth)")
        if gone and self.repair:
            ix.replace(remote - gone)

    def _check_contents(self, listed: dict[int, tuple[str, int]], synced: BitMap) -> None:
        racing = 0
        for task, (etag, _size) in listed.items():
            mine = self.good.get(task)
            if mine is None or etag == mine.md5:
                continue  # single-part uploads: ETag = MD5 of the bytes, no GET needed
            body = self._remote_body(task)
            if _sha(body) == mine.sha:
                continue
            if task not in synced:
                racing += 1  # not uploaded yet: the upload will keep it as a conflict
                continue
            self._altered(task, etag, body, mine)
        if racing:
            self.note(f"{racing} queued upload(s) will end as conflicts (another worker was first)")

    def _remote_body(self, task: int) -> bytes:
        from fusefs.objects.s3store import WITNESSES

        assert self.s3 is not None
        return self.s3.get(self.s3.key(WITNESSES, self.space.rel(task)))[0]

    def _altered(self, task: int, etag: str, body: bytes, mine: Local) -> None:
        rel = self.space.rel(task)
        p = self.problem("bucket", "altered-in-bucket", rel, "bucket bytes differ from ours")
        if not self.repair:
            return
        if self.origins.get(task) != ("commit", mine.sha):
            p.what += " (our copy was fetched, not committed here: left for a human)"
            return
        if not self._restore(rel, etag, body):
            p.what += f"; kept under {CONFLICTS}/, but the object changed again: not restored"
            return
        self.fixed(p, f"altered bytes kept under {CONFLICTS}/; our witness put back")

    def _restore(self, rel: str, etag: str, altered: bytes) -> bool:
        """Keep the altered bytes under conflicts/, then put our committed witness back."""
        assert self.s3 is not None
        self.s3.put_conflict(rel, f"altered-{self.stamp}", altered)
        ours = (self.store.tiles / rel).read_bytes()
        # False: changed again (or gone) since we read it: leave it to a human
        return self.s3.replace_witness(rel, ours, etag)

    # -- checkpoints (protocol v2) ------------------------------------------------------------
    def check_checkpoints(self) -> None:
        """The checkpoints (derived: what a new node starts from) against the listing (the
        truth); --repair writes a fresh one from the listing (engine/fsckckpt.py)."""
        if self.listing is None:
            return  # no listing (the bucket check failed): nothing to judge them by
        assert self.s3 is not None
        known = {t: g.sha for t, g in self.good.items() if self.etags.get(t) == g.md5}
        audit = CheckpointAudit(self.s3, self.space, self.listing, self.listed_from, known)
        audit.run()
        for line in audit.notes:
            self.note(line)
        found = [self.problem("checkpoints", f.kind, f.where, f.what) for f in audit.findings]
        if found and self.repair:
            ok, how = audit.rebuild()
            for p in found:
                if ok:
                    self.fixed(p, how)
                else:
                    p.what += f"; {how}"

    def check_segments(self) -> None:
        """Protocol v2's window segments (derived: what every node reads each window): corrupt
        ones, closed windows never merged; --repair rebuilds them (engine/fscksegments.py)."""
        from fusefs.engine.fscksegments import audit, rebuild

        assert self.s3 is not None
        period = protocol_window(self.s3)
        if period is None:
            return  # protocol v1: no segments
        for f in audit(self.s3, period, self.s3.server_time()):
            if f.kind in ("segment-unmerged", "segment-orphan"):  # nothing hidden: notes
                how = rebuild(self.s3, f)[1] if self.repair else "left to the next node"
                self.note(f"[{f.kind}] {f.where}: {f.what}; {how}")
                continue
            p = self.problem("segments", f.kind, f.where, f.what)
            if self.repair:
                ok, how = rebuild(self.s3, f)
                if ok:
                    self.fixed(p, how)
                else:
                    p.what += f"; {how}"

    # -- claims --------------------------------------------------------------------------------
    def check_claims(self) -> None:
        """Our live leases while no daemon of ours runs: nobody will renew or release them."""
        from fusefs.engine.leases import LeaseBook
        from fusefs.objects.s3store import chunk_name

        if self.mission.claims == "local":
            return
        assert self.s3 is not None
        book = LeaseBook(self.s3, self.worker, 900.0, self.mission.space)  # all of claims/
        ours = [lease for lease in book.live() if lease.worker == self.worker]
        for lease in ours:
            left = max(0.0, lease.expires - book.server_now())
            p = self.problem(
                "claims",
                "stale-claim",
                f"claims/{chunk_name(book.chunk_of(lease.rel))}/{lease.rel}",
                f"our lease, {left:.0f} s left",
            )
            if self.repair:
                book.release(lease.rel, lease.etag)
                self.fixed(p, "lease released (the task is pending for the fleet again)")


# -- helpers --------------------------------------------------------------------------------------
def _why(path: Path) -> Path:
    return path.with_name(path.name + ".why")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _missing_why(index: FactIndex) -> str:
    path = index.dir / index.snapshot_name
    if not path.exists():
        return "no snapshot (deleted?); a mount would walk every witness first"
    return "unreadable or made for another plan; a mount would walk every witness first"
