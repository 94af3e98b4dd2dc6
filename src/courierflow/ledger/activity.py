"""The ledger's running figures: what the dashboard, ``status`` and the follow loop poll.

Backends keep them as the orders change (SQLite: tables its triggers update in the
transaction of each change; DynamoDB: counter items updated with ``ADD``), so one poll
costs the same at ten orders as at a million. :func:`activity_of` computes the same
figures from records: it is their definition, and what the contract test holds every
backend to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from courierflow.orders import OrderState

if TYPE_CHECKING:
    from courierflow.ledger.base import OrderRecord

#: states whose orders wait for a delivery to start (with no start time recorded yet)
WAITING_STATES = (OrderState.QUEUED, OrderState.DISPATCHED)

#: (record field, event name) in the order an order goes through them
_EVENT_FIELDS = (
    ("queued_at", OrderState.QUEUED.value),
    ("dispatched_at", OrderState.DISPATCHED.value),
    ("started_at", OrderState.DELIVERING.value),
)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One event of an order's life, as the dashboard lists the latest ones."""

    at: float
    order_id: str
    event: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Activity:
    """The ledger's figures at one moment (of one file, or of all)."""

    #: orders per state, every state present
    counts: dict[OrderState, int]
    #: orders queued or dispatched whose delivery never started: the queue's depth as
    #: the ledger sees it
    waiting: int
    #: the earliest time an order was queued, and the latest an order finished
    first_queued_at: float | None
    last_finished_at: float | None
    #: deliveries that finished in the window's whole seconds (see :func:`in_window`)
    recent_deliveries: int
    #: the latest state changes, newest first
    latest: tuple[StateChange, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def second_of(at: float) -> int:
    """The whole second a time falls in: the unit deliveries are counted by."""
    return int(at // 1)


def in_window(finished_at: float, now: float, window_s: float) -> bool:
    """Whether a delivery finishing at ``finished_at`` counts as recent at ``now``: its
    second is one of the ``window_s`` seconds up to and including ``now``'s."""
    second = second_of(finished_at)
    return second_of(now) - window_s < second <= second_of(now)


def latest_changes(records: Iterable[OrderRecord], limit: int) -> tuple[StateChange, ...]:
    """The ``limit`` most recent state changes, newest first, from the records' times
    (queued, dispatched, delivering, then delivered or failed at ``finished_at``)."""
    events: list[StateChange] = []
    for r in records:
        for attr, name in _EVENT_FIELDS:
            at = getattr(r, attr)
            if at is not None:
                events.append(StateChange(at, r.order_id, name))
        if r.finished_at is not None and r.state.is_final:
            events.append(StateChange(r.finished_at, r.order_id, r.state.value, r.reason))
    events.sort(key=lambda e: (-e.at, e.order_id, e.event))  # ties in a fixed order
    return tuple(events[:limit])


def activity_of(
    records: Iterable[OrderRecord], now: float, window_s: float, latest: int
) -> Activity:
    """The figures of ``records`` at ``now``: one pass over every record."""
    records = list(records)
    counts = dict.fromkeys(OrderState, 0)
    for r in records:
        counts[r.state] += 1
    queued = [r.queued_at for r in records if r.queued_at is not None]
    ends = [r.finished_at for r in records if r.finished_at is not None]
    return Activity(
        counts=counts,
        waiting=sum(1 for r in records if r.state in WAITING_STATES and r.started_at is None),
        first_queued_at=min(queued) if queued else None,
        last_finished_at=max(ends) if ends else None,
        recent_deliveries=sum(
            1
            for r in records
            if r.state is OrderState.DELIVERED
            and r.finished_at is not None
            and in_window(r.finished_at, now, window_s)
        ),
        latest=latest_changes(records, latest),
    )
