"""fsck's records (a problem, the report) and what it reads besides the files' bytes: every
entry of the witness tree at any depth (a stray directory or symlink is a problem too, where the
reconcile walk only lists tile files) and the journal's record of what each witness holds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.model.codec import OutOfPlan, TaskSpace
from fusefs.statedir.journal import read_journal
from fusefs.statedir.store import hidden

WITNESS_KINDS = {"empty", "truncated", "malformed", "changed"}  # quarantined contents


@dataclass
class Problem:
    check: str
    kind: str
    where: str
    what: str
    repaired: str | None = None


@dataclass
class Local:
    """What the witness check learned about one good local witness."""

    sha: str
    md5: str


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if p.repaired is None]


def tree_entries(tiles: Path) -> Iterator[tuple[str, bool]]:
    """(path relative to the witness tree, is a regular file) of every non-directory entry at
    any depth, and of directories where a witness file belongs; dot-entries are skipped."""
    yield from _entries(tiles, "", 0)


def _entries(path: Path, prefix: str, depth: int) -> Iterator[tuple[str, bool]]:
    try:
        listing = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for e in listing:
        if hidden(e.name):  # VCS metadata and the like: not the mission's, never moved
            continue
        rel = prefix + e.name
        if e.is_dir(follow_symlinks=False) and depth < 2:
            yield from _entries(Path(e.path), rel + "/", depth + 1)
        else:
            yield rel, e.is_file(follow_symlinks=False)


def journal_origins(directory: Path, space: TaskSpace) -> dict[int, tuple[str, str]]:
    """task -> (event, sha256) of the last journal record that says what its witness holds:
    commit (ours), fetch (from the bucket) or conflict (the winner's bytes replaced ours)."""
    out: dict[int, tuple[str, str]] = {}
    fields = {"commit": "sha256", "fetch": "sha256", "conflict": "winner_sha256"}
    for e in read_journal(directory):
        ev = e.get("ev")
        if ev == "fsck" and e.get("kind") in WITNESS_KINDS:
            _forget(out, space, e.get("rel"))
        if ev not in fields:
            continue
        try:
            task = space.parse_rel(str(e.get("rel", "")))
        except OutOfPlan:
            continue
        sha = e.get(fields[str(ev)])
        if sha:
            out[task] = (str(ev), str(sha))
        else:
            out.pop(task, None)  # "recovered": found on disk, content never recorded
    return out


def _forget(out: dict[int, tuple[str, str]], space: TaskSpace, rel: object) -> None:
    try:
        out.pop(space.parse_rel(str(rel)), None)
    except OutOfPlan:
        pass
