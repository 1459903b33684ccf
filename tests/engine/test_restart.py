"""A node closed and opened again on the same state dir: facts and live claims survive."""

from __future__ import annotations

import errno

import pytest

from tests.engine.driver import LEASE, EngineNode, FakeClock

DONE = "10.0/20.0/coffee shop.csv"
HELD = "10.1/20.1/plumber.csv"
SHORT = "10.2/20.0/coffee shop.csv"


@pytest.mark.parametrize("clean", [True, False], ids=["unmount", "kill"])
def test_facts_and_claims_survive_a_restart(
    node: EngineNode, clock: FakeClock, clean: bool
) -> None:
    assert node.direct_write(DONE, b"name\nA\n") == 0
    assert node.claim(HELD) == 0
    clock.advance(LEASE / 2)
    assert node.claim(SHORT) == 0
    clock.advance(LEASE / 2)  # HELD's lease ends now (not swept yet), SHORT's later
    node.restart(clean=clean)
    assert node.ls("done/10.0/20.0") == ["coffee shop.csv"]
    assert node.read(f"done/{DONE}") == b"name\nA\n"
    assert node.ls("claimed") == ["10.2"]
    assert node.ls("claimed/10.2/20.0") == ["coffee shop.csv"]
    assert node.ls("pending/10.1/20.1") == ["coffee shop.csv", "plumber.csv"]
    assert "coffee shop.csv" not in node.ls("pending/10.2/20.0")
    # The restored claim keeps its expiry: it ends when it would have without the restart.
    clock.advance(LEASE / 2 - 1)
    assert node.expire() == []
    clock.advance(1)
    assert node.expire() == [SHORT]
    assert node.claim(SHORT) == 0  # and it can be claimed again
    assert node.direct_write(DONE, b"name\nB\n") == errno.EEXIST


def test_a_witness_found_on_disk_at_restart_is_a_fact(node: EngineNode) -> None:
    """Files are the truth: a witness copied in while the daemon was down is found."""
    node.close()
    rel = "10.1/20.2/plumber.csv"
    (node.state_dir / "scraped-tiles" / rel).parent.mkdir(parents=True)
    (node.state_dir / "scraped-tiles" / rel).write_bytes(b"name\nC\n")
    node.restart()
    assert node.ls("done") == ["10.1"]
    assert node.ls("pending/10.1/20.2") == ["coffee shop.csv"]
    assert node.claim(rel) == errno.ENOENT
