"""CheckpointBook against real S3 servers (moto and SeaweedFS on 127.0.0.1): what the in-process
tests prove holds over HTTP too: create-only writes, a LIST + GET for a new node, a corrupt
newest and a deleted one fall back to the previous, prune with one DeleteObjects."""

from __future__ import annotations

import pytest
from pyroaring import BitMap

from fusefs.engine.checkpoints import CheckpointBook
from fusefs.model.checkpoint import Checkpoint, TileDigests
from fusefs.model.codec import Axis, TaskSpace
from fusefs.objects.s3store import S3Store
from tests.support.mounts import new_bucket
from tests.support.s3_servers import Server, s3_env

SPACE = TaskSpace(Axis(0, 1, 50, 2), Axis(100, 1, 50, 2), ("a", "b", "c"))


def book(server: Server, bucket: str) -> CheckpointBook:
    return CheckpointBook(S3Store(f"s3://{bucket}/runs", "m", server.endpoint), SPACE)


def make(window: int) -> Checkpoint:
    facts = BitMap(range(window, SPACE.size, 7))
    digests = TileDigests.for_space(SPACE)
    for t in list(facts)[:50]:
        digests.add_task(t, SPACE.rel(t), f"{t:064x}")
    return Checkpoint(window, facts, {t: t % 300 + 1 for t in facts}, digests)


@pytest.mark.parametrize("kind", ["moto", "seaweed"])
def test_checkpoints_on_a_real_server(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: Server = request.getfixturevalue(kind)
    for k, v in s3_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = new_bucket(server)
    writer = book(server, bucket)
    assert writer.latest() is None
    for w in (1, 2, 3, 4, 5):
        assert writer.write(make(w))
    assert not writer.write(make(5))  # If-None-Match honoured: the first one stays

    fresh = book(server, bucket)
    cp = fresh.latest()
    assert fresh.s3.requests == {"LIST": 1, "GET": 1}
    assert cp is not None and cp.window == 5 and cp.facts == make(5).facts
    assert dict(cp.sizes.items()) == dict(make(5).sizes)
    assert dict(cp.digests.items()) == dict(make(5).digests.items())

    c, root = server.client(), "runs/m/checkpoints/"
    body = c.get_object(Bucket=bucket, Key=f"{root}0000000005.ckpt")["Body"].read()
    c.put_object(Bucket=bucket, Key=f"{root}0000000005.ckpt", Body=body[: len(body) // 2])
    c.delete_object(Bucket=bucket, Key=f"{root}0000000004.ckpt")
    again = book(server, bucket)
    cp = again.latest()
    assert cp is not None and cp.window == 3 and cp.facts == make(3).facts
    assert [(s.window, s.problem) for s in again.skipped] == [(5, "corrupt")]

    assert writer.prune(keep=2) == 2
    listed = c.list_objects_v2(Bucket=bucket, Prefix=root)["Contents"]
    assert sorted(o["Key"].removeprefix(root) for o in listed) == [
        "0000000003.ckpt",
        "0000000005.ckpt",
    ]
