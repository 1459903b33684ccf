"""The path codec: exact coordinates, reversible phrase names, task ids <-> relative paths."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from fusefs.model.codec import (
    Axis,
    TaskSpace,
    decode_phrase,
    encode_phrase,
    format_scaled,
    parse_scaled,
    phrase_filename,
)

phrases = st.text(min_size=1, max_size=40)


def test_format_is_exact_and_never_negative_zero() -> None:
    assert format_scaled(4071, 2) == "40.71"
    assert format_scaled(-7400, 2) == "-74.00"
    assert format_scaled(0, 2) == "0.00"
    assert format_scaled(-5, 2) == "-0.05"
    assert format_scaled(-5, 0) == "-5"
    assert format_scaled(0, 0) == "0"


@given(st.integers(-18_000_000_000, 18_000_000_000), st.integers(0, 9))
def test_format_parse_roundtrip_matches_decimal(value: int, scale: int) -> None:
    text = format_scaled(value, scale)
    assert parse_scaled(text, scale) == value
    assert Decimal(text) == Decimal(value).scaleb(-scale)
    assert not text.startswith("-0") or Decimal(text) != 0
    assert text != "-" + format_scaled(0, scale)


def test_parse_rejects_non_canonical_forms() -> None:
    for bad in ("40.7", "40.710", "+40.71", "040.71", "-0.00", "40,71", " 40.71", "4e1", "٤٠.٧١"):
        assert parse_scaled(bad, 2) is None, bad


def test_phrase_encoding_escapes_only_what_it_must() -> None:
    assert encode_phrase("coffee shop") == "coffee shop"
    assert encode_phrase("café ☕") == "café ☕"
    assert encode_phrase("a/b") == "a%2Fb"
    assert encode_phrase("100%") == "100%25"
    assert encode_phrase(".hidden") == "%2Ehidden"
    assert encode_phrase("a.b") == "a.b"
    assert encode_phrase("nul\0") == "nul%00"
    assert encode_phrase("line\nbreak") == "line%0Abreak"


@given(phrases)
def test_phrase_roundtrip(phrase: str) -> None:
    stem = encode_phrase(phrase)
    assert "/" not in stem and "\0" not in stem and not stem.startswith(".")
    assert decode_phrase(stem) == phrase


@given(phrases, phrases)
def test_two_phrases_never_share_a_name(a: str, b: str) -> None:
    if a != b:
        assert phrase_filename(a) != phrase_filename(b)


def test_decode_rejects_non_canonical_escapes() -> None:
    assert decode_phrase("%41") is None  # 'A' must stay literal
    assert decode_phrase("%2f") is None  # lower-case hex is not canonical
    assert decode_phrase("%") is None
    assert decode_phrase("%zz") is None
    assert decode_phrase("") is None


def _space() -> TaskSpace:
    return TaskSpace(Axis(4070, 1, 3, 2), Axis(-7402, 1, 4, 2), ("coffee shop", "a/b", "100%"))


@given(st.data())
def test_task_id_rel_roundtrip(data: st.DataObject) -> None:
    space = _space()
    task = data.draw(st.integers(0, space.size - 1))
    rel = space.rel(task)
    assert space.parse_rel(rel) == task
    name = rel.split("/")[2]
    t = space.split(task)
    assert space.task_id(t.row, t.col, t.phrase) == task
    assert name == phrase_filename(space.phrases[t.phrase])


def test_descriptor_is_one_json_line_of_the_advertised_size() -> None:
    import json

    space = _space()
    for task in range(space.size):
        d = space.descriptor(task)
        assert len(d) == space.descriptor_size(task)
        assert d.endswith(b"\n") and d.count(b"\n") == 1
        obj = json.loads(d, parse_float=Decimal)
        assert obj["rel"] == space.rel(task)
        assert obj["done"] == "done/" + space.rel(task)
        assert obj["north"] - obj["south"] == Decimal("0.01")
        assert obj["phrase"] == space.phrases[space.split(task).phrase]


def test_parse_rel_explains_what_is_wrong() -> None:
    import pytest

    from fusefs.model.codec import OutOfPlan

    space = _space()
    with pytest.raises(OutOfPlan, match=r"latitude '41\.00'"):
        space.parse_rel("41.00/-74.02/coffee shop.csv")
    with pytest.raises(OutOfPlan, match="longitude"):
        space.parse_rel("40.70/-74.2/coffee shop.csv")
    with pytest.raises(OutOfPlan, match="phrase"):
        space.parse_rel("40.70/-74.02/tea.csv")
    with pytest.raises(OutOfPlan, match="LAT/LON/PHRASE"):
        space.parse_rel("40.70/coffee shop.csv")
