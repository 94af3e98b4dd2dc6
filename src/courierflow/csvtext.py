"""Bytes to bounded text lines: whether an object is CSV text at all and in which
encoding (from its first bytes), and its physical lines handed on in pieces of bounded
length, so one enormous line cannot fill memory."""

from __future__ import annotations

import codecs
import io
from typing import BinaryIO

from courierflow.errors import UnreadableFileError

#: bytes looked at to decide whether the object is CSV text, and in which encoding
SNIFF_BYTES = 64 * 1024
#: error handler: undecodable bytes after the sniffed start become lone surrogates,
#: which mark their row as "not valid text" (surrogateescape cannot do UTF-16)
UNDECODABLE = "courierflow.undecodable"
codecs.register_error(UNDECODABLE, lambda exc: ("\udcff" * (exc.end - exc.start), exc.end))  # type: ignore[attr-defined]


def refuse(source: str, reason: str) -> UnreadableFileError:
    return UnreadableFileError(f"{source}: {reason}; nothing was published")


def sniff_encoding(head: bytes, source: str) -> str:
    """The encoding of a CSV object, or UnreadableFileError saying why it is not one."""
    if head.startswith(b"\x1f\x8b"):
        raise refuse(source, "the file is gzip-compressed, not CSV text: upload the .csv itself")
    if head.startswith(b"PK\x03\x04"):
        raise refuse(source, "the file is a ZIP archive (an .xlsx?): export it as CSV")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
        if b"\x00" in head:
            raise refuse(source, _nul_reason(head))
    try:
        start = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError as exc:
        hint = "save the file as UTF-8 CSV"
        if encoding == "utf-8-sig":
            hint = f"a Latin-1 or Windows-1252 export? {hint}"
        raise refuse(
            source, f"byte {exc.start} is not {exc.encoding.upper()} text ({hint})"
        ) from None
    if not start.strip():
        raise refuse(source, "the file is empty: upload a CSV with a header row and orders")
    if start.lstrip()[:1] in ("{", "["):
        raise refuse(source, "the file holds JSON, not CSV: upload orders as CSV")
    if "\x00" in start:
        raise refuse(source, _nul_reason(head))
    return encoding


def _nul_reason(head: bytes) -> str:
    sample = head[:1024]
    if len(sample) >= 4 and (sample[1::2].count(0) * 2 >= len(sample) // 2):
        return (
            "the file holds NUL bytes: it looks like UTF-16 without a byte-order mark, "
            "not CSV text; save it as UTF-8 CSV"
        )
    return "the file holds NUL bytes: it is binary, not CSV text; upload a CSV file"


class PrefixedStream(io.RawIOBase):
    """A readable stream: the sniffed bytes first, then the rest of the source."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


class BoundedLines:
    """The text's physical lines, counted, in pieces of at most ``limit`` characters.

    A line longer than ``limit`` reaches the csv module as several pieces, so memory
    stays bounded; ``overlong`` is then the number of the latest such line, and the
    rows touching it are rejected. ``number`` is the line of the latest piece.
    """

    __slots__ = ("_readline", "at_line_start", "last", "limit", "number", "overlong", "pieces")

    def __init__(self, text: io.TextIOWrapper, limit: int) -> None:
        self._readline = text.readline
        self.limit = limit
        self.number = 0
        self.at_line_start = True
        self.overlong = 0
        self.pieces = 0
        self.last = ""

    def __iter__(self) -> BoundedLines:
        return self

    def __next__(self) -> str:
        piece = self._readline(self.limit)
        if not piece:
            raise StopIteration
        if self.at_line_start:
            self.number += 1
        end = piece[-1]
        self.at_line_start = end == "\n" or end == "\r"
        if not self.at_line_start and len(piece) >= self.limit:
            self.overlong = self.number
        self.pieces += 1
        self.last = piece
        return piece
