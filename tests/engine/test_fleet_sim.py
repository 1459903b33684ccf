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
from bench.fleet_sim import SimConfig, learn_cost, learn_v2, run_fleet

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
    measured = {"wall_s", "startup_wall_s", "rss_kib_per_node"}  # real time and memory
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
    """Without a checkpoint (a new bucket, or one of protocol v1): one full listing."""
    r = learn_cost(2000, dataclasses.replace(TINY, state_root=tmp_path))
    assert r["known"] == r["witnesses"] >= 2000
    assert r["by_kind"]["LIST"] >= r["witnesses"] / 1000
    assert r["bytes"] > 0 and r["virtual_s"] > 0


def test_a_new_node_learns_from_a_checkpoint_and_the_segments_after_it() -> None:
    """Protocol v2: a checkpoint and at most C segments, whatever the bucket holds: no listing
    of scraped-tiles/ (the issue's bound: 20 requests, the start-up's self-test included)."""
    r = learn_v2(60_000, dataclasses.replace(TINY, refresh=30.0))
    assert r["known"] == r["witnesses"] == 60_000
    assert r["checkpoint_facts"] > 0 and r["segments"] >= 1
    assert r["by_area"].get("LIST scraped-tiles", 0) == 0
    assert r["by_area"]["GET checkpoints"] == 1
    assert r["by_area"]["GET segments"] == r["segments"]
    assert r["requests"] <= 20 and r["virtual_s"] <= 5


def test_shared_learning_changes_no_request_nor_fact() -> None:
    """bench/fleet_sim_fast.py only does once what every node would do alike: the same
    requests, facts and timings as every node doing it itself (`exact`)."""
    cfg = dataclasses.replace(TINY, nodes=4, tasks_per_node=10)
    fast, exact = run_fleet(cfg), run_fleet(dataclasses.replace(cfg, exact=True))
    measured = {"wall_s", "startup_wall_s", "rss_kib_per_node"}
    assert {k: v for k, v in fast.items() if k not in measured} == {
        k: v for k, v in exact.items() if k not in measured
    }


# -- the scale property (issue 15): requests per task do not grow with the fleet ----------------
# Two fleets of 8 workers x 10 s tasks with windows of W = 30 s, on a mission much larger than
# what they finish, counted over 5 windows after a warm-up.
SCALE = SimConfig(
    workers=8, task_time=10.0, refresh=30.0, mission_tasks=200_000, warmup=90.0, measure=150.0
)


def window_budget(cfg: SimConfig, nodes: int) -> tuple[float, float]:
    """What the protocol v2 design (docs/protocol.md) allows per completed task: each task
    costs its witness PUT and its lease PUT; each node, each window, at most a manifest PUT,
    a segment GET, two lease LISTs (its chunks and its held leases' chunks) and a tombstone
    POST, plus its share of the window's compaction (a LIST, a GET per node manifest and a
    PUT, done by one node for all: (N + 2) / N). Returns (the budget per task, the part of it
    that depends on N), both divided by the tasks a node completes in a window."""
    tasks_per_node_window = cfg.workers * cfg.refresh / cfg.task_time
    compaction = (nodes + 2) / nodes
    per_window = 1 + 1 + 2 + 1 + compaction
    return 2 + per_window / tasks_per_node_window, compaction / tasks_per_node_window


@pytest.fixture(scope="module")
def scale() -> tuple[dict[str, Any], dict[str, Any]]:
    return run_fleet(dataclasses.replace(SCALE, nodes=2)), run_fleet(
        dataclasses.replace(SCALE, nodes=8)
    )


def test_requests_per_task_do_not_grow_with_the_fleet(
    scale: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """From 2 to 8 nodes the per-task cost may move only by the fleet-size-dependent part of
    the design's budget (the amortised compaction: (N + 2) / N per node-window), with
    one request per node-window of slack for claim races; protocol v1 grew by ~N - 1 GETs
    a task (every node read every peer's manifests) and fails this."""
    small, big = scale
    assert small["completed"] > 0.5 * 2 * SCALE.workers * SCALE.measure / SCALE.task_time
    assert big["completed"] > 0.5 * 8 * SCALE.workers * SCALE.measure / SCALE.task_time
    _, n_part_small = window_budget(SCALE, 2)
    budget_big, n_part_big = window_budget(SCALE, 8)
    slack = 1 / (SCALE.workers * SCALE.refresh / SCALE.task_time)
    assert abs(big["requests_per_task"] - small["requests_per_task"]) <= (
        n_part_small - n_part_big + slack
    ), (small["per_task_by_area"], big["per_task_by_area"])
    assert big["requests_per_task"] <= budget_big + slack, big["per_task_by_area"]
    for r in scale:
        assert r["duplicates"] == 0 and r["slowdowns"] == 0
        # Facts reach every node within two windows (a window, the settle and the read delay).
        assert 0 < r["staleness_p99"] <= 2 * SCALE.refresh


def test_the_simulators_shared_rendezvous_splits_as_the_crew_does() -> None:
    """bench/fleet_sim_fast.py computes every node's shares once for the fleet instead of
    calling affinity.Crew._split: the shares, the help order and where a node starts in its
    share must be the real ones (an own start left at 0 made the simulated fleet's nodes all
    start in the mission's first chunks: claim races the real daemon does not have)."""
    from pyroaring import BitMap

    from bench.fleet_sim_fast import Rendezvous
    from fusefs.model.affinity import Crew

    intent = BitMap(range(0, 300_000, 3))
    names = [f"node{i:04d}" for i in range(12)]
    shared = Rendezvous(names)
    for me in names[:4]:
        for members in (sorted([me, *names[5:8]]), sorted(names)):
            real, sim = Crew(me, intent, 60.0), Crew(me, intent, 60.0)
            real._split(members)
            shared.split(sim, members)
            assert sim._shares == real._shares
            assert sim.help_order == real.help_order
            assert sim.own_start == real.own_start != 0
