"""What makes a file acceptable as a witness: a well-formed CSV, checked before every commit."""

from __future__ import annotations

import csv
import io

MAX_CHECK_BYTES = 64 * 1024 * 1024


class InvalidWitness(ValueError):
    """The file is not a well-formed CSV; the message says why in a few words."""


def check_csv(data: bytes) -> int:
    """Validate a witness and return its number of data rows (header excluded).

    Well-formed means: not empty, UTF-8, a non-empty header line, every record with the header's
    number of fields, and the last line ending in a newline (so a truncated write is refused).
    """
    if not data:
        raise InvalidWitness("empty file (a witness needs at least a header line)")
    if not data.endswith(b"\n"):
        raise InvalidWitness("last line does not end in a newline (truncated write?)")
    if len(data) > MAX_CHECK_BYTES:
        return data.count(b"\n") - 1  # too big to parse cheaply: line-level checks only
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidWitness(f"not UTF-8 at byte {e.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        if not any(f.strip() for f in header):
            raise InvalidWitness("empty header line")
        rows = 0
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                raise InvalidWitness(
                    f"line {reader.line_num} has {len(record)} fields, header has {len(header)}"
                )
            rows += 1
    except csv.Error as e:
        raise InvalidWitness(f"malformed CSV at line {reader.line_num}: {e}") from None
    return rows
