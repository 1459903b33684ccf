"""The journal writes its usual lines by hand (journal.py `_line`): the bytes must be exactly
what json.dumps writes, for any event, name and fields, or `jq` and read_journal would see
another history than before."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fusefs.statedir.journal import Journal, read_journal

names = st.text(max_size=12) | st.sampled_from(["sha256", "size", "rows", "t", "worker", "host"])
values = (
    st.text(max_size=20)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=3)
)


@settings(max_examples=400, deadline=None)
@given(
    ev=st.text(max_size=10),
    rel=st.none() | st.text(max_size=40),
    fields=st.dictionaries(names, values, max_size=4),
    worker=st.text(max_size=10),
)
def test_a_hand_written_line_is_the_line_json_dumps_writes(
    tmp_path_factory: Any, ev: str, rel: str | None, fields: dict[str, Any], worker: str
) -> None:
    journal = Journal(tmp_path_factory.mktemp("j"), worker)
    line = journal._line(ev, rel, fields)
    t = json.loads(line)["t"]  # the time it wrote (or a field named "t": json.dumps's way)
    expected = journal._dumped(t, ev, rel, fields).encode("utf-8", "backslashreplace")
    assert line == expected


def test_the_usual_lines_read_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 'w-1 "quoted"')
    journal.append("claim", "10/20/café.csv", pid=42, lease=900.0)
    journal.append("commit", "10/20/a\\b.csv", sha256="ab" * 32, size=7, rows=1, source="rename")
    journal.append("refused", "bad\udcff.csv", path="done/x", reason="not UTF-8", recovered=True)
    journal.close()
    lines = list(read_journal(tmp_path))
    assert [e["ev"] for e in lines] == ["claim", "commit", "refused"]
    assert lines[0]["rel"] == "10/20/café.csv" and lines[0]["lease"] == 900.0
    assert lines[1]["rel"] == "10/20/a\\b.csv" and lines[1]["rows"] == 1
    assert lines[2]["rel"] == "bad\udcff.csv" and lines[2]["recovered"] is True
    assert all(e["worker"] == 'w-1 "quoted"' for e in lines)
    assert all(isinstance(e["t"], float) and not math.isnan(e["t"]) for e in lines)
