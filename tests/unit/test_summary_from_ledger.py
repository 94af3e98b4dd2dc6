"""The run summary streamed from a SQLite ledger: the same figures as the summary of every
record held in a list, in memory that does not grow with the orders."""

from __future__ import annotations

import bisect
import random
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from courierflow.ledger.base import FileRecord, FileState, OrderRecord
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.ledger.sqlite_file import PAGE_ROWS
from courierflow.orders import OrderState
from courierflow.report import summary as summary_module
from courierflow.report.html import render_report, write_report
from courierflow.report.series import time_span
from courierflow.report.summary import RunSummary, summarize, summarize_ledger
from tests import ledgerdata

pytestmark = pytest.mark.unit
SOURCE = "s3://b/orders.csv"
T0 = 1_700_000_000.0


def listed_summary(
    file: FileRecord | None, records: Sequence[OrderRecord], started_at: float
) -> RunSummary:
    """The summary as it was computed from every record in one list, before it was
    streamed: the reference the streamed one must equal."""
    repeat = file is not None and (file.started_at or 0) < started_at
    delivered = [r for r in records if r.state is OrderState.DELIVERED]
    ends = [r.finished_at for r in delivered if r.finished_at]
    makespan = max(ends) - started_at if ends and not repeat else 0.0
    done = [r for r in delivered if r.started_at is not None and r.finished_at]
    starts = sorted(r.started_at or 0.0 for r in done)
    finishes = sorted(r.finished_at or 0.0 for r in done)
    peak = ended = 0
    for started, at in enumerate(starts, 1):
        ended = bisect.bisect_right(finishes, at, ended)
        peak = max(peak, started - ended)
    return RunSummary(
        file=file.source if file else "",
        rows=file.rows if file else 0,
        rejected=file.rejected if file else 0,
        published=file.published if file and not repeat else 0,
        skipped=file.skipped if file else 0,
        delivered=len(delivered),
        failed=sum(1 for r in records if r.state is OrderState.FAILED),
        lost=sum(1 for r in records if not r.state.is_final),
        failures=[(r.order_id, r.reason) for r in records if r.state is OrderState.FAILED],
        lost_orders=[r.order_id for r in records if not r.state.is_final],
        duplicates=sum(r.duplicates for r in records),
        makespan_s=round(makespan, 3),
        peak_concurrency=peak,
        throughput_per_s=round(len(delivered) / makespan, 2) if makespan > 0 else 0.0,
        refused=file.error if file and file.state.value == "refused" else "",
        note="identical to an upload already processed: nothing was published again"
        if repeat
        else "",
    )


def _run_through_the_ledger(ledger: SQLiteLedger, n: int, seed: int = 7) -> FileRecord:
    """``n`` orders of SOURCE through the ledger's own writes: most delivered (times in
    quarters of a second, exact in binary, so trips end exactly as others start), some
    failed, some claimed twice (duplicates), some left queued, dispatched or delivering
    (lost); and orders of another file that the summary must leave out."""
    rng = random.Random(seed)
    ledger.begin_file("b", "orders.csv", "e1", now=T0)
    ids = [f"ORD-{i:05d}" for i in range(n)]
    rng.shuffle(ids)  # written in no order of their ids
    ledger.add_queued(ids, SOURCE, now=T0 + 0.5)
    ledger.add_queued(["OTHER-1", "OTHER-2"], "s3://b/other.csv", now=T0)
    ledger.mark_dispatched({order_id: T0 + 1 for order_id in ids[: n - 5]})
    for i, order_id in enumerate(ids[: n - 10]):
        start = T0 + 1 + rng.randrange(0, 120) / 4
        if i % 17 == 0:
            ledger.mark_failed(order_id, f"gave up on {order_id}", start)
            continue
        ledger.claim_delivery(order_id, f"r{i}", 60, start)
        if i % 29 == 0:
            continue  # still delivering: lost
        ledger.complete_delivery(order_id, f"r{i}", 0.1, start, start + rng.randrange(1, 12) / 4)
        if i % 13 == 0:
            ledger.claim_delivery(order_id, f"again{i}", 60, start + 5)  # a duplicate
    for order_id in ("OTHER-1", "OTHER-2"):
        ledger.claim_delivery(order_id, order_id, 60, T0 + 2)
        ledger.complete_delivery(order_id, order_id, 0.1, T0 + 2, T0 + 900)
    ledger.finish_file("b", "orders.csv", "e1", FileState.DONE, rows=n + 3, published=n,
                       rejected=3, now=T0 + 0.6)  # fmt: skip
    file = ledger.get_file("b", "orders.csv", "e1")
    assert file is not None
    return file


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[SQLiteLedger, FileRecord]:
    book = SQLiteLedger(tmp_path_factory.mktemp("summary") / "ledger.db")
    return book, _run_through_the_ledger(book, n=2 * PAGE_ROWS + 300)


def test_the_streamed_summary_equals_the_summary_of_every_record(
    ledger: tuple[SQLiteLedger, FileRecord],
) -> None:
    book, file = ledger
    records = book.orders(SOURCE)
    assert len(records) > 2 * PAGE_ROWS  # the stream hands over more than one page
    expected = listed_summary(file, records, T0)
    # every figure is exercised, a trip ending as another starts among them
    assert expected.failed and expected.lost and expected.duplicates
    trips = [r for r in records if r.state is OrderState.DELIVERED]
    assert {r.finished_at for r in trips} & {r.started_at for r in trips}
    assert {OrderState.QUEUED, OrderState.DISPATCHED, OrderState.DELIVERING} <= {
        r.state for r in records
    }
    assert expected.peak_concurrency > 1

    streamed = summarize_ledger(book, file, SOURCE, T0)

    assert streamed == expected
    assert summarize(file, records, T0) == expected


