"""Deliveries on the road: the start and end of every delivered trip as events in time
order, which is what a sweep needs to find the most trips on the road at once
(:func:`courierflow.report.summary.peak_in_flight`).

A sweep reads the events once and keeps one number, but it needs them sorted. The
SQLite ledger sorts them in SQL and streams them; :func:`trip_events` sorts them here
for records read any other way (a list, DynamoDB's scan), holding each trip's two times
as packed floats (16 bytes a trip) rather than its record.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from courierflow.orders import OrderState

if TYPE_CHECKING:
    from courierflow.ledger.base import OrderRecord

#: the change a trip's start makes to the deliveries on the road
START = 1
#: the change its end makes; sorting (time, change) puts an end before a start at the
#: same instant, so a trip that ends as another starts does not overlap it
END = -1
#: the state of an order whose trip counts (a failed or unfinished one has no whole trip)
TRIP_STATE = OrderState.DELIVERED


def is_trip(record: OrderRecord) -> bool:
    """Whether ``record`` is a whole trip: delivered, with a start and a (non-zero) end."""
    return record.state is TRIP_STATE and record.started_at is not None and bool(record.finished_at)


def trip_events(records: Iterable[OrderRecord]) -> Iterator[tuple[float, int]]:
    """(time, :data:`START` or :data:`END`) of every trip among ``records``, sorted by
    time and, at the same time, ends first."""
    starts, ends = array("d"), array("d")
    for r in records:
        if is_trip(r):
            starts.append(r.started_at or 0.0)
            ends.append(r.finished_at or 0.0)
    # sorted one at a time and packed again: the list sorted() makes holds a float object
    # per time, four times the array's 8 bytes
    starts = array("d", sorted(starts))
    ends = array("d", sorted(ends))
    return heapq.merge(((at, END) for at in ends), ((at, START) for at in starts))
