"""Streaming CSV reader: bytes in, orders and line-numbered rejects out.

Memory does not grow with the size of the file: the object is read in chunks, a
physical line is handed to the csv module in pieces of bounded length, and rows are
yielded one at a time. Only duplicate detection grows with the number of valid rows
(12 bytes per order id, see ``_SeenIds``). A file that cannot be read as CSV at all
raises ``UnreadableFileError`` before the first row is yielded, so nothing of it is
published; a bad row becomes a ``Reject`` and the others go on.
"""

from __future__ import annotations

import csv
import difflib
import io
import itertools
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, BinaryIO

from courierflow.config import ReaderLimits
from courierflow.csvtext import (
    SNIFF_BYTES,
    UNDECODABLE,
    BoundedLines,
    PrefixedStream,
    refuse,
    sniff_encoding,
)
from courierflow.orders import KNOWN_COLUMNS, Order, Reject

#: longest order id accepted
MAX_ORDER_ID = 128
#: the delimiters a header may use (European spreadsheet exports use ';')
DELIMITERS = (",", ";", "\t")


def check_object_size(size: int | None, source: str, limits: ReaderLimits) -> None:
    """Refuse an object larger than ``max_object_bytes`` before reading it.

    Raises:
        UnreadableFileError: when ``size`` (the object's ContentLength) is over the limit.
    """
    if size is not None and size > limits.max_object_bytes:
        raise refuse(
            source,
            f"the file is {size} bytes, over the limit of {limits.max_object_bytes} "
            "(COURIERFLOW_MAX_OBJECT_BYTES): split it into smaller files or raise the limit",
        )


def read_orders(
    stream: BinaryIO, source: str, limits: ReaderLimits | None = None
) -> Iterator[Order | Reject]:
    """Orders and rejects of a CSV byte stream, in file order.

    Parameters:
        stream: anything with ``.read(n)`` returning bytes (a StreamingBody, an open file).
        source: names the file in messages and in ``Order.source`` (``s3://bucket/key``).
        limits: see ``ReaderLimits``; the defaults when omitted.

    Raises:
        UnreadableFileError: at the call, before the first item, when the stream is not
            CSV text or its header is unusable.
    """
    limits = limits or ReaderLimits()
    head = stream.read(SNIFF_BYTES)
    encoding = sniff_encoding(head, source)
    raw = io.BufferedReader(PrefixedStream(head, stream), buffer_size=SNIFF_BYTES)
    text = io.TextIOWrapper(raw, encoding=encoding, errors=UNDECODABLE, newline="")
    lines = BoundedLines(text, limits.line_chars)
    header_line = next(lines, "")
    if not header_line.strip():
        raise refuse(source, "the first line is empty: the header row must come first")
    if lines.overlong:
        raise refuse(
            source,
            f"the first line is longer than {limits.line_chars} characters: "
            "the header row must come first",
        )
    delimiter = _delimiter(header_line)
    # process-wide setting of the csv module; a Lambda reads one file at a time
    csv.field_size_limit(limits.max_field_bytes)
    # strict: a quote left open to the end of the file is an error, not one huge field
    reader = csv.reader(itertools.chain([header_line], lines), delimiter=delimiter, strict=True)
    names = next(reader)
    schema = _Schema(names, _header(names, source, limits))
    text_name = "UTF-16" if encoding == "utf-16" else "UTF-8"
    return _rows(reader, lines, delimiter, text_name, schema, source, limits)


# --- is it CSV text at all -------------------------------------------------------------


