"""The fleet simulator (bench/fleet_sim.py) on a tiny fleet: 3 nodes x 2 workers, strict claims,
the real sync, claims and refresh code in virtual time against one in-process bucket."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

import fusefs.engine.sync
from bench import fleet_sim
from bench.fleet_sim import SimConfig, learn_cost, run_fleet

TINY = SimConfig(nodes=3, workers=2, tasks_per_node=8, task_time=5.0, refresh=5.0)


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two runs with the same seed (each a few tenths of a second of real time)."""
    return run_fleet(TINY), run_fleet(TINY)


def test_every_task_is_done_exactly_once_with_strict_claims(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    r = runs[0]
    assert r["tasks"] == 24
    assert r["completed"] == r["tasks"] == r["in_bucket"]  # each task committed, each uploaded
    assert r["duplicates"] == 0
    assert r["staleness_p99"] >= r["staleness_p50"] >= 0
    assert r["staleness_p99"] <= 3 * TINY.refresh  # the peers learned every witness


def test_requests_per_task_are_reported_by_kind(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    r = runs[0]
    per_task = r["per_task"]
    # Each completed task costs at least its witness PUT and its lease PUT; the peers' reads
    # of the manifests are GETs.
    assert per_task["PUT"] >= 2
    assert per_task["GET"] > 0 and per_task["LIST"] > 0
    assert r["requests_per_task"] == pytest.approx(sum(per_task.values()), abs=0.01)
    assert r["usd_per_1m_tasks"] > 0 and r["peak_per_s"] > 0 and r["slowdowns"] == 0


def test_the_same_seed_gives_the_same_numbers(
    runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    measured = {"wall_s", "rss_kib_per_node"}  # real time and memory, not simulated
    a, b = ({k: v for k, v in r.items() if k not in measured} for r in runs)
    assert a == b
    other = run_fleet(dataclasses.replace(TINY, seed=2))
    assert other["requests"] != a["requests"] or other["virtual_s"] != a["virtual_s"]


def test_the_simulator_undoes_its_patching(runs: Any) -> None:
    assert fusefs.engine.sync.time is fleet_sim.time
    assert trio.to_thread.run_sync is trio._threads.to_thread_run_sync


def test_without_leases_the_duplicates_show() -> None:
    """The duplicate count can fail: `claims = "local"` (no S3 leases) on a small mission lets
    nodes pick the same tasks."""
    r = run_fleet(dataclasses.replace(TINY, claims="local", tasks_per_node=2, workers=4))
    assert r["completed"] == r["tasks"]
    assert r["duplicates"] > 0


def test_a_new_node_learns_every_fact_of_the_bucket(tmp_path: Path) -> None:
    r = learn_cost(2000, dataclasses.replace(TINY, state_root=tmp_path))
    assert r["known"] == r["witnesses"] >= 2000
    assert r["by_kind"]["LIST"] >= r["witnesses"] / 1000  # today: a full listing
    assert r["bytes"] > 0 and r["virtual_s"] > 0
