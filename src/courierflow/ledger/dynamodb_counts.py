"""The DynamoDB ledger's running figures: counter items updated with ``ADD``.

Each source (``s3://bucket/key``) has ``COUNTER_SHARDS`` counter items
``COUNTS#<source>#<n>``. Every state change adds one to its new state's slot and takes
one from its old state's (known from the change itself: ``ReturnValues=ALL_OLD``), in one
``ADD`` update of a shard picked at random, since only the shards' sum means anything;
spreading the updates keeps each counter item under a partition's write rate. A
delivery also adds one to the slot of the second it finished in (``d<second>``), which is
how the throughput window is read without touching an order. The sources ever queued are
kept in a string set on the ``SOURCES`` item.

What this relies on (AWS documentation):

- ``ADD`` on a number attribute is an atomic counter, creating the attribute (and the
  item) at zero when absent: "Use atomic counter operations in DynamoDB",
  https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/example_dynamodb_Scenario_AtomicCounterOperations_section.html
- ``UpdateItem`` with ``ReturnValues=ALL_OLD`` returns the item as it was before the
  update, strongly consistent, with no read capacity consumed: the ``ReturnValues``
  parameter of UpdateItem,
  https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateItem.html

The counter update is a second call after the order's own conditional write: a process
killed between the two leaves the counts off by that change (the orders themselves are
never wrong). A delivery's seconds accumulate on its source's counter items (one
attribute per shard and second of deliveries), which bounds a source at several hours
of continuous deliveries before an item nears DynamoDB's 400 KB.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from courierflow.ledger.activity import WAITING_STATES, Activity, second_of
from courierflow.ledger.dynamodb_table import BATCH_GET_KEYS, Table
from courierflow.orders import OrderState

#: counter items per source; reads sum them
COUNTER_SHARDS = 8
#: the item holding the set of sources ever queued
SOURCES_KEY = "SOURCES"


def slot(state: OrderState | str, started: bool) -> str:
    """The counter attribute of orders in ``state`` whose delivery did (not) start."""
    return f"n_{OrderState(state).value}_{int(started)}"


def _counter_key(source: str, shard: int) -> str:
    return f"COUNTS#{source}#{shard}"


class Counters:
    """The counter items of one ledger table."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def add_source(self, source: str) -> None:
        self.table.update(SOURCES_KEY, "ADD sources :s", None, {":s": {source}})

    def move(self, before: dict[str, Any] | None, state: OrderState, *, started: bool | None = None,
             source: str | None = None, queued_at: float | None = None,
             finished_at: float | None = None) -> None:  # fmt: skip
        """Count one order's change to ``state``: ``before`` is the order as it was (None
        or empty: it did not exist). ``started`` and ``source`` default to the order's
        own; ``queued_at`` and ``finished_at`` are the times the change wrote."""
        old_source = str(before.get("source", "")) if before else ""
        old_started = bool(before and before.get("started_at") is not None)
        new_source = old_source if source is None else source
        new_started = old_started if started is None else started
        old_slot = slot(before["state"], old_started) if before and "state" in before else ""
        new_slot = slot(state, new_started)
        if old_slot and new_source != old_source:
            self.add(old_source, {old_slot: -1})
            old_slot = ""
        changes = (
            {} if old_slot == new_slot else {new_slot: 1, **({old_slot: -1} if old_slot else {})}
        )
        if finished_at is not None and state is OrderState.DELIVERED:
            changes[f"d{second_of(finished_at)}"] = 1
        if changes:  # a re-queue of a queued order changes nothing that is counted
            self.add(new_source, changes, queued_at=queued_at, finished_at=finished_at)

    def add(self, source: str, changes: dict[str, int], *, queued_at: float | None = None,
            finished_at: float | None = None) -> None:  # fmt: skip
        """One ``ADD`` update of a random shard of ``source``'s counters."""
        names = {f"#a{i}": name for i, name in enumerate(changes)}
        values: dict[str, Any] = {f":a{i}": n for i, n in enumerate(changes.values())}
        parts = []
        if queued_at is not None:
            parts.append("first_queued_at = if_not_exists(first_queued_at, :q)")
            values[":q"] = queued_at
        if finished_at is not None:
            parts.append("last_finished_at = :f")
            values[":f"] = finished_at
        expression = ("SET " + ", ".join(parts) + " " if parts else "") + (
            "ADD " + ", ".join(f"#a{i} :a{i}" for i in range(len(changes))) if changes else ""
        )
        key = _counter_key(source, random.randrange(COUNTER_SHARDS))
        self.table.update(key, expression.strip(), None, values, names or None)

    def read(self, source: str | None, seconds: Iterable[int] = ()) -> list[dict[str, Any]]:
        """The counter items of ``source`` (of every source when None), with the state
        slots, the two times and the delivery slots of ``seconds`` only."""
        if source is None:
            item = self.table.get(SOURCES_KEY) or {}
            sources = sorted({"", *item.get("sources", set())})
        else:
            sources = [source]
        keys = [_counter_key(s, shard) for s in sources for shard in range(COUNTER_SHARDS)]
        wanted = [slot(s, started) for s in OrderState for started in (False, True)]
        wanted += ["first_queued_at", "last_finished_at", *(f"d{s}" for s in seconds)]
        names = {f"#p{i}": name for i, name in enumerate(wanted)}
        projection = ", ".join(names)
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), BATCH_GET_KEYS):
            items += self.table.get_many(keys[start : start + BATCH_GET_KEYS], projection, names)
        return items

    def counts(self, source: str | None) -> dict[OrderState, int]:
        return _counts(self.read(source))[0]

    def activity(self, source: str | None, now: float, window_s: float) -> Activity:
        """The figures the counter items hold (the latest changes are not kept on
        DynamoDB: ``latest`` is empty)."""
        seconds = [s for s in range(second_of(now) - int(window_s) + 1, second_of(now) + 1)]
        items = self.read(source, seconds)
        counts, waiting = _counts(items)
        firsts = [i["first_queued_at"] for i in items if "first_queued_at" in i]
        lasts = [i["last_finished_at"] for i in items if "last_finished_at" in i]
        recent = sum(int(i.get(f"d{s}", 0)) for i in items for s in seconds)
        return Activity(
            counts, waiting, min(firsts, default=None), max(lasts, default=None), recent, ()
        )


def _counts(items: list[dict[str, Any]]) -> tuple[dict[OrderState, int], int]:
    counts = dict.fromkeys(OrderState, 0)
    waiting = 0
    for item in items:
        for state in OrderState:
            for started in (False, True):
                n = int(item.get(slot(state, started), 0))
                counts[state] += n
                if state in WAITING_STATES and not started:
                    waiting += n
    return counts, waiting
