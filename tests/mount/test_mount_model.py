"""Reference-model test of the real mount (after mountpoint-s3's reftests).

Random sequences of claims, releases, renewals, commits (both ways), refused writes and expiry
run against a real mount; after every step the mount is walked with os.walk/listdir and compared
with `expected_view`, built from plain sets. Pagination is exercised by a tile with many phrases.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fusefs.model.mission import load_mission
from tests.support.mounts import Mount, write_mission

PHRASES = ("a", "b/c", ".dot", "100%", "café", *(f"p{i:03d}" for i in range(40)))


def expected_view(intent: set[str], facts: set[str], claims: set[str]) -> dict[str, set[str]]:
    return {"pending": intent - facts - claims, "claimed": claims - facts, "done": set(facts)}


def walk(root: Path) -> set[str]:
    out = set()
    for d, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out


class MountModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mfs-model-"))
        mission = write_mission(
            self.tmp / "m.toml",
            south="1.0",
            west="2.0",
            north="1.2",
            east="2.2",
            step="0.1",
            phrases=PHRASES,
        )
        m = load_mission(mission)
        self.rels = sorted(m.space.rel(t) for t in m.intent)
        self.intent = set(self.rels)
        self.facts: set[str] = set()
        self.claims: set[str] = set()
        self.mount = Mount(mission, self.tmp / "mnt", self.tmp / "state")
        self.mount.start()
        self.n = 0

    def teardown(self) -> None:
        self.mount.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def p(self, view: str, rel: str) -> Path:
        return self.mount.mnt / view / rel

    task = st.integers(0, 4 * len(PHRASES) - 1)

    @rule(i=task)
    def claim(self, i: int) -> None:
        rel = self.rels[i]
        try:
            os.rename(self.p("pending", rel), self.p("claimed", rel))
            ok = True
        except FileNotFoundError:
            ok = False
        assert ok == (rel in self.intent - self.facts - self.claims)
        if ok:
            self.claims.add(rel)

    @rule(i=task)
    def release(self, i: int) -> None:
        rel = self.rels[i]
        try:
            os.unlink(self.p("claimed", rel))
            ok = True
        except FileNotFoundError:
            ok = False
        assert ok == (rel in self.claims)
        self.claims.discard(rel)

    @rule(i=task)
    def renew(self, i: int) -> None:
        rel = self.rels[i]
        try:
            os.utime(self.p("claimed", rel))
            ok = True
        except FileNotFoundError:
            ok = False
        assert ok == (rel in self.claims)

    @rule(i=task, direct=st.booleans())
    def commit(self, i: int, direct: bool) -> None:
        rel = self.rels[i]
        body = f"name\nrow {self.n}\n"
        self.n += 1
        try:
            if direct:
                with open(self.p("done", rel), "x") as f:
                    f.write(body)
            else:
                tmp = self.mount.mnt / "tmp" / f"w{self.n}"
                tmp.write_text(body)
                os.rename(tmp, self.p("done", rel))
            ok = True
        except FileExistsError:
            ok = False
            if not direct:
                os.unlink(tmp)  # a refused result stays the worker's: it cleans up
        assert ok == (rel not in self.facts)
        if ok:
            self.facts.add(rel)
            self.claims.discard(rel)
            assert self.p("done", rel).read_text() == body

    @rule(i=task)
    def refused_write(self, i: int) -> None:
        rel = self.rels[i]
        try:
            with open(self.p("done", rel), "w") as f:
                f.write("no newline")
            ok = True
        except OSError as e:
            ok = False
            assert e.errno in (errno.EPERM, errno.EBADMSG), e
        assert not ok

    @invariant()
    def mount_matches_reference(self) -> None:
        ref = expected_view(self.intent, self.facts, self.claims)
        for view, rels in ref.items():
            assert walk(self.mount.mnt / view) == rels, view
        pending_rows = {r.split("/")[0] for r in ref["pending"]}
        assert set(os.listdir(self.mount.mnt / "pending")) == pending_rows
        assert os.listdir(self.mount.mnt / "tmp") == []
        c = self.mount.status()["counts"]
        assert (c["pending"], c["claimed"], c["done"]) == tuple(len(ref[v]) for v in ref)


TestMountModel = MountModel.TestCase
TestMountModel.settings = settings(
    max_examples=6, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
