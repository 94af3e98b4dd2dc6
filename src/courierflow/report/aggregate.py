"""What report.html draws, gathered in two passes over a run's ledger records.

The first pass finds the time span and counts the deliveries (:class:`RunExtent`; the
report feeds the run summary's totals from the same pass); the second feeds fixed-size
counters (:mod:`courierflow.report.series`, :mod:`courierflow.report.stats`). Up to
:data:`DETAIL_LIMIT` deliveries the timeline has one bar per delivery on its courier lane;
past it the run is aggregated: a density strip of deliveries in flight per outcome,
histograms of the trip and wait times, the slowest trips and the failures still listed one
by one (capped, with a count). Nothing per order is kept beyond those caps.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from courierflow.ledger.base import OrderRecord
from courierflow.orders import OrderState
from courierflow.report.series import (
    SERIES_POINTS,
    IntervalCounts,
    Occupancy,
    RateBins,
    Span,
    add_trips,
    add_waits,
    chunks,
    delivered_times,
    instants,
)
from courierflow.report.stats import LatencySketch, Smallest, add_latencies

#: most deliveries drawn one bar each; past it the timeline is a density strip
DETAIL_LIMIT = 5_000
#: columns of the density strip (time bins)
DENSITY_BINS = 480
#: bars of the trip and wait histograms
HISTOGRAM_BINS = 40
#: slowest trips listed one by one
SLOWEST_LISTED = 50
#: most rejected rows / failures listed in the report (the rest are counted)
MAX_LISTED = 500
#: the colour classes of the timeline, in legend order
OUTCOMES = ("delivered", "failed", "delivering", "other")


@dataclass(frozen=True, slots=True)
class Bar:
    """One delivery attempt on the timeline: an order on a courier lane."""

    order_id: str
    lane: int
    start: float
    end: float
    outcome: str


#: the states drawn in their own colour; every other one is "other"
_OUTCOME_OF_STATE: dict[OrderState, str] = {
    s: s.value for s in (OrderState.DELIVERED, OrderState.FAILED, OrderState.DELIVERING)
}


def outcome_of(record: OrderRecord) -> str:
    """The colour class of an order: delivered, failed, delivering, or other."""
    return _OUTCOME_OF_STATE.get(record.state, "other")


def _trip_end(record: OrderRecord, now: float | None) -> tuple[float, float]:
    """(start, end) of a started delivery; one with no end yet ends at ``now`` (or at its
    start)."""
    start = record.started_at or 0.0
    end = record.finished_at if record.finished_at is not None else now
    return start, max(end if end is not None else start, start)


def assign_lanes(records: Iterable[OrderRecord], now: float | None = None) -> list[Bar]:
    """Put every started delivery on a courier lane, greedily by start time.

    Deliveries are taken in order of start; each goes to the lowest-numbered lane free at
    its start (a lane frees at the instant its delivery ends), so the number of lanes is
    the peak concurrency. A delivery with no end yet ends at ``now`` (or at its start).
    """
    started = sorted(
        (r for r in records if r.started_at is not None),
        key=lambda r: (r.started_at or 0.0, r.order_id),
    )
    busy: list[tuple[float, int]] = []  # (end, lane) of deliveries on the road
    free: list[int] = []  # lanes free again, smallest first
    lanes = 0
    bars: list[Bar] = []
    for r in started:
        start, end = _trip_end(r, now)
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, lanes = lanes, lanes + 1
        heapq.heappush(busy, (end, lane))
        bars.append(Bar(r.order_id, lane, start, end, outcome_of(r)))
    return bars


@dataclass(frozen=True, slots=True)
class Trip:
    """One slow delivery, listed in an aggregated report."""

    order_id: str
    seconds: float
    start: float
    outcome: str


@dataclass
class RunAggregate:
    """Everything report.html draws of one run's records."""

    t0: float
    t1: float
    orders: int
    deliveries: int
    #: one bar per delivery, or None when the run is aggregated
    bars: list[Bar] | None
    in_flight: list[tuple[float, int]]
    throughput: list[tuple[float, float]]
    queue_depth: list[tuple[float, int]]
    #: outcome -> mean deliveries in flight per density bin (aggregated runs only)
    density: dict[str, list[float]]
    waits: LatencySketch
    trips: LatencySketch
    slowest: list[Trip]
    #: (order, attempts, reason) of the first failures by order id, and how many failed
    failures: list[tuple[str, int, str]]
    failed: int


