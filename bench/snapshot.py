"""Dashboard snapshot: what one ``/api/snapshot`` costs with a million orders in the
SQLite ledger (issue #15's target: under 100 ms at p99).

Fills a fresh ledger with ``ORDERS`` orders of one file, as a run leaves them (nearly
all delivered, one thousand a second, the last few still waiting or on the road), then
times the dashboard's data path (``Ledger.activity`` and ``snapshot_of``) ``POLLS``
times, and once the whole-ledger read the dashboard made before (``build_snapshot`` on
every record) for comparison. What keeping the figures costs the writers is measured
beside it: process CPU per order for the writes of a whole life (queued, dispatched,
claimed, delivered) with the figures' triggers and without them. Standalone:
``python -m bench.snapshot [ORDERS] [POLLS]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState
from courierflow.report.dashboard import (
    LATEST_EVENTS,
    THROUGHPUT_WINDOW_S,
    build_snapshot,
    snapshot_of,
)

#: when the benchmark's run begins (deliveries finish 1,000 a second from T0 + 3)
T0 = 1_700_000_000.0
#: rows written per transaction while filling
FILL_BATCH = 10_000
SOURCE = "s3://bench/orders.csv"


def fill(ledger: SQLiteLedger, n: int) -> float:
    """``n`` orders of one file as a run leaves them, written by the ledger's own
    statements (its triggers fire for every row); returns a time just after the last
    delivery. Deliveries are written 10,000 to a transaction, not two per order."""
    ids = [f"O-{i:07d}" for i in range(n)]
    ledger.add_queued(ids, SOURCE, T0)
    ledger.mark_dispatched({order_id: T0 + 1 for order_id in ids[: n - 10]})
    conn = ledger._conn()
    for start in range(0, n - 20, FILL_BATCH):
        batch = ids[start : min(start + FILL_BATCH, n - 20)]
        conn.execute("BEGIN")
        conn.executemany(
            "UPDATE orders SET state = ?, started_at = ?, finished_at = ?, updated_at = ?"
            " WHERE order_id = ?",
            [
                (OrderState.DELIVERED.value, T0 + 2 + i / 1000, T0 + 3 + i / 1000,
                 T0 + 3 + i / 1000, order_id)
                for i, order_id in enumerate(batch, start)
            ],
        )  # fmt: skip
        conn.execute("COMMIT")
    for i, order_id in enumerate(ids[n - 20 : n - 15]):
        ledger.claim_delivery(order_id, f"r{i}", 60, T0 + 3 + n / 1000)
    return T0 + 3.5 + n / 1000


def write_cost_us(with_figures: bool, orders: int = 3000) -> float:
    """Process CPU per order, in microseconds, of every write of an order's life."""
    with tempfile.TemporaryDirectory(prefix="courierflow-snapshot-bench-") as work:
        ledger = SQLiteLedger(Path(work) / "ledger.db")
        ids = [f"O-{i:07d}" for i in range(orders)]
        conn = ledger._conn()
        if not with_figures:
            triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in triggers.fetchall():
                conn.execute(f"DROP TRIGGER {name}")
        started = time.process_time()
        for start in range(0, orders, 100):  # as the publisher records them
            ledger.add_queued(ids[start : start + 100], SOURCE, T0)
        ledger.mark_dispatched(dict.fromkeys(ids, T0 + 1))
        for order_id in ids:
            ledger.claim_delivery(order_id, "r", 60, T0 + 2)
            ledger.complete_delivery(order_id, "r", 1.0, T0 + 2, T0 + 3)
        cost = (time.process_time() - started) / orders * 1e6
        ledger.close()
    return round(cost, 1)


def run(orders: int, polls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="courierflow-snapshot-bench-") as work:
        ledger = SQLiteLedger(Path(work) / "ledger.db")
        started = time.perf_counter()
        now = fill(ledger, orders)
        fill_s = time.perf_counter() - started
        times_ms = []
        for i in range(polls):
            at = now + i / polls
            started = time.perf_counter()
            snapshot_of(ledger.activity(at, THROUGHPUT_WINDOW_S, LATEST_EVENTS), at)
            times_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        build_snapshot(ledger.orders(), now)
        whole_read_ms = (time.perf_counter() - started) * 1000
        ledger.close()
    cuts = statistics.quantiles(times_ms, n=100)
    return {
        "orders": orders,
        "polls": polls,
        "fill_s": round(fill_s, 1),
        "snapshot_ms": {
            "p50": round(cuts[49], 3),
            "p99": round(cuts[98], 3),
            "max": round(max(times_ms), 3),
        },
        "whole_ledger_snapshot_ms": round(whole_read_ms, 1),
        "write_cpu_us_per_order": {
            "with_figures": statistics.median(write_cost_us(True) for _ in range(3)),
            "without_figures": statistics.median(write_cost_us(False) for _ in range(3)),
        },
    }


if __name__ == "__main__":
    orders = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    polls = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(json.dumps(run(orders, polls), indent=2))
