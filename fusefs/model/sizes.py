"""Sizes of remote-only witnesses: what `stat done/REL` says before the file is fetched.

A node that learned a witness from the bucket (a listing or another worker's manifest) shows it
in `done/` at once but fetches it on first read. Until then its size must still be right:
`rsync -a`, `tar`, `du`, `find -empty` and `shutil.copytree` trust `st_size`, and a size of 0
made them copy empty files. The size comes with the fact (ListObjectsV2 gives it, manifests
carry it) and is dropped once the witness is fetched (the local file answers then).

Sizes are kept with the remote facts (index.py: `rel<TAB>size` log lines and a sizes file with
each snapshot), so a restart, clean or after `kill -9`, shows them at once without asking S3.
"""

from __future__ import annotations

from array import array
from itertools import compress

import numpy as np
from pyroaring import BitMap

UNKNOWN = 0  # a witness is never empty (check_csv refuses empty files): 0 means "not known"
_MAX = 2**32 - 1
_ABSURD = 2**62  # no file is this large


def usable_size(size: int) -> bool:
    """Whether set() keeps this size (a hostile manifest's must not reach st_size)."""
    return UNKNOWN < size < _ABSURD


class RemoteSizes:
    """task -> size in bytes, for tasks with a witness in S3 and none on this disk.

    Memory stays small at national scale (10M tasks): a dict while few tasks are remote-only
    (~100 bytes an entry), a dense `array('I')` over the whole task space (4 bytes a task,
    40 MB for 10M) once more than 1/32 of the space is, which is below the dict's cost at
    that point. A fresh node joining a finished fleet is the dense case; a busy node whose
    peers' results it mostly fetched is the sparse one. Sizes of 4 GiB and more go to a small
    side dict. Fetched tasks are dropped, and the dense array is freed when nothing is left.
    """

    def __init__(self, space_size: int) -> None:
        self.space_size = space_size
        self._sparse: dict[int, int] = {}
        self._dense: array[int] | None = None
        self._huge: dict[int, int] = {}  # sizes that do not fit the dense array's 32 bits
        self._count = 0  # known sizes in the dense array
        # While a copy is changed in a worker thread (record(), adopt()): the changes made
        # here meanwhile, (task, size) or (task, None) for a drop, to redo over the copy.
        self._changes: list[tuple[int, int | None]] | None = None

    def __len__(self) -> int:
        return len(self._sparse) + self._count + len(self._huge)

    def get(self, task: int) -> int | None:
        if task in self._huge:
            return self._huge[task]
        if self._dense is not None:
            size = self._dense[task]
            return None if size == UNKNOWN else size
        return self._sparse.get(task)

    def set(self, task: int, size: int) -> None:
        if self._changes is not None:
            self._changes.append((task, size))
        if size <= UNKNOWN or size >= _ABSURD:
            return  # a hostile manifest's size must not reach st_size (an overflow there kills)
        if size >= _MAX:
            self._forget_small(task)
            self._huge[task] = size
            return
        if self._huge:
            self._huge.pop(task, None)  # a small size now known for a huge one: the new wins
        if self._dense is None:
            self._sparse[task] = size
            if len(self._sparse) > max(1024, self.space_size // 32):
                self._densify()
            return
        if self._dense[task] == UNKNOWN:
            self._count += 1
        self._dense[task] = size

    def drop(self, task: int) -> None:
        """The witness is now local (or gone): its file tells the size from now on."""
        if self._changes is not None:
            self._changes.append((task, None))
        self._huge.pop(task, None)
        self._forget_small(task)
        if self._dense is not None and self._count == 0:
            self._dense = None  # every remote-only witness was fetched

    def _forget_small(self, task: int) -> None:
        if self._dense is None:
            self._sparse.pop(task, None)
        elif self._dense[task] != UNKNOWN:
            self._dense[task] = UNKNOWN
            self._count -= 1

    def _densify(self) -> None:
        dense = array("I", bytes(4 * self.space_size))
        for task, size in self._sparse.items():
            dense[task] = size
        self._count = len(self._sparse)
        self._dense = dense
        self._sparse = {}

    # -- persistence (index.py) ---------------------------------------------------------------
    def copy(self) -> RemoteSizes:
        """A copy to write from a worker thread while this one changes (a memcpy when dense)."""
        other = RemoteSizes(self.space_size)
        other._sparse = dict(self._sparse)
        other._dense = None if self._dense is None else array("I", self._dense)
        other._huge = dict(self._huge)
        other._count = self._count
        return other

    def record(self) -> RemoteSizes:
        """A copy to change in a worker thread (a checkpoint's millions of sizes merged into
        it), while this one records its own changes; `adopt(copy)` then takes the copy in
        O(1) and redoes them: the trio thread never does the per-size work."""
        self._changes = []
        return self.copy()

    def adopt(self, other: RemoteSizes) -> None:
        """Become `other` (made by record() and changed since), plus the changes made here
        since record(); `other` must not be used afterwards."""
        changes, self._changes = self._changes or [], None
        self._sparse, self._dense, self._huge = other._sparse, other._dense, other._huge
        self._count = other._count
        for task, size in changes:
            if size is None:
                self.drop(task)
            else:
                self.set(task, size)

    def forget_changes(self) -> None:
        """Stop recording (the copy given by record() will not be adopted)."""
        self._changes = None

    def gather(self, tasks: BitMap) -> tuple[array[int], dict[int, int]]:
        """The sizes of `tasks` in bitmap order (UNKNOWN where not known or 4 GiB and more),
        and the sizes of 4 GiB and more apart."""
        if self._dense is not None:  # numpy: a Python call per task took a second at 10M
            picked = np.frombuffer(self._dense, dtype=np.uint32)[_ids(tasks)]
            values = array("I", picked.tobytes())
        else:
            values = array("I", bytes(4 * len(tasks)))
            for task, size in self._sparse.items():
                if task in tasks:
                    values[tasks.rank(task) - 1] = size
        return values, {t: n for t, n in self._huge.items() if t in tasks}

    def merge(self, tasks: np.ndarray, values: np.ndarray) -> None:
        """Set the sizes of `tasks` (ascending, distinct) to `values` (each in 1..2^32 - 2),
        in bulk: a checkpoint's millions of sizes in one numpy assignment once dense, not a
        `set` call each (seconds at 10M: a checkpoint load must not hold the trio thread)."""
        if not len(tasks):
            return
        if self._dense is None and len(self) + len(tasks) <= max(1024, self.space_size // 32):
            self._drop_huge(tasks)
            self._sparse.update(zip(tasks.tolist(), values.tolist(), strict=True))
            return
        if self._dense is None:
            self._densify()
        assert self._dense is not None
        self._drop_huge(tasks)
        dense = np.frombuffer(self._dense, dtype=np.uint32)  # a view: writes go to the array
        self._count += int(np.count_nonzero(dense[tasks] == UNKNOWN))
        dense[tasks] = values

    def _drop_huge(self, tasks: np.ndarray) -> None:
        """A small size now known for a task that had a huge one: the new wins."""
        if self._huge:
            given = BitMap(array("I", tasks.astype(np.uint32).tobytes()))
            for task in [t for t in self._huge if t in given]:
                del self._huge[task]

    def set_many(self, tasks: np.ndarray, values: np.ndarray) -> None:
        """set() for many tasks (ascending, distinct; int64 sizes), in bulk: a segment's
        24,000 sizes are applied on the trio thread in about a millisecond, not a Python call
        each. Recorded like set() while a copy is changed elsewhere (record())."""
        changes, self._changes = self._changes, None  # what is done below is recorded here
        if changes is not None:
            changes.extend(zip(tasks.tolist(), values.tolist(), strict=True))
        try:
            usable = (values > UNKNOWN) & (values < _ABSURD)
            huge = usable & (values >= _MAX)
            for task, size in zip(tasks[huge].tolist(), values[huge].tolist(), strict=True):
                self.set(task, size)
            small = usable & ~huge
            self.merge(tasks[small], values[small].astype(np.uint32))
        finally:
            self._changes = changes

    def unknown(self, tasks: BitMap) -> BitMap:
        """Those of `tasks` whose size is not known (in bulk, as restore())."""
        if self._dense is None:
            return tasks - BitMap(self._sparse) - BitMap(self._huge)
        ids = tasks.to_array()
        missing = [v == UNKNOWN for v in map(self._dense.__getitem__, ids)]
        return BitMap(array("I", compress(ids, missing))) - BitMap(self._huge)

    def restore(self, tasks: array[int], values: array[int]) -> None:
        """Set the sizes of `tasks` (ascending) from the parallel `values` (UNKNOWN: skipped).
        In bulk: at 10M tasks a `set` call per task would take seconds, this about one."""
        selector = [v != UNKNOWN for v in values]
        tasks = array("I", compress(tasks, selector))
        values = array("I", compress(values, selector))
        if len(self) + len(tasks) <= max(1024, self.space_size // 32):
            for task, size in zip(tasks, values, strict=True):
                self.set(task, size)
            return
        if self._dense is None:
            self._densify()
        dense = self._dense
        assert dense is not None
        if self._huge:
            restored = BitMap(tasks)
            for task in [t for t in self._huge if t in restored]:
                del self._huge[task]
        for task, size in zip(tasks, values, strict=True):
            if dense[task] == UNKNOWN:
                self._count += 1
            dense[task] = size


def _ids(tasks: BitMap) -> np.ndarray:
    """A bitmap's task ids as a numpy column (no Python object per task)."""
    return np.frombuffer(tasks.to_array(), dtype=np.uint32)
