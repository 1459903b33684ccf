"""check_csv answers a witness without quotes, carriage returns or NULs without the csv module
(witness.py `_plain_rows`): its row count and its refusals must be csv.reader's, word for word."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefs.model.witness import InvalidWitness, _parse, _plain_rows, check_csv

# Lines made of a few fields of letters, spaces, tabs, non-ASCII; blank lines; varying widths.
field = st.text(alphabet=st.sampled_from([*"ab1 \t,é;|-", "\u2028"]), max_size=4)
line = st.lists(field, max_size=4).map(",".join)
texts = st.lists(line, min_size=1, max_size=8).map(lambda ls: "\n".join(ls) + "\n")


def _by_csv(text: str) -> int | str:
    try:
        return _parse(csv.reader(io.StringIO(text, newline=""), strict=True))
    except InvalidWitness as e:
        return f"refused: {e}"


def _by_hand(text: str) -> int | str:
    try:
        return _plain_rows(text)
    except InvalidWitness as e:
        return f"refused: {e}"


@settings(max_examples=600, deadline=None)
@given(texts)
def test_the_plain_path_answers_as_csv_reader_does(text: str) -> None:
    assert _by_hand(text) == _by_csv(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name,worker\nx,1\n\ny,2\n", 2),
        ("name,worker\nx,1,extra\n", "refused: line 2 has 3 fields, header has 2"),
        ("\nname\n", "refused: empty header line"),
        (" , \nx,y\n", "refused: empty header line"),
        ("h\n   \n", 1),  # spaces are a field
    ],
)
def test_examples(text: str, expected: int | str) -> None:
    assert _by_hand(text) == expected == _by_csv(text)
    if isinstance(expected, int):
        assert check_csv(text.encode()) == expected
