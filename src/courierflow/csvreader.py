"""Streaming CSV reader: bytes in, orders and line-numbered rejects out.

Memory does not grow with the file: the object is read in chunks, rows are yielded one
at a time, and duplicate detection keeps 8 bytes per order id. A file that cannot be
read as CSV at all raises ``UnreadableFileError`` before the first row is yielded, so
nothing of it is published; a bad row becomes a ``Reject`` and the others go on.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import itertools
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from courierflow.errors import UnreadableFileError
from courierflow.orders import KNOWN_COLUMNS, Order, Reject

#: bytes looked at to decide whether the object is CSV text, and in which encoding
SNIFF_BYTES = 64 * 1024
#: longest order id accepted
MAX_ORDER_ID = 128
#: the delimiters a header may use (European spreadsheet exports use ';')
DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class ReaderLimits:
    """Safe defaults; each can be raised by an environment variable."""

    #: larger objects are refused before reading (COURIERFLOW_MAX_OBJECT_BYTES)
    max_object_bytes: int = 2 * 1024**3
    #: a longer field rejects its row (COURIERFLOW_MAX_FIELD_BYTES)
    max_field_bytes: int = 1024**2
    #: rows beyond this are rejected, one reject each (COURIERFLOW_MAX_ROWS)
    max_rows: int = 5_000_000
    #: a wider header refuses the file (COURIERFLOW_MAX_COLUMNS)
    max_columns: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReaderLimits:
        env = os.environ if env is None else env
        names = {
            "max_object_bytes": "COURIERFLOW_MAX_OBJECT_BYTES",
            "max_field_bytes": "COURIERFLOW_MAX_FIELD_BYTES",
            "max_rows": "COURIERFLOW_MAX_ROWS",
            "max_columns": "COURIERFLOW_MAX_COLUMNS",
        }
        values = {field: int(env[var]) for field, var in names.items() if env.get(var)}
        return cls(**values)


class _Prefixed(io.RawIOBase):
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


class _SeenIds:
    """Order ids seen so far, as 8-byte digests: a small set merged into sorted arrays."""

    MERGE_AT = 1 << 16

    def __init__(self) -> None:
        self._recent: set[int] = set()
        self._sorted = array("Q")

    def add(self, order_id: str) -> bool:
        """Add; False if it was already there."""
        key = int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=8).digest(), "big")
        if key in self._recent:
            return False
        i = bisect_left(self._sorted, key)
        if i < len(self._sorted) and self._sorted[i] == key:
            return False
        self._recent.add(key)
        if len(self._recent) >= self.MERGE_AT:
            self._sorted = array("Q", sorted(itertools.chain(self._sorted, self._recent)))
            self._recent = set()
        return True


def _refuse(source: str, reason: str) -> UnreadableFileError:
    return UnreadableFileError(f"{source}: {reason}; nothing was published")


def _sniff(head: bytes, source: str) -> str:
    """The encoding of a CSV object, or UnreadableFileError saying why it is not one."""
    if not head.strip():
        raise _refuse(source, "the file is empty: upload a CSV with a header row and orders")
    if head.startswith(b"\x1f\x8b"):
        raise _refuse(source, "the file is gzip-compressed, not CSV text: upload the .csv itself")
    if head.startswith(b"PK\x03\x04"):
        raise _refuse(source, "the file is a ZIP archive (an .xlsx?): export it as CSV")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    text_start = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if text_start[:1] in (b"{", b"["):
        raise _refuse(source, "the file holds JSON, not CSV: upload orders as CSV")
    if b"\x00" in head:
        raise _refuse(source, "the file holds NUL bytes: it is binary, not CSV text")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise _refuse(
            source,
            f"byte {exc.start} is not UTF-8 (a Latin-1 or Windows-1252 export?): "
            "save the file as UTF-8 CSV",
        ) from None
    return "utf-8-sig"


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _normalise(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower().replace(" ", "_").replace("-", "_")


def _header(names: list[str], source: str, limits: ReaderLimits) -> list[str]:
    if len(names) > limits.max_columns:
        raise _refuse(
            source,
            f"the header has {len(names)} columns, over the limit of {limits.max_columns} "
            "(COURIERFLOW_MAX_COLUMNS)",
        )
    normal = [_normalise(n) for n in names]
    if "order_id" not in normal:
        close = difflib.get_close_matches("order_id", normal, n=1, cutoff=0.6)
        if close:  # name the column as the file spells it
            hint = f"found {names[normal.index(close[0])].strip()!r}: rename it to order_id"
        else:
            hint = "add an order_id column"
        raise _refuse(source, f"the header has no order_id column ({hint})")
    return normal


def read_orders(
    stream: BinaryIO, source: str, limits: ReaderLimits | None = None
) -> Iterator[Order | Reject]:
    """Orders and rejects of a CSV byte stream, in file order.

    Raises:
        UnreadableFileError: before the first item, when the stream is not CSV text.
    """
    limits = limits or ReaderLimits()
    head = stream.read(SNIFF_BYTES)
    encoding = _sniff(head, source)
    raw = io.BufferedReader(_Prefixed(head, stream), buffer_size=SNIFF_BYTES)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
    header_line = text.readline()
    if not header_line.strip():
        raise _refuse(source, "the first line is empty: the header row must come first")
    delimiter = _delimiter(header_line)
    csv.field_size_limit(limits.max_field_bytes)
    # strict: a quote left open to the end of the file is an error, not one huge field
    reader = csv.reader(itertools.chain([header_line], text), delimiter=delimiter, strict=True)
    names = next(reader)
    columns = _header(names, source, limits)
    return _rows(reader, names, columns, source, limits)


class _Schema:
    """Where each known column sits in a row, worked out once per file."""

    def __init__(self, names: list[str], columns: list[str]) -> None:
        self.names = names
        self.width = len(columns)
        self.order_id = columns.index("order_id")
        self.quantity = columns.index("quantity") if "quantity" in columns else None
        self.known = [
            (name, columns.index(name))
            for name in KNOWN_COLUMNS
            if name not in ("order_id", "quantity") and name in columns
        ]
        self.extra = [
            (names[i].strip(), i)
            for i, name in enumerate(columns)
            if name not in KNOWN_COLUMNS and name
        ]


def _rows(
    reader: Any,
    names: list[str],
    columns: list[str],
    source: str,
    limits: ReaderLimits,
) -> Iterator[Order | Reject]:
    seen = _SeenIds()
    schema = _Schema(names, columns)
    line_num = 1  # the header ends here
    rows = 0
    while True:
        start = line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_num = reader.line_num
            yield Reject(start, _csv_error_reason(exc), [])
            continue
        line_num = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank lines are not orders
        rows += 1
        if rows > limits.max_rows:
            yield Reject(
                start,
                f"over the limit of {limits.max_rows} rows (COURIERFLOW_MAX_ROWS)",
                _printable(row),
            )
            continue
        yield _validate(row, start, schema, source, seen)


def _csv_error_reason(exc: csv.Error) -> str:
    message = str(exc)
    if "field limit" in message:
        return (
            f"not valid CSV: {message} (COURIERFLOW_MAX_FIELD_BYTES; "
            "or a quote that is never closed?)"
        )
    if "end of data" in message:
        return (
            "not valid CSV: a quoted field is never closed (an unbalanced quote); "
            "the rest of the file was read as that field"
        )
    return f"not valid CSV: {message} (an unbalanced or stray quote?)"


def _validate(
    row: list[str],
    line: int,
    schema: _Schema,
    source: str,
    seen: _SeenIds,
) -> Order | Reject:
    joined = "\x1f".join(row)
    if "\x00" in joined:
        return Reject(line, "holds a NUL byte", _printable(row))
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return Reject(line, "holds bytes that are not UTF-8", _printable(row))
    if row == schema.names:
        return Reject(line, "repeated header row", row)
    width = schema.width
    if len(row) > width and any(f.strip() for f in row[width:]):
        return Reject(line, f"{len(row)} fields but the header has {width}", row)
    if len(row) < width:
        row = row + [""] * (width - len(row))
    order_id = row[schema.order_id].strip()
    if not order_id:
        return Reject(line, "empty order_id", row)
    if len(order_id) > MAX_ORDER_ID or not order_id.isprintable():
        return Reject(
            line, f"order_id must be printable and at most {MAX_ORDER_ID} characters", row
        )
    quantity_text = row[schema.quantity].strip() if schema.quantity is not None else ""
    if quantity_text and not (quantity_text.isascii() and quantity_text.isdigit()):
        return Reject(line, f"quantity {quantity_text!r} is not a positive whole number", row)
    quantity = int(quantity_text) if quantity_text else 1
    if quantity < 1:
        return Reject(line, f"quantity {quantity_text!r} is not a positive whole number", row)
    if not seen.add(order_id):
        return Reject(line, f"duplicate order_id {order_id!r} (already earlier in this file)", row)
    known = {name: row[i].strip() for name, i in schema.known}
    extra = {name: row[i] for name, i in schema.extra}
    return Order(
        order_id=order_id, quantity=quantity, extra=extra, source=source, line=line, **known
    )


def _printable(row: list[str]) -> list[str]:
    return [f.encode("utf-8", "replace").decode().replace("\x00", "\\0") for f in row]
