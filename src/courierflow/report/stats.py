"""Latency percentiles and bounded lists for the report, in memory that does not grow with
the number of orders.

Percentiles are exact (:func:`statistics.quantiles`, linear interpolation between ranks:
p50 of [1, 2, 3, 4] is 2.5) while a measure has at most :data:`EXACT_SAMPLES` values;
beyond, the values fold into log-spaced buckets :data:`BUCKET_GROWTH` wide, so a
percentile is within about 1% of the exact one and memory stays fixed.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from courierflow.ledger.base import OrderRecord
from courierflow.orders import OrderState
from courierflow.report.series import chunks

#: values a measure keeps one by one before it folds them into buckets
EXACT_SAMPLES = 5_000
#: durations below this (seconds) share bucket 0, reported as 0
SMALLEST_BUCKETED_S = 1e-4
#: each bucket is this much wider than the one before it (1%)
BUCKET_GROWTH = 1.01

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

T = TypeVar("T", bound="SupportsRichComparison")


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles of one measure, in seconds (None when there is no sample)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


def percentiles(values: Iterable[float]) -> Percentiles:
    """Exact p50, p95 and p99 of ``values`` (linear interpolation between ranks)."""
    ordered = sorted(values)
    if not ordered:
        return Percentiles(0, None, None, None)
    if len(ordered) == 1:  # quantiles() needs two points before Python 3.13
        return Percentiles(1, ordered[0], ordered[0], ordered[0])
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return Percentiles(len(ordered), cuts[49], cuts[94], cuts[98])


#: log(value / SMALLEST_BUCKETED_S) times this is a value's bucket, less one
_PER_LOG = 1 / math.log(BUCKET_GROWTH)


def _buckets(values: Iterable[float]) -> list[int]:
    """The bucket of each value: 0 below SMALLEST_BUCKETED_S, then one per 1% of growth."""
    log, scale, low = math.log, 1 / SMALLEST_BUCKETED_S, SMALLEST_BUCKETED_S
    return [1 + int(log(v * scale) * _PER_LOG) if v >= low else 0 for v in values]


def _bucket_value(index: int) -> float:
    """A bucket's geometric middle (0 for bucket 0)."""
    if index == 0:
        return 0.0
    return float(SMALLEST_BUCKETED_S * BUCKET_GROWTH ** (index - 0.5))


class LatencySketch:
    """Percentiles and a histogram of a stream of durations, in bounded memory."""

    def __init__(self, exact_samples: int = EXACT_SAMPLES) -> None:
        self.exact_samples = exact_samples
        self.count = 0
        self.largest = 0.0
        self._values: list[float] | None = []
        self._buckets: Counter[int] = Counter()

    @property
    def exact(self) -> bool:
        """True while every value is kept (percentiles are exact)."""
        return self._values is not None

    def add_many(self, values: list[float]) -> None:
        if not values:
            return
        self.count += len(values)
        self.largest = max(self.largest, max(values))
        if self._values is not None:
            self._values.extend(values)
            if len(self._values) <= self.exact_samples:
                return
            values, self._values = self._values, None
        self._buckets.update(_buckets(values))

    def percentiles(self) -> Percentiles:
        if self._values is not None:
            return percentiles(self._values)
        return Percentiles(self.count, self._ranked(0.50), self._ranked(0.95), self._ranked(0.99))

    def _ranked(self, q: float) -> float:
        """The bucketed value at rank ``q * (count - 1)``."""
        rank = round(q * (self.count - 1))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen > rank:
                return _bucket_value(index)
        return self.largest

    def histogram(self, bins: int, upper: float) -> list[int]:
        """Counts of the values in ``bins`` equal bins of [0, upper]; the last bin also
        holds every value beyond ``upper``."""
        counts = [0] * bins
        width = upper / bins if upper > 0 else 1.0
        pairs = (
            ((v, 1) for v in self._values)
            if self._values is not None
            else ((_bucket_value(i), n) for i, n in self._buckets.items())
        )
        for value, n in pairs:
            counts[min(bins - 1, int(value / width))] += n
        return counts


def add_latencies(chunk: list[OrderRecord], waits: LatencySketch, trips: LatencySketch) -> None:
    """Add the chunk's queue-to-start waits and the trips of its delivered orders."""
    waits.add_many(
        [
            max(0.0, r.started_at - r.queued_at)
            for r in chunk
            if r.started_at is not None and r.queued_at is not None
        ]
    )
    trips.add_many(
        [
            max(0.0, r.finished_at - r.started_at)
            for r in chunk
            if r.state is OrderState.DELIVERED
            and r.started_at is not None
            and r.finished_at is not None
        ]
    )


def latencies(records: Iterable[OrderRecord]) -> dict[str, Percentiles]:
    """Queue-to-start (``started_at - queued_at``) and start-to-end percentiles."""
    waits, trips = LatencySketch(), LatencySketch()
    for chunk in chunks(records):
        add_latencies(chunk, waits, trips)
    return {"queue to start": waits.percentiles(), "start to end": trips.percentiles()}


class Smallest(Generic[T]):
    """The ``limit`` smallest items of a stream (in their natural order), and how many
    there were, holding at most twice ``limit`` items at any time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._items: list[T] = []

    def add_many(self, items: list[T]) -> None:
        self.count += len(items)
        self._items.extend(items)
        if len(self._items) >= 2 * self.limit:
            self._items = heapq.nsmallest(self.limit, self._items)

    def items(self) -> list[T]:
        """The kept items, smallest first."""
        return heapq.nsmallest(self.limit, self._items)
