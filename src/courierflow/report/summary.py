"""Run figures computed from the ledger: what `courierflow run` prints and writes."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from courierflow.ledger.base import FileRecord, OrderRecord
from courierflow.orders import OrderState


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
    #: (order id, reason) of every failed order
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: ids of the orders that did not finish (the ``lost`` ones)
    lost_orders: list[str] = field(default_factory=list)

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


def peak_concurrency(records: Sequence[OrderRecord]) -> int:
    """Most deliveries on the road at the same instant: at each start (in order), the trips
    started so far minus those ended by then (an end at the same instant comes first)."""
    done = [
        r
        for r in records
        if r.state is OrderState.DELIVERED and r.started_at is not None and r.finished_at
    ]
    starts = sorted(r.started_at or 0.0 for r in done)
    ends = sorted(r.finished_at or 0.0 for r in done)
    peak = ended = 0
    for started, at in enumerate(starts, 1):
        ended = bisect.bisect_right(ends, at, ended)
        peak = max(peak, started - ended)
    return peak


def summarize(
    file: FileRecord | None, records: Sequence[OrderRecord], started_at: float
) -> RunSummary:
    """Figures for the orders of one file; ``started_at`` is when the upload began."""
    repeat = file is not None and (file.started_at or 0) < started_at
    delivered = [r for r in records if r.state is OrderState.DELIVERED]
    failed = sum(1 for r in records if r.state is OrderState.FAILED)
    ends = [r.finished_at for r in delivered if r.finished_at]
    makespan = max(ends) - started_at if ends and not repeat else 0.0
    return RunSummary(
        file=file.source if file else "",
        rows=file.rows if file else 0,
        rejected=file.rejected if file else 0,
        published=file.published if file and not repeat else 0,
        skipped=file.skipped if file else 0,
        delivered=len(delivered),
        failed=failed,
        lost=sum(1 for r in records if not r.state.is_final),
        failures=[(r.order_id, r.reason) for r in records if r.state is OrderState.FAILED],
        lost_orders=[r.order_id for r in records if not r.state.is_final],
        duplicates=sum(r.duplicates for r in records),
        makespan_s=round(makespan, 3),
        peak_concurrency=peak_concurrency(records),
        throughput_per_s=round(len(delivered) / makespan, 2) if makespan > 0 else 0.0,
        refused=file.error if file and file.state.value == "refused" else "",
        note="identical to an upload already processed: nothing was published again"
        if repeat
        else "",
    )
