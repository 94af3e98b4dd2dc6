"""The streaming CSV reader against a corpus of malformed and tricky files.

Every file in tests/data/csv has one documented outcome (tests/data/README.md): either
the whole file is refused with ``UnreadableFileError`` (nothing published), or the
reader yields exactly the listed orders and line-numbered rejects, in file order.
Files too big to commit (a field of several MB, 10,000 columns, 1 GB) are generated.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from courierflow.csvreader import SNIFF_BYTES, ReaderLimits, check_object_size, read_orders
from courierflow.errors import ConfigError, UnreadableFileError
from courierflow.orders import Order, Reject
from courierflow.rejects import write_rejects

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parent.parent / "data" / "csv"

#: more than the sniffed start of a file, all valid UTF-8: the rows of the padding
PAD_ROWS = 1700


def ok(order_id: str, line: int) -> tuple[str, str, int]:
    return ("order", order_id, line)


def bad(line: int, reason: str) -> tuple[str, int, str]:
    return ("reject", line, reason)


def padding() -> list[tuple[str, str, int]]:
    return [ok(f"P{i:04d}", i + 1) for i in range(1, PAD_ROWS + 1)]


def read(data: bytes, source: str = "s3://bucket/orders.csv", **limits: int) -> list:
    return list(read_orders(io.BytesIO(data), source, ReaderLimits(**limits)))


def outcomes(items: list[Order | Reject]) -> list[tuple]:
    return [
        ok(item.order_id, item.line) if isinstance(item, Order) else bad(item.line, item.reason)
        for item in items
    ]


def assert_outcomes(items: list[Order | Reject], expected: list[tuple]) -> None:
    """Orders by id and line exactly; rejects by line exactly and reason as a substring."""
    actual = outcomes(items)
    assert [a[:2] if a[0] == "reject" else a for a in actual] == [
        e[:2] if e[0] == "reject" else e for e in expected
    ]
    for a, e in zip(actual, expected, strict=True):
        if e[0] == "reject":
            assert e[2] in a[2], f"line {a[1]}: {a[2]!r} does not mention {e[2]!r}"


# file -> the orders and rejects it gives, in order (see tests/data/README.md)
READ_CASES: dict[str, list[tuple]] = {
    "utf16le_bom.csv": [ok("U1", 2), ok("U2", 3)],
    "utf8_bom.csv": [ok("B1", 2), ok("B2", 3)],
    "semicolon.csv": [ok("S1", 2), ok("S2", 3)],
    "tab.csv": [ok("T1", 2), ok("T2", 3)],
    "crlf.csv": [ok("C1", 2), ok("C2", 3)],
    "no_trailing_newline.csv": [ok("Z1", 2), ok("Z2", 3)],
    "multiline_quoted.csv": [ok("M1", 2), ok("M2", 5), ok("M3", 6), ok("M4", 8)],
    "mixed_encoding.csv": [
        *padding(),
        bad(PAD_ROWS + 2, "holds bytes that are not UTF-8 text"),
        ok("B2", PAD_ROWS + 3),
    ],
    "nul_later.csv": [*padding(), bad(PAD_ROWS + 2, "holds a NUL byte"), ok("N2", PAD_ROWS + 3)],
    "unbalanced_quote_eof.csv": [ok("Q1", 2), bad(3, "a quoted field on line 3 is never closed")],
    "unbalanced_quote_midfile.csv": [ok("Q1", 2), bad(3, "unbalanced or stray quote"), ok("Q4", 5)],
    "order_id_spelt_order_hyphen_id.csv": [ok("H1", 2)],
    "empty_and_duplicate_ids.csv": [
        ok("D1", 2),
        bad(3, "empty order_id"),
        bad(4, "empty order_id"),
        ok("D2", 5),
        bad(6, "duplicate order_id 'D1' (first on line 2)"),
        bad(7, "duplicate order_id 'D2' (first on line 5)"),
    ],
    "ragged.csv": [ok("R1", 2), bad(3, "5 fields but the header has 4"), ok("R3", 4), ok("R4", 5)],
    "bad_quantities.csv": [
        bad(2, "quantity '0' is not a positive whole number"),
        bad(3, "quantity '-1' is not a positive whole number"),
        bad(4, "quantity '1.5' is not a positive whole number"),
        bad(5, "quantity 'abc' is not a positive whole number"),
        ok("Qe", 6),
        ok("Q7", 7),
        bad(8, "is not a positive whole number"),
    ],
    "formulas.csv": [ok("F1", 2), ok("F2", 3), bad(4, "duplicate order_id 'F1' (first on line 2)")],
    "blank_lines.csv": [ok("L1", 3), ok("L2", 7)],
    "repeated_header.csv": [ok("K1", 2), bad(3, "repeated header row"), ok("K2", 4)],
    "extra_columns.csv": [ok("E1", 2), ok("E2", 3)],
    "header_only.csv": [],
}

# file -> what the refusal says (each substring must appear)
REFUSED_CASES: dict[str, tuple[str, ...]] = {
    "latin1_export.csv": ("is not UTF-8", "Latin-1", "save the file as UTF-8"),
    "missing_order_id.csv": ("no order_id column", "found 'OrderID'", "rename it to order_id"),
    "no_id_like_column.csv": ("no order_id column", "add an order_id column"),
    "nul_in_first_chunk.csv": ("NUL bytes", "binary"),
    "gzip_named.csv": ("gzip",),
    "json_named.csv": ("JSON",),
    "xlsx_named.csv": ("ZIP",),
    "empty.csv": ("empty",),
    "whitespace_only.csv": ("empty",),
    "blank_first_line.csv": ("first line is empty",),
}


def test_every_corpus_file_has_a_documented_outcome() -> None:
    committed = {p.name for p in CORPUS.glob("*.csv")}
    assert committed == set(READ_CASES) | set(REFUSED_CASES)
    documented = (CORPUS.parent / "README.md").read_text()
    assert all(f"`csv/{name}`" in documented for name in committed)


@pytest.mark.parametrize("name", sorted(READ_CASES))
def test_corpus_file_yields_exactly_its_documented_orders_and_rejects(name: str) -> None:
    assert_outcomes(read((CORPUS / name).read_bytes(), source=name), READ_CASES[name])


@pytest.mark.parametrize("name", sorted(REFUSED_CASES))
def test_corpus_file_is_refused_whole_with_one_message_naming_it(name: str) -> None:
    source = f"s3://uploads/{name}"
    with pytest.raises(UnreadableFileError) as refused:
        read_orders(io.BytesIO((CORPUS / name).read_bytes()), source)  # not even iterated
    message = str(refused.value)
    assert message.startswith(f"{source}: ")
    assert message.endswith("nothing was published")
    for part in REFUSED_CASES[name]:
        assert part in message


def test_utf16_exports_with_a_bom_are_decoded() -> None:
    first, second = read((CORPUS / "utf16le_bom.csv").read_bytes())
    assert (first.customer, first.quantity) == ("Zoë", 2)
    assert (second.customer, second.quantity) == ("Łukasz", 1)


def test_a_utf8_bom_does_not_become_part_of_the_first_column_name() -> None:
    first, _ = read((CORPUS / "utf8_bom.csv").read_bytes())
    assert (first.order_id, first.customer, first.extra) == ("B1", "Zoë", {})


def test_semicolon_exports_from_european_spreadsheets_are_read() -> None:
    s1, s2 = read((CORPUS / "semicolon.csv").read_bytes())
    assert (s1.customer, s1.address, s1.quantity) == ("Müller GmbH", "Hauptstraße 1, Berlin", 3)
    assert (s2.customer, s2.quantity) == ("Dupont; Fils", 1)


def test_tab_separated_files_are_read() -> None:
    t1, t2 = read((CORPUS / "tab.csv").read_bytes())
    assert (t1.customer, t1.notes, t2.notes) == ("Ada", "ring twice, please", "")


def test_crlf_line_ends_leave_no_carriage_return_in_values() -> None:
    c1, c2 = read((CORPUS / "crlf.csv").read_bytes())
    assert (c1.customer, c1.quantity, c2.customer, c2.quantity) == ("Ada", 1, "Bob", 2)


def test_quoted_newlines_stay_in_the_field_and_later_rows_keep_their_physical_line() -> None:
    m1, m2, m3, m4 = read((CORPUS / "multiline_quoted.csv").read_bytes())
    assert m1.address == "1 High St\nFlat 2\nLeeds"
    assert m1.notes == 'gate "B"'
    assert m3.notes == "line one\r\nline two"
    assert [m.line for m in (m1, m2, m3, m4)] == [2, 5, 6, 8]


def test_header_names_are_matched_ignoring_case_spaces_and_hyphens() -> None:
    (h1,) = read((CORPUS / "order_id_spelt_order_hyphen_id.csv").read_bytes())
    assert (h1.order_id, h1.customer, h1.quantity, h1.extra) == ("H1", "Ada", 2, {})
    (s1, _) = read(b"Order ID,Customer\nS1,Ada\nS2,Bob\n")
    assert (s1.order_id, s1.customer) == ("S1", "Ada")


def test_a_missing_order_id_column_is_refused_suggesting_the_close_spelling() -> None:
    with pytest.raises(UnreadableFileError, match=r"found 'Order_No': rename it to order_id"):
        read(b"Order_No,customer\nX1,Ada\n")


def test_rows_shorter_than_the_header_leave_the_missing_optional_fields_empty() -> None:
    _, _, r3, r4 = read((CORPUS / "ragged.csv").read_bytes())
    assert (r3.customer, r3.address, r3.quantity) == ("Cy", "", 1)
    assert (r4.address, r4.quantity) == ("4 Mid Ln", 3)  # trailing empty fields are fine


def test_an_empty_quantity_means_one_and_padding_spaces_are_ignored() -> None:
    items = read((CORPUS / "bad_quantities.csv").read_bytes())
    orders = {i.order_id: i.quantity for i in items if isinstance(i, Order)}
    assert orders == {"Qe": 1, "Q7": 7}


def test_duplicate_ids_are_compared_after_trimming_spaces() -> None:
    rejects = [i for i in read((CORPUS / "empty_and_duplicate_ids.csv").read_bytes())]
    assert rejects[-1] == Reject(7, "duplicate order_id 'D2' (first on line 5)", [" D2 ", "Fay"])


def test_spreadsheet_formulas_are_kept_as_data_in_the_order() -> None:
    f1, f2, dup = read((CORPUS / "formulas.csv").read_bytes())
    assert f1.customer == '=HYPERLINK("http://evil.example","click")'
    assert (f1.notes, f2.customer, f2.notes) == ("+1+2", "@SUM(A1:A9)", "-3")
    assert isinstance(dup, Reject) and dup.raw[1] == "=cmd|' /C calc'!A0"


def test_blank_lines_are_skipped_without_rejects_and_do_not_shift_line_numbers() -> None:
    assert outcomes(read((CORPUS / "blank_lines.csv").read_bytes())) == [ok("L1", 3), ok("L2", 7)]


def test_unknown_columns_travel_in_extra_under_their_own_names() -> None:
    e1, e2 = read((CORPUS / "extra_columns.csv").read_bytes())
    assert e1.extra == {"Gift Wrap": "yes", "loyalty-tier": "gold"}
    assert e2.extra == {"Gift Wrap": "", "loyalty-tier": ""}
    assert e1.to_message()["extra"] == {"Gift Wrap": "yes", "loyalty-tier": "gold"}


def test_an_unbalanced_quote_at_the_end_is_rejected_not_read_as_one_long_note() -> None:
    items = read((CORPUS / "unbalanced_quote_eof.csv").read_bytes())
    assert not any(isinstance(i, Order) and "swallowed" in i.notes for i in items)
    assert outcomes(items)[-1][:2] == ("reject", 3)


def test_an_unbalanced_quote_never_hangs_even_with_no_newline_after_it() -> None:
    started = time.monotonic()
    items = read(b'order_id,notes\nQ1,"' + b"x" * 200_000)
    assert outcomes(items) == [bad(2, outcomes(items)[0][2])]
    assert "never closed" in items[0].reason
    assert time.monotonic() - started < 5


def test_an_unbalanced_quote_before_megabytes_of_rows_is_one_reject_naming_every_line() -> None:
    rest = b"".join(b"Q%d,more\n" % i for i in range(3, 200_000))  # ~1.9 MB, no quote
    items = read(b'order_id,notes\nQ1,ok\nQ2,"open\n' + rest, max_field_bytes=1024**2)
    assert_outcomes(items, [ok("Q1", 2), bad(3, "lines 3-200000, the rest of the file")])
    assert "never closed" in items[1].reason


def test_a_quoted_multiline_field_over_the_limit_does_not_turn_its_lines_into_orders() -> None:
    note = b"".join(b"N%d looks like an id\n" % i for i in range(150_000))  # ~3 MB
    data = b'order_id,notes\nA1,"' + note + b'",\nA2,after\nA3,"short ""quoted""\ntwo"\n'
    items = read(data, max_field_bytes=1024**2)
    last_note_line = 2 + 150_000
    assert_outcomes(
        items,
        [
            bad(2, f"a field is longer than 1048576 characters, on lines 2-{last_note_line}"),
            ok("A2", last_note_line + 1),
            ok("A3", last_note_line + 2),
        ],
    )
    assert items[2].notes == 'short "quoted"\ntwo'


def test_an_over_long_line_of_small_fields_is_rejected_and_line_numbers_stay_right() -> None:
    wide = b",".join([b"f" * 1000] * 300)  # 300 KB on one line, each field small
    data = b"order_id,notes\nA1,x\nA2," + wide + b"\nA3,y\n"
    items = read(data, max_field_bytes=64 * 1024)  # lines up to 128 KiB
    assert_outcomes(
        items, [ok("A1", 2), bad(3, "line 3 is longer than 131072 characters"), ok("A3", 4)]
    )


def test_a_line_of_100_megabytes_is_never_held_whole() -> None:
    class OneHugeLine(io.RawIOBase):
        """A header, then a row whose second field is 100 MB with no newline."""

        def __init__(self) -> None:
            self.parts = iter([b"order_id,notes\nA1,", *[b"x" * 1024**2] * 100, b"\nA2,ok\n"])
            self.pending = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            if not self.pending:
                self.pending = next(self.parts, b"")
            n = min(len(buffer), len(self.pending))
            buffer[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            return n

    tracemalloc.start()
    try:
        items = list(read_orders(io.BufferedReader(OneHugeLine()), "s3://b/k.csv"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_outcomes(items, [bad(2, "a field is longer than 1048576 characters"), ok("A2", 3)])
    assert peak < 30 * 1024**2, f"peak {peak / 1024**2:.0f} MB"


def test_a_field_of_several_megabytes_is_rejected_and_the_next_row_still_read() -> None:
    big = b"n" * (5 * 1024**2)
    items = read(b"order_id,notes\nA1,small\nA2," + big + b"\nA3,after\n")
    assert_outcomes(
        items, [ok("A1", 2), bad(3, "a field is longer than 1048576 characters"), ok("A3", 4)]
    )


def test_a_quoted_field_of_several_megabytes_is_rejected_too() -> None:
    big = b"n" * (3 * 1024**2)
    items = read(b'order_id,notes\nA2,"' + big + b'"\nA3,after\n', max_field_bytes=2 * 1024**2)
    assert_outcomes(
        items, [bad(2, "a field is longer than 2097152 characters, on line 2"), ok("A3", 3)]
    )


def test_ten_thousand_columns_are_refused_by_max_columns() -> None:
    header = ",".join(["order_id"] + [f"c{i}" for i in range(9_999)]).encode()
    with pytest.raises(UnreadableFileError, match=r"10000 columns, over the limit of 1000"):
        read(header + b"\n" + b"A1" + b"," * 9_999 + b"\n")


def test_invalid_bytes_after_the_sniffed_start_reject_only_their_row() -> None:
    data = (CORPUS / "mixed_encoding.csv").read_bytes()
    assert len(data) > SNIFF_BYTES and data.find(b"\xe9") > SNIFF_BYTES
    items = read(data)
    bad = items[PAD_ROWS]
    assert isinstance(bad, Reject) and bad.raw[0] == "B1"
    assert "\ufffd" in bad.raw[1] or "?" in bad.raw[1]  # made printable for the report
    out = io.StringIO()
    write_rejects([bad], out)
    out.getvalue().encode("utf-8")  # the report can be written as UTF-8


def test_a_ragged_row_with_invalid_bytes_can_still_be_written_to_the_report() -> None:
    pad = (CORPUS / "mixed_encoding.csv").read_bytes().split(b"B1,")[0]
    items = read(pad + b"X1,Ren\xe9e,a,b,1,extra\n")
    bad = items[-1]
    assert isinstance(bad, Reject) and bad.line == PAD_ROWS + 2
    assert "not UTF-8" in bad.reason
    out = io.StringIO()
    assert write_rejects([bad], out) == 1
    out.getvalue().encode("utf-8")


def test_rows_past_max_rows_are_rejected_one_by_one() -> None:
    items = read(b"order_id\nA1\n\nA2\nA3\n", max_rows=1)
    assert_outcomes(items, [ok("A1", 2), bad(4, "over the limit of 1 rows"), bad(5, "MAX_ROWS")])


def test_a_long_or_unprintable_order_id_is_rejected() -> None:
    items = read(b"order_id\n" + b"x" * 129 + b"\nok\x07id\n" + b"y" * 128 + b"\n")
    assert_outcomes(
        items,
        [
            bad(2, "order_id is 129 characters, over 128"),
            bad(3, "control or invisible"),
            ok("y" * 128, 4),
        ],
    )


# --- limits from the environment ------------------------------------------------------


def test_limits_default_when_the_environment_sets_none() -> None:
    assert ReaderLimits.from_env({}) == ReaderLimits()
    assert ReaderLimits() == ReaderLimits(
        max_object_bytes=2 * 1024**3, max_field_bytes=1024**2, max_rows=5_000_000, max_columns=1000
    )


def test_each_limit_can_be_raised_by_its_environment_variable() -> None:
    env = {
        "COURIERFLOW_MAX_OBJECT_BYTES": "10",
        "COURIERFLOW_MAX_FIELD_BYTES": "20",
        "COURIERFLOW_MAX_ROWS": "30",
        "COURIERFLOW_MAX_COLUMNS": "40",
        "COURIERFLOW_UNRELATED": "x",
    }
    assert ReaderLimits.from_env(env) == ReaderLimits(10, 20, 30, 40)
    assert ReaderLimits.from_env({"COURIERFLOW_MAX_ROWS": ""}) == ReaderLimits()


def test_limits_are_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURIERFLOW_MAX_COLUMNS", "7")
    assert ReaderLimits.from_env().max_columns == 7


def test_a_limit_that_is_not_a_number_fails_loudly() -> None:
    with pytest.raises(ConfigError, match="COURIERFLOW_MAX_ROWS='lots' is not a whole number"):
        ReaderLimits.from_env({"COURIERFLOW_MAX_ROWS": "lots"})


# --- a large file, streamed ---------------------------------------------------------------


class GeneratedCsv(io.RawIOBase):
    """A binary file-like object producing about ``size`` bytes of orders, never on disk.

    Whole rows only, in batches; ``rows`` counts the rows produced so far.
    """

    HEADER = b"order_id,customer,address,items,quantity,priority,notes\n"
    ROW = b"ORD-%010d,Customer %06d,%05d Long Street Leeds LS1,widget;gadget;spare,%d,normal,%s\n"
    NOTE = b"leave with the neighbour at number twelve if nobody answers the door " * 4

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows = 0
        self._pending = memoryview(b"")
        self._chunks = self._generate()

    def _generate(self) -> Iterator[bytes]:
        produced = len(self.HEADER)
        yield self.HEADER
        while produced < self.size:
            start = self.rows
            chunk = b"".join(
                self.ROW % (i, i % 999_983, i % 99_991, 1 + i % 9, self.NOTE)
                for i in range(start, start + 2_000)
            )
            self.rows += 2_000
            produced += len(chunk)
            yield chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            chunk = next(self._chunks, b"")
            if not chunk:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@pytest.mark.timeout(900)
def test_a_large_file_streams_with_bounded_memory() -> None:
    """1 GB with COURIERFLOW_SLOW_TESTS=1, else 80 MB (~20 s under tracemalloc here).

    The object comes from a generator-backed file-like object, never from disk; the row
    count must be exact and the traced peak stays under 50 MB, so a reader holding the
    file (80 MB) or its orders fails at either size. Rows are ~360 bytes, so 1 GB is ~3
    million ids: 36 MB of duplicate detection (12 bytes per id) included.
    """
    size = 1024**3 if os.environ.get("COURIERFLOW_SLOW_TESTS") == "1" else 80 * 1024**2
    stream = GeneratedCsv(size)
    orders = rejects = 0
    tracemalloc.start()
    try:
        for item in read_orders(io.BufferedReader(stream), "s3://b/big.csv"):
            if isinstance(item, Order):
                orders += 1
            else:
                rejects += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rejects == 0
    assert orders == stream.rows
    assert orders >= (size - len(GeneratedCsv.HEADER)) // 400  # rows are under 400 bytes
    assert peak < 50 * 1024**2, f"traced peak {peak / 1024**2:.0f} MB"


def test_the_rejects_of_a_file_round_trip_through_the_report() -> None:
    rejects = [
        i
        for i in read((CORPUS / "empty_and_duplicate_ids.csv").read_bytes())
        if isinstance(i, Reject)
    ]
    out = io.StringIO()
    assert write_rejects(rejects, out) == 4
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["line", "reason", "raw"]
    assert [int(r[0]) for r in rows[1:]] == [3, 4, 6, 7]
    assert next(csv.reader([rows[-1][2]])) == [" D2 ", "Fay"]


# --- encodings, header and limits beyond the corpus -----------------------------------


def test_utf16_big_endian_with_a_bom_is_decoded() -> None:
    data = "order_id;customer\r\nBE1;Zoë\r\n".encode("utf-16-be")
    (order,) = read(b"\xfe\xff" + data)
    assert (order.order_id, order.customer, order.line) == ("BE1", "Zoë", 2)


def test_bad_utf16_after_the_sniffed_start_rejects_only_its_row() -> None:
    pad = "".join(f"P{i:05d},x\n" for i in range(10_000))  # 200 KB as UTF-16
    body = ("order_id,notes\n" + pad).encode("utf-16-le")
    lone_surrogate = "X1,".encode("utf-16-le") + b"\x00\xd8" + "\nX2,ok\n".encode("utf-16-le")
    items = read(codecs.BOM_UTF16_LE + body + lone_surrogate)
    assert_outcomes(items[-2:], [bad(10_002, "not UTF-16 text"), ok("X2", 10_003)])


def test_utf16_without_a_bom_is_refused_saying_so() -> None:
    with pytest.raises(UnreadableFileError, match="UTF-16 without a byte-order mark"):
        read("order_id,customer\nA1,Ada\n".encode("utf-16-le"))


def test_a_header_naming_order_id_twice_is_refused() -> None:
    with pytest.raises(UnreadableFileError, match="names the order_id column 2 times"):
        read(b"order_id,Order ID,customer\nA1,B1,Ada\n")


def test_an_object_over_max_object_bytes_is_refused_before_reading() -> None:
    limits = ReaderLimits(max_object_bytes=100)
    check_object_size(100, "s3://b/k.csv", limits)
    check_object_size(None, "s3://b/k.csv", limits)  # size unknown: the reader's limits apply
    with pytest.raises(UnreadableFileError, match=r"^s3://b/k.csv: the file is 101 bytes, over"):
        check_object_size(101, "s3://b/k.csv", limits)


def test_a_limit_of_zero_or_less_fails_loudly() -> None:
    with pytest.raises(ConfigError, match="COURIERFLOW_MAX_FIELD_BYTES"):
        ReaderLimits.from_env({"COURIERFLOW_MAX_FIELD_BYTES": "0"})


def test_a_duplicate_far_apart_names_the_line_it_was_first_on() -> None:
    rows = b"".join(b"D%d\n" % i for i in range(100_000))
    items = read(b"order_id\n" + rows + b"D7\n")
    assert_outcomes(items[-1:], [bad(100_002, "duplicate order_id 'D7' (first on line 9)")])
    assert sum(isinstance(i, Order) for i in items) == 100_000
