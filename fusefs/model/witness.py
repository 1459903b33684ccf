"""What makes a file acceptable as a witness: a well-formed CSV, checked before every commit."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
from collections.abc import Generator, Iterator
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
    plain = '"' not in text and "\r" not in text and "\x00" not in text
    if plain and len(text) <= csv.field_size_limit():  # no field can pass csv's limit then
        return _plain_rows(text)
    return _parse(csv.reader(io.StringIO(text, newline=""), strict=True))


def _plain_rows(text: str) -> int:
    """_parse's answer for a CSV without quotes, carriage returns or NULs (the usual witness),
    without the csv module: each line is one record, its fields split at every comma.
    tests/unit/test_witness_plain.py checks it against csv.reader."""
    lines = text.split("\n")
    lines.pop()  # after the last newline
    header = lines[0].split(",") if lines[0] else []
    if not any(f.strip() for f in header):
        raise InvalidWitness("empty header line")
    width, rows = len(header), 0
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue  # a blank line
        n = line.count(",") + 1
        if n != width:
            raise InvalidWitness(f"line {number} has {n} fields, header has {width}")
        rows += 1
    return rows


def _parse(reader: Any, source: _Reader | None = None) -> int:
    """Data rows of a csv.reader over a witness: a non-empty header, then records of the
    header's width (blank lines skipped). With a streamed `source`, a record may come in
    parts (a long line cut after commas, see _Reader.lines): they are added up."""

    def line() -> int:
        """The line csv.reader is in, counted as check_csv counts it (a part of a line that
        is not its last does not count; the line it starts does)."""
        if source is None:
            return int(reader.line_num)
        return int(reader.line_num) - source.cuts + source.partial

    def records() -> Iterator[tuple[int, bool]]:
        """(fields, any non-blank field) of each record (0 fields: a blank line)."""
        fields, filled = 0, False
        for part in reader:
            # A cut ends a part outside quotes with one extra, empty field.
            if source is not None and source.last_was_cut:
                fields += len(part) - 1
                filled = filled or any(f.strip() for f in part)
                continue
            yield fields + len(part), filled or any(f.strip() for f in part)
            fields, filled = 0, False

    try:
        it = records()
        width, filled = next(it, (0, False))
        if not filled:
            raise InvalidWitness("empty header line")
        rows = 0
        for n, _ in it:
            if n == 0:
                continue
            if n != width:
                raise InvalidWitness(f"line {line()} has {n} fields, header has {width}")
            rows += 1
    except csv.Error as e:
        raise InvalidWitness(f"malformed CSV at line {line()}: {e}") from None
    return rows


CHUNK = 1 << 20  # bytes read per step by check_stream
CUT_AT = 1 << 16  # characters: a line longer than this is handed to csv.reader in parts


@dataclass(frozen=True)
class Checked:
    """What a streamed check learned: data rows, SHA-256 (hex) and size of the bytes read."""

    rows: int
    sha256: str
    size: int
    body: bytes | None = None  # the bytes checked, when they were read whole (check_small)


class _Reader:
    """The bytes of a file, read CHUNK at a time: hashed, counted, and (while the file is still
    within MAX_CHECK_BYTES) decoded as UTF-8 and cut into lines exactly where
    `io.StringIO(text, newline="")` cuts them, so csv.reader sees what check_csv gives it.

    Memory is a chunk plus about CUT_AT characters: a longer line is handed out in parts, cut
    right after a comma that is followed by more of the line. csv.reader ends a record at the
    end of each part unless inside quotes, where it goes on; cut outside quotes, the part
    ends with an empty field that is not in the line, which _parse takes off. The characters
    csv.reader sees, and so its verdict, are the same. A long stretch with no comma to cut
    at is a single field longer than csv's field limit (131,072): refused either way, so it
    is handed out whole. Lines are only collected below MAX_CHECK_BYTES, above which the
    rules are line-level only."""

    def __init__(self, f: BinaryIO, chunk_size: int, first: bytes = b"") -> None:
        self.f = f
        self.chunk_size = chunk_size
        self._first = first  # already read by the caller: handed out before reading more
        self.hash = hashlib.sha256()
        self.size = 0
        self.newlines = 0
        self.last = b""
        self.utf8_error: InvalidWitness | None = None
        self.cuts = 0  # parts of long lines handed out (not lines: see _parse's line numbers)
        self.partial = False  # the last part handed out is not the end of its line
        self.last_was_cut = False  # ... and was cut after a comma
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
                    self.last_was_cut = self.partial = False
                    yield "".join(carry)
                return
            if not text:
                continue  # a chunk ending inside a character: wait for the rest
            if "\n" not in text and "\r" not in text:
                if carry and carry[-1].endswith("\r"):  # no "\n" follows: that line is over
                    self.last_was_cut = self.partial = False
                    yield "".join(carry)
                    carry = []
                carry.append(text)  # a long line: no quadratic re-joining
                if sum(map(len, carry)) > CUT_AT:
                    carry = [(yield from self._cut("".join(carry)))]
                continue
            carry.append(text)
            parts = io.StringIO("".join(carry), newline="").readlines()
            last = parts.pop()
            carry = [last]
            if last.endswith("\n"):  # complete, and no "\r\n" can be split after it
                parts.append(last)
                carry = []
            for part in parts:
                self.last_was_cut = self.partial = False
                yield part

    def _cut(self, line: str) -> Generator[str, None, str]:
        """Hand out an unfinished long line in parts of about CUT_AT characters, each ending
        with a comma that has more of the line after it; returns the rest to keep."""
        start, end = 0, len(line) - 1  # the last character is never the end of a part
        while end - start > CUT_AT:
            at = line.rfind(",", start, start + CUT_AT) + 1 or line.find(",", start, end) + 1
            if at == 0 and end - start <= 4 * csv.field_size_limit():
                break  # no comma yet: wait for one (or for the field limit to be passed)
            stop = at or len(line)  # no comma at all: one field over csv's limit, refused
            self.cuts += 1
            self.partial = True
            self.last_was_cut = at > 0
            yield line[start:stop]
            start = stop
        return line[start:]

    def drain(self) -> None:
        """Read the rest (hash, size, last byte), still looking for a UTF-8 error: check_csv
        decodes the whole file before it parses, so that error wins over a CSV error."""
        while True:
            data = self._read()
            self._decode(data)
            if not data:
                return


def read_small(fd: int, size: int, limit: int) -> bytes | None:
    """The bytes of the open file `fd` of `size` bytes (its fstat) in one pread, or None when
    it holds more than `limit` bytes (or grew since the fstat). One allocation of the file's
    size: a read of CHUNK bytes would allocate a megabyte for a 100-byte witness."""
    if size > limit:
        return None
    data = os.pread(fd, size + 1, 0)
    return data if len(data) <= size else None


def check_small(fd: int, size: int, limit: int) -> Checked | None:
    """check_csv of the open file `fd` read whole (read_small), with its SHA-256 and size;
    None when it is larger than `limit`: check_stream then."""
    data = read_small(fd, size, limit)
    if data is None:
        return None
    return Checked(check_csv(data), hashlib.sha256(data).hexdigest(), len(data), data)


def check_stream(f: BinaryIO, chunk_size: int = CHUNK) -> Checked:
    """check_csv's rules and messages on a file read in chunks, with its SHA-256 and size.

    Constant memory whatever the file's size (see _Reader), so a commit of a 1 GiB witness
    costs a chunk, not a gigabyte. Acceptance, row count and error message are the same as
    check_csv(f.read()) (tests/unit/test_witness_stream.py checks this with Hypothesis)."""
    first = f.read(chunk_size)
    if len(first) < chunk_size and not f.read(1):
        # The usual witness: one chunk holds it all, and check_csv is faster on it.
        return Checked(check_csv(first), hashlib.sha256(first).hexdigest(), len(first))
    r = _Reader(f, chunk_size, first)
    rows, error = 0, None
    try:
        rows = _parse(csv.reader(r.lines(), strict=True), r)
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
