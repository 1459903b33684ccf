"""A worker thread that fails a task records the failure (its cool-down or its give-up) before
it gives the claim back: once released the task is pending for the process's other threads
too, and one of them claimed it in that gap and tried it once more than `--attempts` allows
(seen as a flaky "gave up after 2 attempt(s)" with --attempts 1)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from scraper.source import SourceError
from scraper.worker import Pool

REL = "40.70/-74.02/plumber.csv"
DESCRIPTOR = {
    "rel": REL, "phrase": "plumber", "lat": 40.70, "lon": -74.02,
    "south": 40.70, "west": -74.02, "north": 40.71, "east": -74.01,
}  # fmt: skip


class Failing:
    name = "failing"

    def fetch(self, task: object, stop: threading.Event) -> list[object]:
        raise SourceError("overpass: malformed JSON")


@pytest.mark.parametrize("descriptor", [DESCRIPTOR, "not json"])
def test_a_failure_is_recorded_before_the_claim_is_released(
    tmp_path: Path, descriptor: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for d in ("pending", "claimed", "done", "tmp"):
        (tmp_path / d / "40.70/-74.02").mkdir(parents=True)
    body = json.dumps(descriptor) if isinstance(descriptor, dict) else str(descriptor)
    (tmp_path / "claimed" / REL).write_text(body)  # claimed by this worker
    pool = Pool(tmp_path, Failing(), 1, attempts=1)  # type: ignore[arg-type]
    seen_at_release: list[bool] = []
    release = Pool._release

    def watched(self: Pool, rel: str) -> None:
        seen_at_release.append(rel in self.summary.failed or rel in self._cool_until)
        release(self, rel)

    monkeypatch.setattr(Pool, "_release", watched)
    pool._process(0, REL)
    assert seen_at_release == [True]  # another thread walking pending/ would skip it now
    assert REL in pool.summary.failed and pool.summary.released == 1
    assert not (tmp_path / "claimed" / REL).exists()
