"""The state dir's paths come from one module (statedir/layout.py), and it documents them."""

from __future__ import annotations

import re
from pathlib import Path

import fusefs.statedir.layout as layout_module
from fusefs.statedir.layout import StateLayout

ROOT = Path("/srv/state")
FUSEFS = Path(layout_module.__file__).resolve().parents[1]


def paths(layout: StateLayout) -> dict[str, Path]:
    cls = type(layout)
    return {n: getattr(layout, n) for n in dir(cls) if isinstance(getattr(cls, n), property)}


def test_every_path_is_under_the_root_and_named_once() -> None:
    found = paths(StateLayout(ROOT))
    assert len(found) >= 20  # lock, worker id, index, journal, claims log, hash cache, ...
    for name, path in found.items():
        assert path.is_relative_to(ROOT) and path != ROOT, name
    assert len(set(found.values())) == len(found), "two names for one path"


def test_the_docstring_lists_every_path() -> None:
    doc = layout_module.__doc__ or ""
    for name, path in paths(StateLayout(ROOT)).items():
        rel = path.relative_to(ROOT).as_posix()
        assert re.search(rf"(^|\s){re.escape(rel)}(/|\s|$)", doc, re.M), f"{name}: {rel}"


def test_names_are_the_top_level_entries() -> None:
    names = StateLayout(ROOT).names()
    assert {"scraped-tiles", "index", "journal", "daemon.lock", "claims.log"} <= names
    assert "hashes.sqlite" not in names  # it lives in index/


def test_no_other_module_joins_a_state_name_to_a_path() -> None:
    """`something / "journal"` or `/ "daemon.lock"` outside layout.py would be a second
    definition of the state dir's format (the bucket's areas are strings, never joined)."""
    rels = {p.relative_to(ROOT).parts[-1] for p in paths(StateLayout(ROOT)).values()}
    joined = re.compile(r"/\s*[\"'](" + "|".join(map(re.escape, rels)) + r")[\"']")
    offenders = []
    for source in FUSEFS.rglob("*.py"):
        if source.name == "layout.py" and source.parent.name == "statedir":
            continue
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if joined.search(line):
                offenders.append(f"{source.relative_to(FUSEFS.parent)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_check_above_sees_a_join() -> None:
    """The pattern of the test above matches what it must refuse (it can fail)."""
    rels = {p.relative_to(ROOT).parts[-1] for p in paths(StateLayout(ROOT)).values()}
    joined = re.compile(r"/\s*[\"'](" + "|".join(map(re.escape, rels)) + r")[\"']")
    assert joined.search('open(state_dir / "daemon.lock")')
    assert joined.search("root / 'journal'")
    assert not joined.search('WITNESSES = "scraped-tiles"')
