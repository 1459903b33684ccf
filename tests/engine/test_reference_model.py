"""Reference-model test of one node's FUSE handlers (the idea of mountpoint-s3's reftests).

Hypothesis drives random sequences of claims, releases, renewals, commits (by `mv tmp/X` and by
direct writes, well-formed or not), time passing, lease expiry, other workers' witnesses learned
by the sync engine, reads and restarts (clean or killed) through `EngineNode`, and compares every
errno with a naive model made of Python sets and dicts. After every step it compares everything a
user can observe: each listing of pending/, claimed/ and done/ at every depth with the sizes,
modes and lease times `ls -l` shows, which row, tile and task names resolve in each view, tmp/,
and the counts in `status`. Runs in process in a few seconds (derandomized, bounded).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fusefs.model.mission import Mission
from fusefs.model.state import View
from tests.engine.conftest import UNPLANNED_TASK, UNPLANNED_TILE, small_mission
from tests.engine.driver import LEASE, EngineNode, FakeClock, memory_bucket

# Empty, last line cut, a record with too few fields, not UTF-8.
MALFORMED = (b"", b"name,phone\nA,1", b"name,phone\nA\n", b"\xff\xfe\n")


# Outcomes the derandomized run must reach (else it proves little): every errno of every
# operation, expiry, fetches, restarts of both kinds while claims are held.
EXPLORED = {
    *(f"claim {ok}" for ok in (True, False)),
    *(f"release {ok}" for ok in (True, False)),
    *(f"renew {ok}" for ok in (True, False)),
    "release by mv",
    *(f"{how} {code}" for how in ("tmp", "direct") for code in ("ok", "EEXIST", "EACCES")),
    *(f"{how} {code}" for how in ("tmp", "direct") for code in ("EBADMSG", "ENOENT")),
    "expired True",
    "remote new True",
    "remote new False",
    "remote ends claim True",
    "read fetched True",
    "restart clean=True",
    "restart clean=False",
    "restart with claims True",
}


class Model:
    """What a user must see, from plain sets: no bitmaps, no inodes, no files."""

    def __init__(self, mission: Mission) -> None:
        sp = mission.space
        self.all = [sp.rel(t) for t in range(sp.size)]
        self.intent = {sp.rel(t) for t in mission.intent}
        self.facts: dict[str, bytes] = {}
        self.remote: set[str] = set()  # learned from the bucket (persisted by the node)
        self.remote_only: set[str] = set()  # facts whose witness was never fetched
        self.claims: dict[str, tuple[float, float]] = {}  # rel -> (claimed at, expires at)

    def view(self, v: View) -> set[str]:
        if v is View.PENDING:
            return self.intent - set(self.facts) - set(self.claims)
        if v is View.CLAIMED:
            return set(self.claims)
        return set(self.facts)

    def reachable(self, v: View, prefix: str) -> bool:
        """Does directory `prefix` (LAT or LAT/LON) resolve in view `v`?"""
        # pending/: where tasks are pending or claimed by us (a release by mv needs the dir);
        # claimed/ and done/: every planned tile, and facts'
        if v is View.PENDING:
            pool = self.view(v) | set(self.claims)
        else:
            pool = self.intent | set(self.facts)
        return any(r.startswith(prefix + "/") for r in pool)

    def fact(self, rel: str, body: bytes, *, remote: bool) -> None:
        self.facts[rel] = body
        self.claims.pop(rel, None)
        if remote:
            self.remote_only.add(rel)


def children(rels: set[str], prefix: str) -> list[str]:
    depth = prefix.count("/") + 1 if prefix else 0
    return sorted({r.split("/")[depth] for r in rels if not prefix or r.startswith(prefix + "/")})


class EngineModel(RuleBasedStateMachine):
    """One node and its model; the clock, base dir and mission come from the pytest test."""

    clock: FakeClock
    base: Path
    mission: Mission
    seen: Counter[str]  # outcomes met over the whole run: proves the run explored something

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="reftest-", dir=self.base))
        self.clock.now = 1_000_000.0
        self.bucket = memory_bucket(self.clock)
        self.node = EngineNode(self.mission, self.dir / "state", self.clock, bucket=self.bucket)
        self.model = Model(self.mission)
        self.n = 0
        parts = [r.split("/") for r in self.model.all]
        self.rows = sorted({p[0] for p in parts})
        self.cols = {row: sorted({p[1] for p in parts if p[0] == row}) for row in self.rows}
        self.names = sorted({p[2] for p in parts} | {"locksmith.csv"})  # and no phrase at all

    def teardown(self) -> None:
        self.node.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def tile_of(self, rel: str) -> str:
        return rel.rpartition("/")[0]

    # Each call first draws the kind of task it acts on, then a task of that kind: uniform picks
    # among 18 tasks would rarely hit the few claimed or done ones, and every outcome matters.
    def pools(self) -> dict[str, set[str]]:
        m = self.model
        return {
            "pending": m.view(View.PENDING),
            "claimed": set(m.claims),
            "done": set(m.facts),
            "remote only": set(m.remote_only),
            "hole": {UNPLANNED_TASK},  # a task the plan leaves out of a planned tile
            "no tile": {r for r in m.all if r.startswith(UNPLANNED_TILE + "/")},
            "any": set(m.all),
        }

    def task(self, data: st.DataObject, *kinds: str) -> str:
        pool = self.pools()[data.draw(st.sampled_from(kinds))] or set(self.model.all)
        return data.draw(st.sampled_from(sorted(pool)))

    # -- claims --------------------------------------------------------------------------------
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        rel = self.task(data, "pending", "claimed", "done", "hole", "no tile")
        ok = rel in self.model.view(View.PENDING)
        assert self.node.claim(rel) == (0 if ok else errno.ENOENT)
        self.seen[f"claim {ok}"] += 1
        if ok:
            self.model.claims[rel] = (self.clock.now, self.clock.now + LEASE)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rel = self.task(data, "claimed", "any")
        ok = rel in self.model.claims
        assert self.node.release(rel) == (0 if ok else errno.ENOENT)
        self.seen[f"release {ok}"] += 1
        self.model.claims.pop(rel, None)

    @precondition(lambda self: self.model.claims)
    @rule(data=st.data())
    def release_by_mv(self, data: st.DataObject) -> None:
        """`mv claimed/REL pending/REL`: the pending tile resolves while we hold a claim in it
        (test_release_by_mv_of_the_last_pending_task_of_a_tile)."""
        rel = data.draw(st.sampled_from(sorted(self.model.claims)))
        assert self.node.release(rel, by_mv=True) == 0
        self.seen["release by mv"] += 1
        del self.model.claims[rel]

    @precondition(lambda self: self.model.claims)
    @rule(data=st.data(), dt=st.sampled_from([1.0, LEASE / 2]))
    def renew_later(self, data: st.DataObject, dt: float) -> None:
        """`touch claimed/REL` some time after the claim: the lease now ends later."""
        self.clock.advance(dt)
        self.renew(data, "claimed")

    @rule(data=st.data())
    def renew_any(self, data: st.DataObject) -> None:
        self.renew(data, "claimed", "any")

    def renew(self, data: st.DataObject, *kinds: str) -> None:
        rel = self.task(data, *kinds)
        ok = rel in self.model.claims
        assert self.node.renew(rel) == (0 if ok else errno.ENOENT)
        self.seen[f"renew {ok}"] += 1
        if ok:
            self.model.claims[rel] = (self.clock.now, self.clock.now + LEASE)

    @rule(dt=st.sampled_from([1.0, 30.0, LEASE / 2, LEASE]), sweep=st.booleans())
    def time_passes(self, dt: float, sweep: bool) -> None:
        """The clock moves; the daemon's expiry loop may not have run yet (sweep=False)."""
        self.clock.advance(dt)
        if sweep:
            self.expiry()

    @precondition(lambda self: self.model.claims)
    @rule(early=st.booleans())
    def time_reaches_a_lease_end(self, early: bool) -> None:
        """Jump to the first lease end the model knows (or a second before it) and sweep: lease
        arithmetic is checked at its edges, not only where random jumps land."""
        end = min(until for _, until in self.model.claims.values())
        self.clock.now = max(self.clock.now, end - 1 if early else end)
        self.expiry()

    def expiry(self) -> None:
        now = self.clock.now
        ended = {r for r, (_, until) in self.model.claims.items() if until <= now}
        assert set(self.node.expire()) == ended
        self.seen[f"expired {bool(ended)}"] += 1
        for r in ended:
            del self.model.claims[r]

    # -- commits -------------------------------------------------------------------------------
    def _commit_errno(self, rel: str, direct: bool, valid: bool) -> int:
        m = self.model
        if not m.reachable(View.DONE, self.tile_of(rel)):
            return errno.ENOENT  # the tile directory does not resolve
        if direct and rel in m.facts:
            return errno.EEXIST  # open(O_EXCL) of a name that resolves
        if rel not in m.intent:
            return errno.EACCES
        if rel in m.facts:
            return errno.EEXIST
        return 0 if valid else errno.EBADMSG

    @rule(data=st.data(), valid=st.booleans())
    def commit_by_rename(self, data: st.DataObject, valid: bool) -> None:
        self.commit(data, valid, direct=False)

    @rule(data=st.data(), valid=st.booleans())
    def commit_direct(self, data: st.DataObject, valid: bool) -> None:
        self.commit(data, valid, direct=True)

    def commit(self, data: st.DataObject, valid: bool, *, direct: bool) -> None:
        rel = self.task(data, "pending", "claimed", "done", "hole", "no tile")
        self.n += 1
        body = (
            f"name,phone\nshop {self.n},555\n".encode()
            if valid
            else data.draw(st.sampled_from(MALFORMED))
        )
        if direct:
            code = self.node.direct_write(rel, body)
        else:
            name = f"w{self.n}.csv"
            code = self.node.commit_tmp(name, body, rel)
            if code:  # the refused result stays in tmp/: the worker deletes it
                assert self.node.unlink(f"tmp/{name}") == 0
        assert code == self._commit_errno(rel, direct, valid), rel
        self.seen[f"{'direct' if direct else 'tmp'} {errno.errorcode.get(code, 'ok')}"] += 1
        if code == 0:
            self.model.fact(rel, body, remote=False)

    @rule(data=st.data())
    def remote_fact(self, data: st.DataObject) -> None:
        """Another worker's witness of a task is listed in the bucket."""
        self.learn(self.task(data, "pending", "claimed", "done", "hole", "no tile"))

    @precondition(lambda self: self.model.claims)
    @rule(data=st.data())
    def remote_fact_of_our_claim(self, data: st.DataObject) -> None:
        """Another worker finished a task we hold (it took an expired lease over, say)."""
        self.learn(data.draw(st.sampled_from(sorted(self.model.claims))))

    def learn(self, rel: str) -> None:
        body = f"name\nremote {rel}\n".encode()
        assert self.node.learn_remote(rel, body) == (rel not in self.model.remote)
        self.model.remote.add(rel)
        self.seen[f"remote new {rel not in self.model.facts}"] += 1
        self.seen[f"remote ends claim {rel in self.model.claims}"] += 1
        if rel not in self.model.facts:
            self.model.fact(rel, body, remote=True)

    @rule(data=st.data())
    def read_witness(self, data: st.DataObject) -> None:
        rel = self.task(data, "done", "remote only", "any")
        if rel in self.model.facts:
            assert self.node.read(f"done/{rel}") == self.model.facts[rel]
            self.seen[f"read fetched {rel in self.model.remote_only}"] += 1
            self.model.remote_only.discard(rel)  # fetched once, kept locally
        else:
            with pytest.raises(FileNotFoundError):
                self.node.read(f"done/{rel}")

    @rule(data=st.data())
    def read_descriptor(self, data: st.DataObject) -> None:
        rel = self.task(data, "pending", "claimed")
        view = View.CLAIMED if rel in self.model.claims else View.PENDING
        if rel not in self.model.view(view):
            return
        path = f"{view.value}/{rel}"
        body = self.node.read(path)
        assert len(body) == self.node.stat(path).size  # `cat` reads what `ls -l` says
        assert f'"rel": "{rel}"'.encode() in body

    # -- restarts ------------------------------------------------------------------------------
    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        """Unmount (or kill) and mount again: live claims are held again from now on."""
        self.node.restart(clean=clean)
        self.seen[f"restart clean={clean}"] += 1
        self.seen[f"restart with claims {bool(self.model.claims)}"] += 1
        now = self.clock.now
        self.model.claims = {
            r: (now, until) for r, (_, until) in self.model.claims.items() if until > now
        }

    # -- what a user sees ----------------------------------------------------------------------
    @initialize(data=st.data())
    def a_node_at_work(self, data: st.DataObject) -> None:
        """Start where claims, witnesses and remote facts already exist: the rules that need
        them are then rarely without them (Hypothesis turns random rules off per example)."""
        assert self.node.ls("") == ["pending", "claimed", "done", "tmp", "status"]
        for _ in range(3):
            self.claim(data)
        self.commit(data, True, direct=data.draw(st.booleans()))
        self.remote_fact(data)

    # One trio.run per step for all the checks: about three hundred handler calls.
    @invariant()
    def node_matches_the_model(self) -> None:
        self.node.run(self._observe)

    async def _observe(self) -> None:
        await self._listings()
        await self._names()
        await self._status_counts()
        self._leases()

    def _leases(self) -> None:
        """When each lease ends is seen only when it ends (random steps rarely reach it): check
        what the expiry loop and a restart act on, the state's leases and the claim log's."""
        sp = self.mission.space
        until = {rel: end for rel, (_, end) in self.model.claims.items()}
        state = self.node.ws.state
        assert {sp.rel(t): c.expires_at for t, c in state.claims.items()} == until
        assert state.next_expiry() == min(until.values(), default=None)
        assert {sp.rel(t): end for t, end in self.node.daemon.claim_log.live.items()} == until

    async def _listings(self) -> None:
        ls = self.node.a_ls
        for v in View:
            rels = self.model.view(v)
            assert await ls(v.value) == children(rels, ""), v
            for row in children(rels, ""):
                assert await ls(f"{v.value}/{row}") == children(rels, row), (v, row)
                for col in children(rels, row):
                    await self._check_tile(v, f"{row}/{col}", rels)
        assert await ls("tmp") == []

    async def _check_tile(self, v: View, tile: str, rels: set[str]) -> None:
        entries = await self.node.a_ls_entries(f"{v.value}/{tile}")
        assert [e.name for e in entries] == children(rels, tile), (v, tile)
        for e in entries:
            rel = f"{tile}/{e.name}"
            assert stat.S_ISREG(e.mode)
            if v is View.DONE:
                size = len(self.model.facts[rel])  # remote-only too: known from the listing
                assert (e.size, stat.S_IMODE(e.mode)) == (size, 0o444), rel
            elif v is View.CLAIMED:
                since = int(self.model.claims[rel][0] * 1e9)
                assert (e.mtime_ns, stat.S_IMODE(e.mode)) == (since, 0o644), rel
            else:
                assert stat.S_IMODE(e.mode) == 0o444, rel

    async def _names(self) -> None:
        """Look every row, tile and task name up in each view, as the kernel's walk would."""
        node, m = self.node, self.model

        async def child(parent: int, name: str) -> int | None:
            try:
                return await node._lookup(parent, name)
            except pyfuse3.FUSEError as e:
                assert e.errno == errno.ENOENT, (name, e.errno)
                return None

        for v in View:
            in_view = m.view(v)
            root = await node.resolve(v.value)
            for row in self.rows:
                row_ino = await child(root, row)
                assert (row_ino is not None) == m.reachable(v, row), (v, row)
                if row_ino is None:
                    continue
                for col in self.cols[row]:
                    tile = f"{row}/{col}"
                    tile_ino = await child(row_ino, col)
                    assert (tile_ino is not None) == m.reachable(v, tile), (v, tile)
                    if tile_ino is None:
                        continue
                    for name in self.names:
                        found = await child(tile_ino, name) is not None
                        assert found == (f"{tile}/{name}" in in_view), (v, tile, name)

    async def _status_counts(self) -> None:
        m = self.model
        c: dict[str, Any] = (await self.node.a_status())["counts"]
        planned_done = set(m.facts) & m.intent
        expected = (len(m.view(View.PENDING)), len(m.claims), len(planned_done))
        assert (c["pending"], c["claimed"], c["done"]) == expected
        assert c["facts_outside_intent"] == len(m.facts) - len(planned_done)


@pytest.fixture
def machine(tmp_path: Path, state_root: Path, clock: FakeClock) -> Iterator[type[EngineModel]]:
    EngineModel.clock = clock
    EngineModel.base = state_root
    EngineModel.mission = small_mission(tmp_path)
    EngineModel.seen = Counter()
    yield EngineModel


# Shrinking a failure replays hundreds of sequences (minutes): off by default, so a failing CI
# run ends in seconds with the whole sequence printed; MISSIONFS_REFTEST_SHRINK=1 to shrink it.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("MISSIONFS_REFTEST_SHRINK"):
    PHASES.append(Phase.shrink)


def test_engine_matches_the_reference_model(machine: type[EngineModel]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            phases=PHASES,
            max_examples=80,
            stateful_step_count=25,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    missed = sorted(EXPLORED - set(machine.seen))
    assert not missed, f"the run never reached: {missed} (seen {dict(machine.seen)})"


def test_release_by_mv_of_the_last_pending_task_of_a_tile(node: EngineNode) -> None:
    for rel in ("10.1/20.1/coffee shop.csv", "10.1/20.1/plumber.csv"):
        assert node.claim(rel) == 0
    assert node.release("10.1/20.1/plumber.csv", by_mv=True) == 0
