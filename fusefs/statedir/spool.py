"""Lines waiting to be published, kept on disk as they are made: a `kill -9` loses none.

The sync engine owes the fleet a node manifest line (`rel<TAB>sha256<TAB>size`) for every
witness it uploaded; the fact log publishes them once per window and records what it still owes
in `fact-log.json` when it saves. A daemon killed between an upload and that save used to lose
the line: the witness was in the bucket but no other node learned it until a verification
listing (an hour) — duplicate work meanwhile. So each line is also appended here at once (a
write and a flush, no fsync: a killed process's writes survive in the page cache, like the
indexes' logs); a save starts a new generation and deletes the older ones once `fact-log.json`
holds their lines. At start every generation left is read back; a line published twice is
harmless (segments merge by rel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TextIO

from fusefs.statedir.layout import StateLayout


class Spool:
    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        found = layout.spool_generations()
        self.generation = (max(found) + 1) if found else 0
        self._file: TextIO | None = None

    def read(self) -> list[str]:
        """Every line of every generation on disk (blocking; at start)."""
        lines: list[str] = []
        for gen in sorted(self.layout.spool_generations()):
            with contextlib.suppress(OSError):
                text = self.layout.spool(gen).read_text("utf-8", "surrogateescape")
                lines += [line for line in text.split("\n") if line]
        return lines

    def append(self, lines: Iterable[str]) -> None:
        if self._file is None:
            self._file = open(  # noqa: SIM115 - kept open across appends
                self.layout.spool(self.generation), "a", encoding="utf-8", errors="surrogateescape"
            )
        for line in lines:
            self._file.write(line + "\n")
        self._file.flush()

    def rotate(self) -> int:
        """Start a new generation (on the caller's thread, atomic with the snapshot of what
        is owed); returns it: every older one may go once that snapshot is durable."""
        self.close()
        self.generation += 1
        return self.generation

    def drop_before(self, generation: int) -> None:
        """Delete the generations older than `generation` (blocking)."""
        for gen in self.layout.spool_generations():
            if gen < generation:
                with contextlib.suppress(OSError):
                    self.layout.spool(gen).unlink()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