def test_past_the_listed_limit_the_first_orders_are_named_and_the_rest_counted(
    ledger: tuple[SQLiteLedger, FileRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    book, file = ledger
    expected = listed_summary(file, book.orders(SOURCE), T0)
    monkeypatch.setattr(summary_module, "LISTED_ORDERS", 5)

    streamed = summarize_ledger(book, file, SOURCE, T0)

    assert streamed.failures == expected.failures[:5]
    assert streamed.lost_orders == expected.lost_orders[:5]
    assert streamed.failures_not_listed == expected.failed - 5 > 0
    assert streamed.lost_orders_not_listed == expected.lost - 5 > 0
    json = streamed.to_json()
    assert len(json["failures"]) + json["failures_not_listed"] == json["failed"]
    assert len(json["lost_orders"]) + json["lost_orders_not_listed"] == json["lost"]


def test_the_report_streamed_from_the_ledger_is_the_report_of_every_record(
    ledger: tuple[SQLiteLedger, FileRecord], tmp_path: Path
) -> None:
    book, file = ledger
    records = book.orders(SOURCE)
    listed = render_report(summarize(file, records, T0), records, T0)

    streamed = write_report(book, SOURCE, T0, tmp_path / "streamed.html")
    given = write_report(book, SOURCE, T0, tmp_path / "given.html",
                         summary=summarize_ledger(book, file, SOURCE, T0))  # fmt: skip

    assert streamed.read_text(encoding="utf-8") == listed
    assert given.read_text(encoding="utf-8") == listed


def test_without_an_upload_time_the_report_counts_from_the_files_start_not_a_repeat(
    ledger: tuple[SQLiteLedger, FileRecord], tmp_path: Path
) -> None:
    """As `courierflow report` writes it after the run: time zero is when the publisher
    began the file (the first order was queued after it). Counting from the first order
    made every such report read as a repeated upload, with nothing published."""
    book, file = ledger
    records = book.orders(SOURCE)
    assert file.started_at == T0 < time_span(records, None)[0]
    summary = summarize(file, records, T0)
    assert not summary.note and summary.published == file.published > 0
    listed = render_report(summary, records, T0)

    streamed = write_report(book, SOURCE, None, tmp_path / "streamed.html").read_text("utf-8")

    assert streamed == listed
    assert "identical to an upload already processed" not in streamed


class CountingLedger(SQLiteLedger):
    """A SQLite ledger that counts the passes made over its orders and its trips."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.order_passes = self.trip_passes = 0

    def iter_orders(self, source: str | None = None) -> Iterator[OrderRecord]:
        self.order_passes += 1
        return super().iter_orders(source)

    def trip_events(self, source: str | None = None) -> Iterator[tuple[float, int]]:
        self.trip_passes += 1
        return super().trip_events(source)


@pytest.mark.parametrize("started_at", [None, T0])
def test_the_report_reads_the_orders_twice_and_sweeps_the_trips_once(
    ledger: tuple[SQLiteLedger, FileRecord], tmp_path: Path, started_at: float | None
) -> None:
    """One pass finds the span and sums the summary, the other draws; a summary handed in
    spares the trips' sweep."""
    book, file = ledger
    counting = CountingLedger(book.path)

    write_report(counting, SOURCE, started_at, tmp_path / "report.html")
    assert (counting.order_passes, counting.trip_passes) == (2, 1)

    summary = summarize_ledger(book, file, SOURCE, T0)
    counting.order_passes = counting.trip_passes = 0
    write_report(counting, SOURCE, started_at, tmp_path / "given.html", summary=summary)
    assert (counting.order_passes, counting.trip_passes) == (2, 0)


def test_the_ledgers_trip_events_are_in_time_order_with_ends_first_at_a_tie(
    tmp_path: Path,
) -> None:
    book = SQLiteLedger(tmp_path / "ledger.db")
    book.add_queued(["a", "b", "c", "d"], SOURCE, now=0.0)
    for order_id, start, end in (("a", 0, 10), ("b", 1, 5), ("c", 5, 6), ("d", 20, 30)):
        book.claim_delivery(order_id, order_id, 60, float(start))
        book.complete_delivery(order_id, order_id, 0.0, float(start), float(end))

    events = list(book.trip_events(SOURCE))

    assert [at for at, _ in events] == [0, 1, 5, 5, 6, 10, 20, 30]
    assert events[2:4] == [(5.0, -1), (5.0, 1)]  # b ends before c starts: never three
    assert summarize_ledger(book, None, SOURCE, 0.0).peak_concurrency == 2


def test_summarising_200000_orders_holds_a_chunk_not_the_orders(tmp_path: Path) -> None:
    """Every record in one list (what the summary was computed from) takes ~125 MB of
    Python objects at 200,000 orders; streamed, the summary holds a chunk of records, the
    listed failures and a page of trip events (~2.5 MB)."""
    book = ledgerdata.synthetic_ledger(tmp_path / "ledger.db", 200_000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        summary = summarize_ledger(book, None, ledgerdata.SOURCE, ledgerdata.T0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"\n200,000 orders summarised in {elapsed:.1f} s (traced), peak {peak / 1e6:.1f} MB")
    assert peak < 10_000_000
    delivered, failed, lost = ledgerdata.expected_counts(200_000)
    assert (summary.delivered, summary.failed, summary.lost) == (delivered, failed, lost)
    assert summary.duplicates == 100_000
    assert len(summary.failures) == summary_module.LISTED_ORDERS
    assert summary.failures_not_listed == failed - summary_module.LISTED_ORDERS
    assert summary.failures[0] == ("ORD-0000000", "gave up on 0")
    assert len(summary.lost_orders) == lost and summary.lost_orders_not_listed == 0
    assert 100 < summary.peak_concurrency < 200
