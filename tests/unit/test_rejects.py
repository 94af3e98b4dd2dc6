"""The rejects report: where it goes, and that it parses back and is spreadsheet-safe."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from courierflow.csvreader import read_orders
from courierflow.errors import UnreadableFileError
from courierflow.orders import Reject
from courierflow.rejects import REJECTS_PREFIX, neutralise, rejects_key, write_rejects

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parent.parent / "data" / "csv"


def report(rejects: list[Reject], header: bool = True) -> list[list[str]]:
    out = io.StringIO()
    assert write_rejects(rejects, out, header=header) == len(rejects)
    return list(csv.reader(io.StringIO(out.getvalue())))


def test_the_report_of_a_key_goes_under_the_rejects_prefix() -> None:
    assert REJECTS_PREFIX == "rejects/"
    assert rejects_key("orders.csv") == "rejects/orders.csv"
    assert rejects_key("incoming/2024/my orders;v2.csv") == "rejects/incoming/2024/my orders;v2.csv"


def test_the_report_key_always_ends_in_csv_so_it_opens_as_a_spreadsheet() -> None:
    assert rejects_key("orders.CSV") == "rejects/orders.CSV"
    assert rejects_key("orders.txt") == "rejects/orders.txt.csv"
    assert rejects_key("incoming/orders") == "rejects/incoming/orders.csv"


def test_a_reason_or_raw_row_starting_with_a_formula_is_neutralised_but_line_is_not() -> None:
    rows = report([Reject(2, "-weird reason", ["@cmd", "x"]), Reject(3, "ok", ["A1", "=1"])])
    assert rows[1] == ["2", "'-weird reason", "'@cmd,x"]
    assert rows[2] == ["3", "ok", "A1,=1"]  # a cell is inert unless it starts with one


def test_a_report_parses_back_with_its_header_lines_reasons_and_raw_rows() -> None:
    rejects = [
        Reject(3, "empty order_id", ["", "Bob, Jr.", 'say "hi"']),
        Reject(7, "duplicate order_id 'D1' (already earlier in this file)", ["D1", "a\nb"]),
        Reject(9, "not valid CSV: a quoted field is never closed", []),
    ]
    rows = report(rejects)
    assert rows[0] == ["line", "reason", "raw"]
    assert [(int(r[0]), r[1]) for r in rows[1:]] == [(r.line, r.reason) for r in rejects]
    assert [next(csv.reader(io.StringIO(r[2], newline="")), []) for r in rows[1:]] == [
        ["", "Bob, Jr.", 'say "hi"'],
        ["D1", "a\nb"],
        [],
    ]


def test_the_header_can_be_left_out_when_appending() -> None:
    assert report([Reject(2, "empty order_id", ["", "x"])], header=False) == [
        ["2", "empty order_id", ",x"]
    ]


def test_no_rejects_still_writes_the_header() -> None:
    assert report([]) == [["line", "reason", "raw"]]


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+1+2", "'+1+2"),
        ("-3", "'-3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("plain", "plain"),
        ("a=1", "a=1"),
        ("", ""),
    ],
)
def test_cells_a_spreadsheet_would_run_as_formulas_get_a_leading_quote(
    value: str, safe: str
) -> None:
    assert neutralise(value) == safe


def test_formula_rows_of_a_real_file_are_neutralised_in_its_report() -> None:
    data = (CORPUS / "formulas.csv").read_bytes()
    rejects = [i for i in read_orders(io.BytesIO(data), "formulas.csv") if isinstance(i, Reject)]
    assert [(r.line, r.raw) for r in rejects] == [(4, ["F1", "=cmd|' /C calc'!A0", "dup"])]
    formula_first = Reject(5, "empty order_id", ["=cmd|' /C calc'!A0", "x"])
    rows = report([*rejects, formula_first])
    assert rows[1] == [
        "4",
        "duplicate order_id 'F1' (first on line 2)",
        "F1,=cmd|' /C calc'!A0,dup",
    ]
    assert rows[2][2] == "'=cmd|' /C calc'!A0,x"
    assert next(csv.reader([rows[2][2].removeprefix("'")])) == formula_first.raw


def test_every_reject_of_the_corpus_can_be_written_and_read_back() -> None:
    for path in sorted(CORPUS.glob("*.csv")):
        try:
            items = list(read_orders(io.BytesIO(path.read_bytes()), path.name))
        except UnreadableFileError:  # refused files have no report
            continue
        rejects = [i for i in items if isinstance(i, Reject)]
        out = io.StringIO()
        write_rejects(rejects, out)
        out.getvalue().encode("utf-8")  # writable as UTF-8, whatever bytes the row had
        rows = list(csv.reader(io.StringIO(out.getvalue())))
        assert [int(r[0]) for r in rows[1:]] == [r.line for r in rejects], path.name