def _trips_by_outcome(
    started: list[OrderRecord], now: float
) -> dict[str, tuple[list[float], list[float], list[str]]]:
    """(starts, ends, order ids) of the started deliveries per outcome; unfinished ones end
    ``now``, none before its start."""
    groups = {outcome: [r for r in started if r.state is state]
              for state, outcome in _OUTCOME_OF_STATE.items()}  # fmt: skip
    groups["other"] = [r for r in started if r.state not in _OUTCOME_OF_STATE]
    trips = {}
    for outcome, group in groups.items():
        starts = [r.started_at or 0.0 for r in group]
        ends = [now if r.finished_at is None else r.finished_at for r in group]
        ends = [end if end > start else start for start, end in zip(starts, ends, strict=True)]
        trips[outcome] = (starts, ends, [r.order_id for r in group])
    return trips


@dataclass
class RunExtent:
    """What the first pass over a run's records finds: the time span, the orders and the
    deliveries (started ones). Fed a chunk at a time, in any order, so one pass over the
    orders can feed it and the summary's totals together."""

    span: Span = field(default_factory=Span)
    orders: int = 0
    deliveries: int = 0

    def add_many(self, chunk: list[OrderRecord]) -> None:
        self.span.add_many(chunk)
        self.orders += len(chunk)
        self.deliveries += sum(1 for r in chunk if r.started_at is not None)


def run_extent(records: Iterable[OrderRecord]) -> RunExtent:
    """The extent of ``records``, read once a chunk at a time."""
    extent = RunExtent()
    for chunk in chunks(records):
        extent.add_many(chunk)
    return extent


def aggregate_run(
    records: Collection[OrderRecord],
    started_at: float | None,
    throughput_bins: int,
    extent: RunExtent | None = None,
) -> RunAggregate:
    """The report's figures from ``records``, read a chunk at a time: once for their
    ``extent`` unless the caller found it, then once for the figures. The series start at
    ``started_at`` (None: the first recorded time)."""
    if extent is None:
        extent = run_extent(records)
    orders, deliveries = extent.orders, extent.deliveries
    t0, t1 = extent.span.bounds(started_at)
    detailed = deliveries <= DETAIL_LIMIT
    at = instants(t0, t1, SERIES_POINTS)
    flight, depth = IntervalCounts(at), IntervalCounts(at)
    rate = RateBins(t0, t1, throughput_bins)
    density = {outcome: Occupancy(t0, t1, DENSITY_BINS) for outcome in OUTCOMES}
    waits, trips = LatencySketch(), LatencySketch()
    # (-seconds, order, start, outcome): the slowest sort first
    slowest: Smallest[tuple[float, str, float, str]] = Smallest(SLOWEST_LISTED)
    failures: Smallest[tuple[str, int, str]] = Smallest(MAX_LISTED)
    kept: list[OrderRecord] = []
    for chunk in chunks(records):
        add_trips(flight, chunk)
        add_waits(depth, chunk)
        rate.add_many(delivered_times(chunk))
        add_latencies(chunk, waits, trips)
        failures.add_many(
            [
                (r.order_id, r.attempts, r.reason or "(no reason recorded)")
                for r in chunk
                if r.state is OrderState.FAILED
            ]
        )
        started = [r for r in chunk if r.started_at is not None]
        if detailed:
            kept.extend(started)
            continue
        for outcome, (starts, ends, ids) in _trips_by_outcome(started, t1).items():
            density[outcome].add_many(starts, ends)
            if outcome in ("delivered", "failed"):  # finished trips only
                trip = zip(starts, ends, ids, strict=True)
                candidates = ((s - e, i, s - t0, outcome) for s, e, i in trip)
                slowest.add_many(heapq.nsmallest(SLOWEST_LISTED, candidates))
    return RunAggregate(
        t0=t0,
        t1=t1,
        orders=orders,
        deliveries=deliveries,
        bars=assign_lanes(kept, now=t1) if detailed else None,
        in_flight=flight.series(),
        throughput=rate.series(),
        queue_depth=depth.series(),
        density={} if detailed else {k: v.averages() for k, v in density.items()},
        waits=waits,
        trips=trips,
        slowest=[Trip(order, -negative, start, outcome)
                 for negative, order, start, outcome in slowest.items()],
        failures=failures.items(),
        failed=failures.count,
    )  # fmt: skip
