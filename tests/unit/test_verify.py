"""Verification shards: the fleet lists each shard exactly once, a lone node lists them all,
and a member leaving (or joining) moves only its own shards."""

from __future__ import annotations

from fusefs.engine.verify import my_shards

SHARDS = [f"runs/m/scraped-tiles/{lat / 10:.1f}/" for lat in range(-300, 300, 3)]
CREW = [f"node-{i}" for i in range(7)]


def assignment(crew: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for worker in crew:
        for shard in my_shards(SHARDS, worker, crew):
            assert shard not in out, f"{shard} listed by {out[shard]} and {worker}"
            out[shard] = worker
    return out


def test_the_fleet_covers_each_shard_exactly_once() -> None:
    owners = assignment(CREW)
    assert sorted(owners) == sorted(SHARDS)
    counts = {w: sum(1 for o in owners.values() if o == w) for w in CREW}
    assert min(counts.values()) >= len(SHARDS) / len(CREW) / 3  # spread, not all on one node


def test_a_node_alone_lists_everything_in_order() -> None:
    assert my_shards(SHARDS, "lonely", []) == SHARDS
    assert my_shards(SHARDS, "lonely", ["lonely"]) == SHARDS
    assert my_shards([], "lonely", CREW) == []


def test_a_member_leaving_moves_only_its_shards() -> None:
    before = assignment(CREW)
    gone = CREW[3]
    after = assignment([w for w in CREW if w != gone])
    moved = {s for s in SHARDS if before[s] != after[s]}
    assert moved == {s for s in SHARDS if before[s] == gone} and moved
    joined = assignment([*CREW, "node-new"])  # joining takes shards, moves no others
    assert {s for s in SHARDS if before[s] != joined[s]} == {
        s for s in SHARDS if joined[s] == "node-new"
    }


def test_a_node_not_yet_in_its_crew_still_gets_a_share() -> None:
    mine = my_shards(SHARDS, "newcomer", CREW)
    others = [s for w in CREW for s in my_shards(SHARDS, w, [*CREW, "newcomer"])]
    assert mine and sorted(mine + others) == sorted(SHARDS)
