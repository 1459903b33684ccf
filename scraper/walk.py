"""Finding pending tasks without listing the mission: one directory level at a time.

A pass lists `pending/`, then one row, then one tile, yielding candidates as it goes, so the
first claim costs three small listings whatever the mission's size. Every worker starts each
directory at its own offset (a hash of worker key and directory), so N workers spread over the
grid instead of all racing for the first task; a lost race costs one ENOENT rename.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator


def listdir(path: str, dirs: bool) -> list[str]:
    """Names of the sub-directories (or files) of `path`, in the mount's grid order."""
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if (e.is_dir() if dirs else e.is_file())]
    except FileNotFoundError:  # emptied since the level above was listed
        return []


def rotated(names: list[str], key: str, where: str) -> list[str]:
    """`names` starting at this worker's offset for directory `where` (wrapping around)."""
    if len(names) < 2:
        return names
    h = hashlib.blake2b(f"{key}\0{where}".encode(), digest_size=8).digest()
    k = int.from_bytes(h, "big") % len(names)
    return names[k:] + names[:k]


def walk_pending(pending: str, key: str) -> Iterator[str]:
    """One lazy pass over `pending`: relative paths LAT/LON/PHRASE.csv, spread by `key`."""
    for row in rotated(listdir(pending, True), key, ""):
        for tile in rotated(listdir(f"{pending}/{row}", True), key, row):
            where = f"{row}/{tile}"
            for name in rotated(listdir(f"{pending}/{where}", False), key, where):
                yield f"{where}/{name}"