# --- the header ----------------------------------------------------------------------


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _normalise(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower().replace(" ", "_").replace("-", "_")


def _header(names: list[str], source: str, limits: ReaderLimits) -> list[str]:
    """The normalised column names, or UnreadableFileError saying what to fix."""
    if len(names) > limits.max_columns:
        raise refuse(
            source,
            f"the header has {len(names)} columns, over the limit of {limits.max_columns} "
            "(COURIERFLOW_MAX_COLUMNS): is the first line really the header?",
        )
    normal = [_normalise(n) for n in names]
    if "order_id" not in normal:
        close = difflib.get_close_matches("order_id", normal, n=1, cutoff=0.6)
        if close:  # name the column as the file spells it
            hint = f"found {names[normal.index(close[0])].strip()!r}: rename it to order_id"
        else:
            hint = "add an order_id column"
        raise refuse(source, f"the header has no order_id column ({hint})")
    for name in KNOWN_COLUMNS:
        if normal.count(name) > 1:
            raise refuse(
                source,
                f"the header names the {name} column {normal.count(name)} times: "
                "keep one, so it is clear which value to use",
            )
    return normal


class _Schema:
    """Where each known column sits in a row, worked out once per file.

    A known column the header lacks reads index ``width``: the row is padded with one
    empty field there.
    """

    def __init__(self, names: list[str], columns: list[str]) -> None:
        self.names = names
        self.width = len(columns)

        def at(name: str) -> int:
            return columns.index(name) if name in columns else self.width

        self.order_id = at("order_id")
        self.id_title = names[self.order_id].strip().lstrip("\ufeff").strip()
        self.customer = at("customer")
        self.address = at("address")
        self.items = at("items")
        self.quantity = at("quantity")
        self.priority = at("priority")
        self.notes = at("notes")
        #: unknown columns by the header's own spelling; unnamed columns are dropped
        self.extra = [
            (names[i].strip(), i)
            for i, name in enumerate(columns)
            if name not in KNOWN_COLUMNS and name
        ]


# --- the rows ------------------------------------------------------------------------


class _SeenIds:
    """The order ids of this file so far, with the line each was first seen on.

    An id is kept as its 64-bit ``hash()`` (SipHash, keyed per process) in one of
    ``BUCKETS`` sorted arrays chosen by the hash's low bits, next to its line: 12 bytes
    per valid row, 60 MB at the default limit of 5,000,000 rows, plus 0.5 MB of empty
    arrays. Two different ids share a hash with probability about n²/2⁶⁵ (under one
    in a million at 5,000,000 rows); the later one would be rejected as a duplicate.
    """

    BUCKETS = 1 << 12

    def __init__(self) -> None:
        self._keys = [array("q") for _ in range(self.BUCKETS)]
        self._lines = [array("I") for _ in range(self.BUCKETS)]

    def first_line(self, order_id: str, line: int) -> int:
        """The line ``order_id`` was first seen on; if new, records it and returns 0."""
        key = hash(order_id)
        bucket = key & (self.BUCKETS - 1)
        keys = self._keys[bucket]
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return self._lines[bucket][i]
        keys.insert(i, key)
        self._lines[bucket].insert(i, line)
        return 0


def _rows(
    reader: Any,
    lines: BoundedLines,
    delimiter: str,
    text_name: str,
    schema: _Schema,
    source: str,
    limits: ReaderLimits,
) -> Iterator[Order | Reject]:
    """Each row as an Order or a Reject; blank lines give nothing.

    One loop with the checks inline: this is the hot path (a function call per row
    costs about 5% of the reader's speed).
    """
    seen = _SeenIds()
    rows = 0
    max_rows = limits.max_rows
    width = schema.width
    i_id, i_quantity, title = schema.order_id, schema.quantity, schema.id_title
    i_customer, i_address, i_items = schema.customer, schema.address, schema.items
    i_priority, i_notes, extra_columns = schema.priority, schema.notes, schema.extra
    next_row = reader.__next__
    while True:
        start = lines.number + 1 if lines.at_line_start else lines.number
        continued = not lines.at_line_start  # a piece of an over-long line
        pieces = lines.pieces
        try:
            row: list[str] = next_row()
        except StopIteration:
            return
        except csv.Error as exc:
            reason = _recover(exc, lines, pieces, delimiter, start, limits.max_field_bytes)
            if not continued:  # else a piece of an over-long line, rejected already
                yield Reject(start, reason, [])
            continue
        if lines.overlong >= start:
            if not continued or lines.number > start:
                yield Reject(
                    start,
                    f"line {lines.overlong} is longer than {lines.limit} characters "
                    "(twice COURIERFLOW_MAX_FIELD_BYTES)",
                    _printable(row[:8]),
                )
            continue
        if not row:
            continue  # a blank line
        joined = "\x1f".join(row)
        if not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                yield Reject(
                    start,
                    f"holds bytes that are not {text_name} text",
                    _printable(row),
                )
                continue
        if "\x00" in joined:
            yield Reject(start, "holds a NUL byte", _printable(row))
            continue
        n = len(row)
        if n != width:
            if n > width and any(f.strip() for f in row[width:]):
                yield Reject(start, f"{n} fields but the header has {width}", row)
                continue
            row = row[:width] if n > width else row + [""] * (width - n)
        row.append("")  # what a known column missing from the header reads
        order_id = row[i_id].strip()
        if not order_id:
            if joined.strip(" \t\x1f"):
                yield Reject(start, "empty order_id", row[:width])
            continue  # else only spaces and delimiters: a blank line
        rows += 1
        if rows > max_rows:
            yield Reject(
                start, f"over the limit of {max_rows} rows (COURIERFLOW_MAX_ROWS)", row[:width]
            )
            continue
        if order_id == title:
            yield Reject(start, "repeated header row", row[:width])
            continue
        if len(order_id) > MAX_ORDER_ID:
            yield Reject(
                start, f"order_id is {len(order_id)} characters, over {MAX_ORDER_ID}", row[:width]
            )
            continue
        if not order_id.isprintable():
            yield Reject(start, "order_id holds a control or invisible character", row[:width])
            continue
        quantity_text = row[i_quantity].strip()
        if not quantity_text:
            quantity = 1
        elif quantity_text.isdigit() and quantity_text.isascii() and int(quantity_text) > 0:
            quantity = int(quantity_text)
        else:
            yield Reject(
                start, f"quantity {quantity_text!r} is not a positive whole number", row[:width]
            )
            continue
        first = seen.first_line(order_id, start)
        if first:
            yield Reject(
                start, f"duplicate order_id {order_id!r} (first on line {first})", row[:width]
            )
            continue
        # positional, in Order's field order (a test pins it): faster than keywords
        yield Order(
            order_id,
            row[i_customer].strip(),
            row[i_address].strip(),
            row[i_items].strip(),
            quantity,
            row[i_priority].strip(),
            row[i_notes].strip(),
            {name: row[i] for name, i in extra_columns} if extra_columns else {},
            source,
            start,
        )


def _recover(
    exc: csv.Error, lines: BoundedLines, pieces: int, delimiter: str, start: int, max_field: int
) -> str:
    """The reason a row is not valid CSV; skips the rest of a quoted field first.

    The csv module goes on at the next line after an error. When the field that grew
    past the limit is quoted and goes on over later lines, those lines are skipped up
    to the closing quote, so they are not read as rows of their own.
    """
    message = str(exc)
    if "field limit" in message:
        # the row began on this piece (so at a record start) or on an earlier one (so the
        # piece begins inside a quoted field: only quotes make a row span lines)
        open_quote = _quote_open_at_end(lines.last, delimiter, lines.pieces > pieces + 1)
        while open_quote:
            piece = next(lines, "")
            if not piece:
                return _never_closed(start, lines.number)
            open_quote = _quote_open_at_end(piece, delimiter, True)
        span = f"line {start}" if lines.number == start else f"lines {start}-{lines.number}"
        return (
            f"a field is longer than {max_field} characters, on {span} "
            "(COURIERFLOW_MAX_FIELD_BYTES; or a quote that is never closed?)"
        )
    if "end of data" in message:
        return _never_closed(start, lines.number)
    return f"not valid CSV on line {lines.number}: {message} (an unbalanced or stray quote?)"


def _never_closed(start: int, end: int) -> str:
    return (
        f"a quoted field on line {start} is never closed (an unbalanced quote): lines "
        f"{start}-{end}, the rest of the file, were read as that field and not published"
    )


def _quote_open_at_end(piece: str, delimiter: str, in_quotes: bool) -> bool:
    """Whether a quoted field is still open at the end of ``piece`` (strict CSV rules)."""
    pos = 0
    while True:
        if in_quotes:
            while True:
                i = piece.find('"', pos)
                if i < 0:
                    return True
                if piece.startswith('"', i + 1):  # an escaped quote
                    pos = i + 2
                    continue
                pos = i + 1
                in_quotes = False
                break
        elif piece.startswith('"', pos):
            in_quotes = True
            pos += 1
            continue
        i = piece.find(delimiter, pos)
        if i < 0:
            return False
        pos = i + 1


def _printable(row: list[str]) -> list[str]:
    """The row with undecodable bytes as ``?`` and NULs as ``\\0``, for the report."""
    return [f.encode("utf-8", "replace").decode().replace("\x00", "\\0") for f in row]
