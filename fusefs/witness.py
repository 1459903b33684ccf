"""What makes a file acceptable as a witness: a well-formed CSV, checked before every commit."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

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
    return _parse(csv.reader(io.StringIO(text, newline=""), strict=True))


def _parse(reader: Any) -> int:
    """Data rows of a csv.reader over a witness: a non-empty header, then records of the
    header's width (blank lines skipped)."""
    try:
        header = next(reader, None)
        if header is None or not any(f.strip() for f in header):
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


CHUNK = 1 << 20  # bytes read per step by check_stream


@dataclass(frozen=True)
class Checked:
    """What a streamed check learned: data rows, SHA-256 (hex) and size of the bytes read."""

    rows: int
    sha256: str
    size: int


class _Reader:
    """The bytes of a file, read CHUNK at a time: hashed, counted, and (while the file is still
    within MAX_CHECK_BYTES) decoded as UTF-8 and cut into lines exactly where
    `io.StringIO(text, newline="")` cuts them, so csv.reader sees what check_csv gives it.

    Memory is one chunk plus the longest line (a line is handed to csv.reader whole); lines are
    only collected below MAX_CHECK_BYTES, above which the rules are line-level only."""

    def __init__(self, f: BinaryIO, chunk_size: int, first: bytes = b"") -> None:
        self.f = f
        self.chunk_size = chunk_size
        self._first = first  # already read by the caller: handed out before reading more
        self.hash = hashlib.sha256()
        self.size = 0
        self.newlines = 0
        self.last = b""
        self.utf8_error: InvalidWitness | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._decoding = True  # False after a UTF-8 error or past MAX_CHECK_BYTES

    def _read(self) -> bytes:
        data, self._first = self._first or self.f.read(self.chunk_size), b""
        if data:
            self.hash.update(data)
            self.size += len(data)
            self.newlines += data.count(b"\n")
            self.last = data[-1:]
        return data

    def _decode(self, data: bytes) -> str | None:
        """Text of `data` (None once decoding stopped); records the first UTF-8 error with
        its offset in the whole file, as check_csv's single decode reports it."""
        if not self._decoding:
            return None
        if self.size > MAX_CHECK_BYTES:
            self._decoding = False
            return None
        pending = len(self._decoder.getstate()[0])
        try:
            return self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            at = self.size - len(data) - pending + e.start
            self.utf8_error = InvalidWitness(f"not UTF-8 at byte {at}")
            self._decoding = False
            return None

    def lines(self) -> Iterator[str]:
        """Lines with their terminators; stops early (without error) past MAX_CHECK_BYTES and
        raises the recorded InvalidWitness at the first undecodable byte."""
        carry: list[str] = []  # the start of a line not yet ended (or ended by a lone "\r")
        while True:
            data = self._read()
            text = self._decode(data)
            if text is None:
                if self.utf8_error is not None:
                    raise self.utf8_error
                return  # too big to parse: the caller applies the line-level rules
            if not data:
                if carry:
                    yield "".join(carry)
                return
            if "\n" not in text and "\r" not in text:
                carry.append(text)  # a long line: no quadratic re-joining
                continue
            carry.append(text)
            parts = io.StringIO("".join(carry), newline="").readlines()
            last = parts.pop()
            carry = [last]
            if last.endswith("\n"):  # complete, and no "\r\n" can be split after it
                parts.append(last)
                carry = []
            yield from parts

    def drain(self) -> None:
        """Read the rest (hash, size, last byte), still looking for a UTF-8 error: check_csv
        decodes the whole file before it parses, so that error wins over a CSV error."""
        while True:
            data = self._read()
            self._decode(data)
            if not data:
                return


def check_stream(f: BinaryIO, chunk_size: int = CHUNK) -> Checked:
    """check_csv's rules and messages on a file read in chunks, with its SHA-256 and size.

    Constant memory whatever the file's size (see _Reader), so a commit of a 1 GiB witness
    costs a chunk, not a gigabyte. Acceptance, row count and error message are the same as
    check_csv(f.read()) (tests/test_witness_stream.py checks this with Hypothesis)."""
    first = f.read(chunk_size)
    if len(first) < chunk_size and not f.read(1):
        # The usual witness: one chunk holds it all, and check_csv is faster on it.
        return Checked(check_csv(first), hashlib.sha256(first).hexdigest(), len(first))
    r = _Reader(f, chunk_size, first)
    rows, error = 0, None
    try:
        rows = _parse(csv.reader(r.lines(), strict=True))
    except InvalidWitness as e:
        error = e
    r.drain()
    if r.size == 0:
        raise InvalidWitness("empty file (a witness needs at least a header line)")
    if r.last != b"\n":
        raise InvalidWitness("last line does not end in a newline (truncated write?)")
    if r.size > MAX_CHECK_BYTES:
        rows = r.newlines - 1  # too big to parse cheaply: line-level checks only
    elif r.utf8_error is not None:
        raise r.utf8_error
    elif error is not None:
        raise error
    return Checked(rows, r.hash.hexdigest(), r.size)
