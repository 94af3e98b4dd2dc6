"""The rejects report: one CSV row per rejected line, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import IO

from courierflow.orders import Reject

#: reports go under this prefix in the upload bucket (and are never processed as orders)
REJECTS_PREFIX = "rejects/"
HEADER = ("line", "reason", "raw")
#: a spreadsheet treats a cell starting with these as a formula
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def rejects_key(key: str) -> str:
    """Where the report of ``key`` goes: ``rejects/<key>``, ending in ``.csv``."""
    report = REJECTS_PREFIX + key
    return report if report.lower().endswith(".csv") else report + ".csv"


def neutralise(value: str) -> str:
    """Make a cell inert for spreadsheets (a leading quote shows the text as typed)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_rejects(rejects: Iterable[Reject], out: IO[str], header: bool = True) -> int:
    """Write ``line,reason,raw`` rows, formula-neutralised; returns how many rejects.

    ``raw`` is the row joined again as CSV text. ``header=False`` appends to a report
    already started.
    """
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(HEADER)
    count = 0
    for reject in rejects:
        raw = _join(reject.raw)
        writer.writerow([reject.line, neutralise(reject.reason), neutralise(raw)])
        count += 1
    return count


def _join(fields: list[str]) -> str:
    line = io.StringIO()
    # the writer quotes a field holding a character of its line terminator: with "\r\n"
    # a field with a newline is quoted (with "" it was not, and raw split on reading)
    csv.writer(line, lineterminator="\r\n").writerow(fields)
    return line.getvalue().removesuffix("\r\n")
