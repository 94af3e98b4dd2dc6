"""Run figures computed from the ledger: what `courierflow run` prints and writes.

From the ledger (:func:`summarize_ledger`) the figures come from one pass over the
file's orders as the ledger streams them, a chunk at a time, keeping counts, sums, the
latest delivery and the first :data:`LISTED_ORDERS` failed and lost orders, and from a
sweep over the trips' start and end events in time order, which keeps one number. The
SQLite ledger sorts those events in SQL, so a million orders are summed in the memory of
one chunk; DynamoDB cannot sort by an attribute, so its trips' times are sorted here
(16 bytes a trip, :mod:`courierflow.ledger.trips`). report.html sums the same
:class:`Totals` in the pass that finds its drawings' span (:func:`summarize_totals`), so
the orders are not read once more for the summary.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from courierflow.ledger.base import FileRecord, Ledger, OrderRecord
from courierflow.ledger.trips import trip_events
from courierflow.orders import OrderState
from courierflow.report.series import chunks
from courierflow.report.stats import Smallest

#: failed and lost orders a summary names one by one, the first by order id; the others
#: are counted (``failures_not_listed``, ``lost_orders_not_listed``)
LISTED_ORDERS = 1_000
#: records summed at a time (about 1 KB each as Python objects)
SUMMARY_CHUNK = 2_048


@dataclass
class RunSummary:
    """The figures of one run; ``to_json`` carries at least the documented keys."""

    file: str
    rows: int
    rejected: int
    published: int
    skipped: int
    delivered: int
    failed: int
    lost: int
    duplicates: int
    makespan_s: float
    peak_concurrency: int
    throughput_per_s: float
    refused: str = ""
    #: set when the upload repeated content already processed (nothing published again)
    note: str = ""
    #: (order id, reason) of the failed orders, the first LISTED_ORDERS by order id
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: ids of the orders that did not finish (the ``lost`` ones), the first LISTED_ORDERS
    lost_orders: list[str] = field(default_factory=list)
    #: failed orders beyond those in ``failures``
    failures_not_listed: int = 0
    #: lost orders beyond those in ``lost_orders``
    lost_orders_not_listed: int = 0

    def labelled(self, *, lab: bool = False) -> list[tuple[str, object]]:
        """The summary's lines as (label, value) for a table; ``lab``: only what a lab's
        own code produces (no rejects, skips or duplicates: it keeps no ledger)."""
        rows: list[tuple[str, object]] = [
            ("rows read", self.rows),
            ("rejected", self.rejected),
            ("published", self.published),
            ("already delivered (left alone)", self.skipped),
            ("delivered", self.delivered),
            ("failed", self.failed),
            ("unaccounted for (lost)", self.lost),
            ("duplicate deliveries skipped", self.duplicates),
            ("makespan", f"{self.makespan_s:.2f} s"),
            ("peak concurrent deliveries", self.peak_concurrency),
            ("throughput", f"{self.throughput_per_s:.1f} deliveries/s"),
        ]
        ledger_only = {"rejected", "already delivered (left alone)", "duplicate deliveries skipped"}
        return [row for row in rows if not (lab and row[0] in ledger_only)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def peak_in_flight(events: Iterable[tuple[float, int]]) -> int:
    """Most deliveries on the road at the same instant, swept over their start (+1) and
    end (-1) events in time order (an end before a start at the same instant)."""
    return max(0, max(itertools.accumulate(change for _at, change in events), default=0))


def peak_concurrency(records: Iterable[OrderRecord]) -> int:
    """Most deliveries on the road at the same instant among ``records``: their trips'
    events sorted in memory, then swept (:func:`peak_in_flight`)."""
    return peak_in_flight(trip_events(records))


@dataclass
class Totals:
    """What one pass over a file's orders keeps for the summary: counts, sums, the latest
    delivery and the first failed and lost orders by order id. Fed a chunk at a time in
    any order, so another pass over the same orders (report.html's first) can feed it."""

    counts: dict[OrderState, int] = field(default_factory=lambda: dict.fromkeys(OrderState, 0))
    duplicates: int = 0
    last_delivered_at: float = 0.0
    failures: Smallest[tuple[str, str]] = field(default_factory=lambda: Smallest(LISTED_ORDERS))
    lost: Smallest[str] = field(default_factory=lambda: Smallest(LISTED_ORDERS))

    def add_many(self, chunk: list[OrderRecord]) -> None:
        delivered, failed = OrderState.DELIVERED, OrderState.FAILED
        for r in chunk:
            self.counts[r.state] += 1
        self.duplicates += sum(r.duplicates for r in chunk)
        ends = [r.finished_at for r in chunk if r.state is delivered and r.finished_at]
        self.last_delivered_at = max(self.last_delivered_at, max(ends, default=0.0))
        self.failures.add_many([(r.order_id, r.reason) for r in chunk if r.state is failed])
        self.lost.add_many([r.order_id for r in chunk if not r.state.is_final])

    def summary(self, file: FileRecord | None, started_at: float, peak: int) -> RunSummary:
        """The figures of the orders added, with the ``peak`` concurrency swept from their
        trips; ``started_at`` is when the upload began."""
        repeat = file is not None and (file.started_at or 0) < started_at
        delivered = self.counts[OrderState.DELIVERED]
        end = self.last_delivered_at
        makespan = end - started_at if end and not repeat else 0.0
        failures, lost = self.failures.items(), self.lost.items()
        return RunSummary(
            file=file.source if file else "",
            rows=file.rows if file else 0,
            rejected=file.rejected if file else 0,
            published=file.published if file and not repeat else 0,
            skipped=file.skipped if file else 0,
            delivered=delivered,
            failed=self.failures.count,
            lost=self.lost.count,
            failures=failures,
            lost_orders=lost,
            failures_not_listed=self.failures.count - len(failures),
            lost_orders_not_listed=self.lost.count - len(lost),
            duplicates=self.duplicates,
            makespan_s=round(makespan, 3),
            peak_concurrency=peak,
            throughput_per_s=round(delivered / makespan, 2) if makespan > 0 else 0.0,
            refused=file.error if file and file.state.value == "refused" else "",
            note="identical to an upload already processed: nothing was published again"
            if repeat
            else "",
        )


def _totals(records: Iterable[OrderRecord]) -> Totals:
    """The totals of one pass over ``records``, a chunk at a time."""
    totals = Totals()
    for chunk in chunks(records, SUMMARY_CHUNK):
        totals.add_many(chunk)
    return totals


def summarize(
    file: FileRecord | None, records: Collection[OrderRecord], started_at: float
) -> RunSummary:
    """Figures for the orders of one file held in memory (read twice: once for the
    figures, once for the peak); ``started_at`` is when the upload began."""
    return _totals(records).summary(file, started_at, peak_concurrency(records))


def summarize_ledger(
    ledger: Ledger, file: FileRecord | None, source: str, started_at: float
) -> RunSummary:
    """The figures of :func:`summarize` for the orders of ``source`` (``s3://bucket/key``)
    as the ledger streams them, in memory that does not grow with the orders: one pass
    over the orders a page at a time (:meth:`~courierflow.ledger.base.Ledger.iter_orders`)
    and the peak swept over the trips' events in time order
    (:meth:`~courierflow.ledger.base.Ledger.trip_events`)."""
    return summarize_totals(ledger, file, source, _totals(ledger.iter_orders(source)), started_at)


def summarize_totals(
    ledger: Ledger, file: FileRecord | None, source: str, totals: Totals, started_at: float
) -> RunSummary:
    """The figures of :func:`summarize_ledger` from ``totals`` already summed over the
    orders of ``source`` by a pass the caller made (report.html's first), so the orders
    are not read again: only the trips' events are swept for the peak."""
    return totals.summary(file, started_at, peak_in_flight(ledger.trip_events(source)))
