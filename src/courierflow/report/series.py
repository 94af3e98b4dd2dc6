"""A run's time series, counted from its records' timestamps (queued, started, finished) in
fixed-size arrays. Records are read in chunks of :data:`CHUNK`; each chunk is sorted and
measured at the series' instants (bisect), so the work per record is done by C code and
memory holds one chunk at a time: a million orders need no more than ten thousand.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from courierflow.ledger.base import OrderRecord
from courierflow.orders import OrderState

#: points sampled across the run for each time-series chart
SERIES_POINTS = 160
#: records read at a time
CHUNK = 16_384


def chunks(records: Iterable[OrderRecord], size: int = CHUNK) -> Iterator[list[OrderRecord]]:
    """``records`` in lists of at most ``size``."""
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def instants(t0: float, t1: float, points: int) -> list[float]:
    """``points`` evenly spaced instants from ``t0`` to ``t1``."""
    step = (t1 - t0) / max(1, points - 1)
    return [t0 + step * i for i in range(points)]


class IntervalCounts:
    """How many intervals ``[enter, leave)`` hold each of some instants (enter <= t < leave):
    the enter times at or before each instant minus the leave times at or before it."""

    def __init__(self, at: list[float]) -> None:
        self.at = at
        self._entered = [0] * len(at)
        self._left = [0] * len(at)

    def add_many(self, enters: list[float], leaves: list[float]) -> None:
        for counts, times in ((self._entered, sorted(enters)), (self._left, sorted(leaves))):
            for k, t in enumerate(self.at):
                counts[k] += bisect.bisect_right(times, t)

    def series(self) -> list[tuple[float, int]]:
        return [
            (t, e - left) for t, e, left in zip(self.at, self._entered, self._left, strict=True)
        ]


def add_trips(counts: IntervalCounts, chunk: list[OrderRecord]) -> None:
    """Count the trips of ``chunk``: started to finished (never finished: forever)."""
    started = [r for r in chunk if r.started_at is not None]
    counts.add_many(
        [r.started_at for r in started if r.started_at is not None],
        [math.inf if r.finished_at is None else r.finished_at for r in started],
    )


def add_waits(counts: IntervalCounts, chunk: list[OrderRecord]) -> None:
    """Count the waits in the queue of ``chunk``: published to started (never started:
    until the order was given up on, or forever)."""
    queued = [r for r in chunk if r.queued_at is not None]
    counts.add_many(
        [r.queued_at for r in queued if r.queued_at is not None],
        [
            r.started_at
            if r.started_at is not None
            else (r.finished_at if r.finished_at is not None else math.inf)
            for r in queued
        ],
    )


def in_flight_series(
    records: Iterable[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, int]]:
    """Deliveries on the road at ``points`` evenly spaced instants of [t0, t1]."""
    counts = IntervalCounts(instants(t0, t1, points))
    for chunk in chunks(records):
        add_trips(counts, chunk)
    return counts.series()


def queue_depth_series(
    records: Iterable[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, int]]:
    """Estimated queue depth: orders published but not started (queued_at <= t < started_at;
    an order never started leaves when it is given up on, or never)."""
    counts = IntervalCounts(instants(t0, t1, points))
    for chunk in chunks(records):
        add_waits(counts, chunk)
    return counts.series()


class RateBins:
    """Events per second in ``count`` equal bins of [t0, t1] (an event outside goes to the
    first or last bin)."""

    def __init__(self, t0: float, t1: float, count: int) -> None:
        self.t0 = t0
        self.width = (t1 - t0) / count
        self.counts = [0] * count

    def add_many(self, times: Iterable[float]) -> None:
        t0, width, last = self.t0, self.width, len(self.counts) - 1
        for index, n in Counter(int((at - t0) / width) for at in times).items():
            self.counts[min(last, max(0, index))] += n

    def series(self) -> list[tuple[float, float]]:
        """(bin end, events per second) of each bin."""
        w = self.width
        return [(self.t0 + w * (i + 1), n / w) for i, n in enumerate(self.counts)]


def delivered_times(chunk: list[OrderRecord]) -> list[float]:
    """When the delivered orders of ``chunk`` finished."""
    return [
        r.finished_at
        for r in chunk
        if r.state is OrderState.DELIVERED and r.finished_at is not None
    ]


def throughput_series(
    records: Iterable[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, float]]:
    """Deliveries completed per second, in ``points`` equal bins of [t0, t1] (each point
    at its bin's end)."""
    bins = RateBins(t0, t1, points)
    for chunk in chunks(records):
        bins.add_many(delivered_times(chunk))
    return bins.series()


class Occupancy:
    """Time-averaged number of intervals open in each of ``count`` equal bins of [t0, t1]:
    the density of deliveries in flight, exact to the bin.

    The time spent open before ``x``, summed over intervals, is
    ``F(x) = sum(relu(x - start)) - sum(relu(x - end))``; with the starts (and ends) sorted
    and summed cumulatively, ``sum(relu(x - s)) = count(s < x) * x - sum(s < x)``, so F at
    every bin edge costs a bisect, and a bin's mean is the difference of F at its edges
    over its width. Times are taken relative to t0 to keep the sums precise.
    """

    def __init__(self, t0: float, t1: float, count: int) -> None:
        self.t0 = t0
        self.width = (t1 - t0) / count
        self._edges = [self.width * i for i in range(count + 1)]
        self._open_before = [0.0] * (count + 1)

    def add_many(self, starts: list[float], ends: list[float]) -> None:
        for sign, times in ((1.0, starts), (-1.0, ends)):
            ordered = sorted(t - self.t0 for t in times)
            sums = [0.0, *itertools.accumulate(ordered)]
            for k, x in enumerate(self._edges):
                before = bisect.bisect_left(ordered, x)
                self._open_before[k] += sign * (before * x - sums[before])

    def averages(self) -> list[float]:
        f = self._open_before
        return [max(0.0, (b - a) / self.width) for a, b in itertools.pairwise(f)]


@dataclass(slots=True)
class Span:
    """First and last instants worth drawing: the upload start (or the first queue) to the
    last recorded time; fed a chunk of records at a time."""

    first: float = math.inf
    last: float = -math.inf

    def add_many(self, chunk: list[OrderRecord]) -> None:
        for times in (
            [r.queued_at for r in chunk if r.queued_at is not None],
            [r.started_at for r in chunk if r.started_at is not None],
            [r.finished_at for r in chunk if r.finished_at is not None],
            [r.dispatched_at for r in chunk if r.dispatched_at is not None],
        ):
            if times:
                self.first = min(self.first, min(times))
                self.last = max(self.last, max(times))

    def bounds(self, started_at: float | None) -> tuple[float, float]:
        seen = math.isfinite(self.first)
        first = started_at if started_at is not None else (self.first if seen else 0.0)
        if seen:
            first = min(first, self.first)
        last = self.last if seen else first
        return first, max(last, first + 1e-3)


def time_span(records: Iterable[OrderRecord], started_at: float | None) -> tuple[float, float]:
    """First and last instants worth drawing: the upload start (or first queue) to the
    last recorded time."""
    span = Span()
    for chunk in chunks(records):
        span.add_many(chunk)
    return span.bounds(started_at)
