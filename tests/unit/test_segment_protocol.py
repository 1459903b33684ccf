"""`.missionfs/protocol.json` has one reading (model/segment.protocol_width), shared by the fact
log, the fleet view and fsck: fsck used to accept whole seconds only, so a fleet with windows
of 0.5 s had checkpoints fsck could not judge."""

from __future__ import annotations

import pytest

from fusefs.model.segment import protocol_width


@pytest.mark.parametrize(
    ("doc", "width"),
    [
        ({"version": 2, "window": 30}, 30.0),
        ({"version": 2, "window": 0.5}, 0.5),
        ({"version": 2, "window": 86400}, 86400.0),
        ({"version": 2, "window": 0}, None),
        ({"version": 2, "window": -1}, None),
        ({"version": 2, "window": 86401}, None),
        ({"version": 2, "window": True}, None),
        ({"version": 2, "window": "30"}, None),
        ({"version": 3, "window": 30}, None),
        ({"window": 30}, None),
        ([], None),
        (None, None),
        ({}, None),
    ],
)
def test_protocol_width(doc: object, width: float | None) -> None:
    assert protocol_width(doc) == width
