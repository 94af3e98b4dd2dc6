"""What a dashboard poll costs the SQLite ledger does not grow with the number of orders:
the figures come from the tables its triggers keep, never from a pass over the orders.

Cost is counted as SQLite's virtual-machine steps (a progress handler called on every
instruction), which grow with every row a statement reads, not as wall-clock time."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.snapshot import fill
from courierflow.ledger import sqlite_schema
from courierflow.ledger.activity import activity_of
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def steps(ledger: SQLiteLedger, read: Callable[[], object]) -> int:
    """SQLite instructions run by ``read`` on the ledger's connection."""
    conn = ledger._conn()
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0  # go on

    conn.set_progress_handler(count, 1)
    try:
        read()
    finally:
        conn.set_progress_handler(None, 1)
    return counted[0]


def test_a_snapshot_reads_as_much_at_50000_orders_as_at_500(tmp_path: Path) -> None:
    small, large = SQLiteLedger(tmp_path / "small.db"), SQLiteLedger(tmp_path / "large.db")
    now_small, now_large = fill(small, 500), fill(large, 50_000)  # just after the last delivery

    def poll(ledger: SQLiteLedger, now: float) -> Callable[[], object]:
        return lambda: (
            ledger.activity(now, 5, 20),
            ledger.counts(),
            ledger.counts("s3://b/orders.csv"),
        )

    cost_small = steps(small, poll(small, now_small))
    cost_large = steps(large, poll(large, now_large))
    whole_pass = steps(large, large.orders)

    print(f"steps per poll: {cost_small} at 500 orders, {cost_large} at 50,000; pass {whole_pass}")
    assert cost_large <= cost_small * 1.1 + 200, (cost_small, cost_large)
    assert cost_large * 100 < whole_pass, "a poll reads a tiny part of what a pass reads"
    # ... and the figures are still those of the orders
    figures = large.activity(now_large, 5, 20)
    expected = activity_of(large.orders(), now_large, 5, 20)
    assert figures == expected
    assert figures.counts[OrderState.DELIVERED] == 49_980
    assert figures.recent_deliveries == expected.recent_deliveries > 3000


def test_a_ledger_file_from_before_the_figures_gets_them_on_open(tmp_path: Path) -> None:
    """A ledger kept from an older release (``up --keep-ledger``) has orders but no
    figures: the first open counts them once, and the triggers take over from there."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(sqlite_schema.SCHEMA)
        conn.executemany(
            "INSERT INTO orders (order_id, state, source, queued_at, finished_at, updated_at)"
            " VALUES (?, ?, 's', 1.0, ?, 2.0)",
            [("a", OrderState.QUEUED.value, None), ("b", OrderState.DELIVERED.value, 2.5),
             ("c", OrderState.DELIVERED.value, 3.5)],
        )  # fmt: skip
    ledger = SQLiteLedger(path)
    assert ledger.counts()[OrderState.DELIVERED] == 2
    assert ledger.claim_delivery("a", "r", 30, 4.0).value == "claimed"
    assert ledger.complete_delivery("a", "r", 1, 4.0, 4.2)
    assert ledger.activity(4.5, 5, 3) == activity_of(ledger.orders(), 4.5, 5, 3)
    assert SQLiteLedger(path).counts()[OrderState.DELIVERED] == 3  # counted once, not twice
