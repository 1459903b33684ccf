"""Remote facts (other workers' witnesses learned by the sync engine), without an S3 server."""

from __future__ import annotations

import errno
from collections.abc import Callable

from tests.engine.driver import EngineNode, FakeBucket

REL = "10.0/20.2/plumber.csv"
BODY = b"name\nfrom another worker\n"


def test_a_remote_fact_leaves_pending_and_ends_our_claim(
    make_node: Callable[..., EngineNode],
) -> None:
    node = make_node(bucket=FakeBucket())
    assert node.claim(REL) == 0
    assert node.learn_remote(REL, BODY) == 1
    assert node.ls("claimed") == []
    assert node.ls("pending/10.0/20.2") == ["coffee shop.csv"]
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.stat(f"done/{REL}").size == len(BODY)  # known from the listing, before a fetch
    assert node.direct_write(REL, b"name\nours\n") == errno.EEXIST
    assert node.read(f"done/{REL}") == BODY  # fetched from the bucket, kept locally
    assert node.stat(f"done/{REL}").size == len(BODY)
    assert (node.state_dir / "scraped-tiles" / REL).read_bytes() == BODY
    assert node.status()["sync"]["remote_facts"] == 1


def test_remote_facts_survive_a_restart_without_the_bucket_listing_them_again(
    make_node: Callable[..., EngineNode],
) -> None:
    bucket = FakeBucket()
    node = make_node(bucket=bucket)
    assert node.learn_remote(REL, BODY) == 1
    node.restart()
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.claim(REL) == errno.ENOENT
    assert node.learn_remote(REL, BODY) == 0  # already known
    assert node.read(f"done/{REL}") == BODY


def test_remote_fact_of_a_task_done_here_changes_nothing(
    make_node: Callable[..., EngineNode],
) -> None:
    node = make_node(bucket=FakeBucket())
    assert node.direct_write(REL, b"name\nours\n") == 0
    node.learn_remote(REL, BODY)
    assert node.ls("done/10.0/20.2") == ["plumber.csv"]
    assert node.read(f"done/{REL}") == b"name\nours\n"
