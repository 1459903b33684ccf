"""Inode numbers: computed from (kind, id), so the views need no inode table.

A row, tile or task of a view always has the same inode number; only tmp/ files and direct
writes in progress get numbers from a counter. The kind sits in the high bits so that the
numbers stay below 2**63 (they double as readdir offsets).
"""

from __future__ import annotations

from enum import IntEnum

from fusefs.model.codec import TaskSpace
from fusefs.model.state import View

ROOT = 1
VIEW_ROOTS = {View.PENDING: 2, View.CLAIMED: 3, View.DONE: 4}
TMP_DIR = 5
STATUS = 6
ROOT_NAMES = {b"pending": 2, b"claimed": 3, b"done": 4, b"tmp": TMP_DIR, b"status": STATUS}
VIEW_OF_ROOT = {ino: view for view, ino in VIEW_ROOTS.items()}

SHIFT = 48
MASK = (1 << SHIFT) - 1


class Kind(IntEnum):
    FIXED = 0
    ROW = 1  # + view offset
    TILE = 4
    FILE = 7
    TMP = 10  # tmp/ files and staged direct writes


_VIEW_OFFSET = {View.PENDING: 0, View.CLAIMED: 1, View.DONE: 2}
VIEWS = (View.PENDING, View.CLAIMED, View.DONE)


def make(kind: Kind, view: View | None, payload: int) -> int:
    k = int(kind) + (_VIEW_OFFSET[view] if view is not None else 0)
    return (k << SHIFT) | payload


def split(ino: int) -> tuple[Kind, View | None, int]:
    k = ino >> SHIFT
    payload = ino & MASK
    if k == 0:
        return Kind.FIXED, None, ino
    if k >= Kind.TMP:
        return Kind.TMP, None, payload
    base = (k - 1) // 3 * 3 + 1
    return Kind(base), VIEWS[k - base], payload


def task_in_tile(space: TaskSpace, tile: int, name: bytes) -> int | None:
    """The task named `name` in tile `tile`, or None if no phrase of the mission is so named."""
    phrase = space.phrase_of(name.decode("utf-8", "surrogateescape"))
    if phrase is None:
        return None
    return tile * space.nphr + phrase
