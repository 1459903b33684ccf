"""The S3 server's clock as a node sees it (S3ObjectStore.server_time): protocol v2's windows
come from it, so two nodes must agree on it to well under a second, whatever their own clocks
say. Date headers have whole seconds; the estimate is the highest lower bound seen lately."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field

import pytest

import fusefs.objects.s3
from fusefs.objects.s3 import S3ObjectStore


@dataclass
class Response:
    headers: dict[str, str] = field(default_factory=dict)


class Clock:
    """time.time and time.monotonic of one node (its wall clock is off the server's)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("skew", [120.0, -120.0, 0.0])
def test_nodes_with_skewed_clocks_agree_on_the_server_time(
    monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    server_start = 1_800_000_000.3
    clock = Clock(server_start - skew)
    monkeypatch.setattr(fusefs.objects.s3, "time", clock)
    store = S3ObjectStore("bucket", "http://127.0.0.1:9")  # no request is made
    errors = []
    for i in range(40):
        clock.now += 0.137 + (i % 5) * 0.05  # answers at irregular times
        server = clock.now + skew
        date = email.utils.formatdate(int(server), usegmt=True)  # whole seconds, as S3 says
        store._track_date(http_response=Response({"Date": date}))
        errors.append(store.server_time() - server)
    assert all(-1.0 <= e <= 0.0 for e in errors)  # never ahead of the server
    assert all(abs(e) < 0.05 for e in errors[15:]), errors  # a few answers: within 50 ms
