"""The streaming witness check (commit.py's) agrees with check_csv on every input.

check_stream reads a file in chunks so that a commit costs constant memory; check_csv is the
reference (the whole file in memory). They must accept the same files, count the same rows and
give the same message, wherever the chunk boundaries fall: inside a multi-byte UTF-8 character,
between the "\\r" and "\\n" of a CRLF, inside a quoted field spanning lines.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from fusefs.model import witness
from fusefs.model.witness import InvalidWitness, check_csv, check_stream

PIECES = [
    b"a",
    b"bc",
    b",",
    b'"',
    b'""',
    b"\n",
    b"\r",
    b"\r\n",
    b" ",
    "é".encode(),
    "€".encode(),
    "😀".encode(),
    b"\xff",  # never valid in UTF-8
    b"\xe2\x82",  # a truncated 3-byte sequence
    b"\xe2\x28\xa1",  # an invalid continuation byte
    b"\x00",
]


def reference(data: bytes) -> tuple[str, int | str]:
    try:
        return "ok", check_csv(data)
    except InvalidWitness as e:
        return "refused", str(e)


def streamed(data: bytes, chunk: int) -> tuple[str, int | str]:
    try:
        checked = check_stream(io.BytesIO(data), chunk)
    except InvalidWitness as e:
        return "refused", str(e)
    assert checked.sha256 == hashlib.sha256(data).hexdigest()
    assert checked.size == len(data)
    return "ok", checked.rows


csv_bytes = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
# Mostly well-formed files too, so that acceptance (not only refusal) is exercised.
records = st.lists(
    st.lists(st.sampled_from(["x", "é€", "😀", '"q,\r\nz"', '"a""b"', ""]), min_size=2, max_size=2),
    min_size=1,
    max_size=8,
)
good_bytes = st.tuples(records, st.sampled_from(["\n", "\r\n"])).map(
    lambda t: "".join(",".join(r) + t[1] for r in [["h1", "h2"], *t[0]]).encode()
)


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(csv_bytes, good_bytes), chunk=st.integers(1, 9))
def test_stream_agrees_with_check_csv(data: bytes, chunk: int) -> None:
    assert streamed(data, chunk) == reference(data)


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(csv_bytes, good_bytes), chunk=st.integers(1, 9), limit=st.integers(0, 30))
def test_stream_agrees_above_the_parse_limit(data: bytes, chunk: int, limit: int) -> None:
    """Files over MAX_CHECK_BYTES get line-level checks only, in both."""
    with mock.patch.object(witness, "MAX_CHECK_BYTES", limit):
        assert streamed(data, chunk) == reference(data)


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(csv_bytes, good_bytes), chunk=st.integers(1, 9), cut=st.integers(0, 6))
def test_stream_agrees_when_long_lines_are_cut(data: bytes, chunk: int, cut: int) -> None:
    """Lines longer than CUT_AT reach csv.reader in parts cut after commas: same verdicts."""
    with mock.patch.object(witness, "CUT_AT", cut):
        assert streamed(data, chunk) == reference(data)


def test_errors_inside_a_cut_line_name_the_right_line() -> None:
    for data in (b'h1,h2,h3\n1,2,3\n"a"b,c,d\n', b"h\n1\n2,3,4,5\n", b'a,b\n"x,y\n'):
        for cut in range(4):
            with mock.patch.object(witness, "CUT_AT", cut):
                for chunk in (1, 2, 5, 64):
                    assert streamed(data, chunk) == reference(data), (data, cut, chunk)


def test_a_long_line_costs_a_part_not_the_line() -> None:
    line = b"x," * 3_000_000 + b"x\n"  # 6 MB, one line of 3,000,001 fields
    data = b",".join([b"h"] * 3_000_001) + b"\n" + line
    tracemalloc.start()
    try:
        checked = check_stream(io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert checked.rows == 1
    assert peak < 12 * 2**20, peak  # check_csv: the whole text and 6 million field strings
    huge_field = b"h\n" + b"a" * 600_000 + b"\n"
    assert streamed(huge_field, 1 << 16) == reference(huge_field)
    assert "field larger than field limit" in str(reference(huge_field)[1])


def test_boundaries_inside_multibyte_and_crlf() -> None:
    data = 'name,note\r\n"café, ""x""",😀\r\n€,"two\r\nlines"\r\n'.encode()
    for chunk in range(1, len(data) + 1):
        assert streamed(data, chunk) == ("ok", 2), chunk
    bad = data[:15] + b"\xff" + data[15:]
    for chunk in range(1, len(bad) + 1):
        assert streamed(bad, chunk) == ("refused", "not UTF-8 at byte 15"), chunk


def test_known_refusals() -> None:
    cases = {
        b"": "empty file",
        b"a,b\n1,2": "does not end in a newline",
        b"a,b\n1\n": "line 2 has 1 fields",
        b"\n": "empty header line",
        b'a,b\n"1,2\n': "malformed CSV",
    }
    for data, message in cases.items():
        verdict, why = streamed(data, 3)
        assert verdict == "refused" and message in str(why), (data, why)
