"""The claims service (fusefs/engine/claims.py) on its own: claim, renew, release, expiry,
restore after a restart, the fleet lease (a fake FleetClaims: won, lost, unavailable) and the
claim outcomes it reports to its observer (what metrics count)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import trio

from fusefs.engine.claims import (
    ClaimNotRecorded,
    Claims,
    FleetUnavailable,
    LeaseLost,
    NotClaimed,
    NotPending,
)
from fusefs.engine.metrics import Instruments
from fusefs.engine.workspace import Workspace, open_workspace
from fusefs.model.errors import ClaimUnavailable
from fusefs.model.mission import Mission
from fusefs.statedir import journal as journal_module
from fusefs.statedir.claimlog import ClaimLog
from fusefs.statedir.journal import read_journal
from tests.engine.driver import FakeClock

LEASE = 100.0
REL = "10.1/20.1/coffee shop.csv"
OTHER = "10.1/20.1/plumber.csv"


class FakeFleet:
    """What Claims asks of FleetClaims, answering as the test says; records the calls."""

    def __init__(self, ws: Workspace) -> None:
        self.state = ws.state
        self.answer: bool | Exception = True  # claim: won, lost (False) or an S3 error
        self.renewed = True
        self.calls: list[tuple[str, int]] = []
        self.unconfirmed: set[int] = set()
        self.forgotten: list[int] = []

    async def claim(self, task: int) -> bool:
        self.calls.append(("claim", task))
        await trio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        if not self.answer:
            self.state.claim_lost(task)  # what FleetClaims._lost does: the task is foreign
        return self.answer

    async def renew(self, task: int) -> bool:
        self.calls.append(("renew", task))
        return self.renewed

    async def release(self, task: int) -> None:
        self.calls.append(("release", task))

    def forget(self, tasks: Iterable[int]) -> None:
        self.forgotten += list(tasks)


class Service:
    """A workspace, its claims log and a Claims service over it; `outcomes` as reported."""

    def __init__(
        self,
        ws: Workspace,
        clock: FakeClock,
        fleet: bool = False,
        outcomes: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.fleet = FakeFleet(ws)  # given to the service only with fleet=True
        self.outcomes: list[str] = []
        self.log = ClaimLog(ws.store.layout.claims_log, ws.state)
        self.claims = Claims(
            ws.state,
            ws.committer.journal,
            LEASE,
            committer=ws.committer,
            store=ws.store,
            status=ws.status,
            claim_log=self.log,
            fleet=self.fleet if fleet else None,  # type: ignore[arg-type]
            clock=clock.time,
            outcomes=outcomes or self.outcomes.append,
        )
        self.restored = self.claims.restore(now=clock.now)
        ws.committer.reconciled = True
        self.task = ws.state.space.parse_rel

    def events(self) -> list[tuple[str, str]]:
        return [(e["ev"], e["rel"]) for e in read_journal(self.ws.store.root / "journal")]

    def close(self) -> None:
        self.log.close()
        self.ws.close()


ServiceOf = Callable[..., Service]


@pytest.fixture
def service_of(state_root: Path, mission: Mission, clock: FakeClock) -> Iterator[ServiceOf]:
    opened: list[Service] = []

    def make(fleet: bool = False, outcomes: Callable[[str], None] | None = None) -> Service:
        ws = open_workspace(mission, state_root / "state", lease=LEASE)
        s = Service(ws, clock, fleet, outcomes)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_claim_renew_release_expire_are_journalled_and_logged(
    service_of: ServiceOf, clock: FakeClock
) -> None:
    s = service_of()
    task, other = s.task(REL), s.task(OTHER)
    claim = trio.run(s.claims.claim, task, 1234)
    assert claim.owner == "pid 1234" and claim.expires_at == clock.now + LEASE
    assert task in s.ws.state.claimed and task not in s.ws.state.pending
    assert s.log.live == {task: clock.now + LEASE}  # claims.log holds it for a restart
    with pytest.raises(NotPending):
        trio.run(s.claims.claim, task, 1234)
    clock.advance(LEASE - 1)
    trio.run(s.claims.renew, task)
    assert s.ws.state.claims[task].expires_at == clock.now + LEASE
    trio.run(s.claims.claim, other, 1234)
    trio.run(s.claims.release, other)
    with pytest.raises(NotClaimed):
        trio.run(s.claims.release, other)
    assert s.claims.expire() == []  # renewed: not yet
    clock.advance(LEASE)
    assert s.claims.expire() == [task]
    assert task in s.ws.state.pending and s.log.live == {}
    assert s.ws.status.expired == 1
    assert s.events() == [
        ("claim", REL),
        ("renew", REL),
        ("claim", OTHER),
        ("release", OTHER),
        ("expire", REL),
    ]
    assert s.outcomes == ["claimed", "already claimed", "claimed"]


def test_restore_holds_live_claims_again_after_a_restart(
    service_of: ServiceOf, clock: FakeClock
) -> None:
    s = service_of(fleet=True)
    task, other = s.task(REL), s.task(OTHER)
    trio.run(s.claims.claim, task, 1)
    clock.advance(LEASE / 2)
    trio.run(s.claims.claim, other, 1)
    s.close()  # the daemon stops (or is killed: claims.log is appended line by line)
    clock.advance(LEASE / 2)  # the first claim has ended meanwhile, the second has not
    again = service_of(fleet=True)
    assert again.restored == 1
    assert set(again.ws.state.claims) == {other} and task in again.ws.state.pending
    assert again.outcomes == ["restored"]
    assert again.fleet.unconfirmed == {other}  # confirmed fleet-wide at the next listing


def test_a_lost_fleet_race_leaves_the_task_to_the_other_worker(service_of: ServiceOf) -> None:
    s = service_of(fleet=True)
    task = s.task(REL)
    s.fleet.answer = False
    with pytest.raises(NotPending):
        trio.run(s.claims.claim, task, 1)
    assert task in s.ws.state.foreign and task not in s.ws.state.claims
    assert task not in s.ws.state.pending
    assert s.outcomes == ["claimed", "lost_to_another_worker"]
    assert ("claim", REL) not in s.events()  # the journal has no claim that did not happen


def test_strict_claim_without_s3_is_refused_for_a_retry(service_of: ServiceOf) -> None:
    s = service_of(fleet=True)
    s.fleet.answer = ClaimUnavailable("S3 did not answer")
    with pytest.raises(FleetUnavailable, match="retry later"):
        trio.run(s.claims.claim, s.task(REL), 1)
    assert s.outcomes == ["claimed", "fleet_lease_unavailable"]
    s.fleet.answer = True
    trio.run(s.claims.claim, s.task(OTHER), 1)
    assert s.outcomes[-1] == "fleet_lease_won"


def test_a_renewal_that_finds_the_lease_taken_over_is_lost(service_of: ServiceOf) -> None:
    s = service_of(fleet=True)
    trio.run(s.claims.claim, s.task(REL), 1)
    s.fleet.renewed = False
    with pytest.raises(LeaseLost, match="taken over"):
        trio.run(s.claims.renew, s.task(REL))


def test_expiry_tells_the_fleet(service_of: ServiceOf, clock: FakeClock) -> None:
    s = service_of(fleet=True)
    trio.run(s.claims.claim, s.task(REL), 1)
    clock.advance(LEASE)
    assert s.claims.expire() == [s.task(REL)]
    assert s.fleet.forgotten == [s.task(REL)]


def test_a_claim_the_journal_cannot_record_is_rolled_back_everywhere(
    service_of: ServiceOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = service_of(fleet=True)
    task = s.task(REL)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "append_whole", full)
    with pytest.raises(ClaimNotRecorded) as refused:
        trio.run(s.claims.claim, task, 1)
    assert refused.value.error.errno == errno.ENOSPC
    assert task in s.ws.state.pending and task not in s.ws.state.claims
    assert s.fleet.calls == [("claim", task), ("release", task)]  # the lease given back
    assert s.log.live == {}  # claims.log ended it too: a restart does not hold it


def test_metrics_count_the_outcomes_the_service_reports(service_of: ServiceOf) -> None:
    """The observer metrics give the service (Instruments.claim_outcome) labels outcomes as
    the scrape shows them (tests/mount/test_metrics.py checks the scrape of a real mount)."""
    ins = Instruments()
    s = service_of(fleet=True, outcomes=ins.claim_outcome)  # as a mount with --metrics is built
    trio.run(s.claims.claim, s.task(REL), 1)
    with pytest.raises(NotPending):
        trio.run(s.claims.claim, s.task(REL), 1)
    s.fleet.answer = False
    with pytest.raises(NotPending):
        trio.run(s.claims.claim, s.task(OTHER), 1)
    assert dict(ins.claims.items()) == {
        ("claimed",): 2,
        ("already_claimed",): 1,
        ("fleet_lease_won",): 1,
        ("lost_to_another_worker",): 1,
    }
