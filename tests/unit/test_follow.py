"""Following a run to its end when the ledger's running counts are off: the orders
themselves decide, instead of the whole stall timeout passing."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from courierflow.ledger.base import FileState
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.local import runner

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def finished_run(path: Path, n: int) -> SQLiteLedger:
    ledger = SQLiteLedger(path)
    ledger.begin_file("b", "orders.csv", "etag", now=T0)
    ids = ledger.add_queued([f"o{i}" for i in range(n)], "s3://b/orders.csv", now=T0)
    for i, order_id in enumerate(ids):
        ledger.claim_delivery(order_id, f"r{i}", 60, now=T0 + 1)
        ledger.complete_delivery(order_id, f"r{i}", 2.0, T0 + 1, T0 + 3)
    ledger.finish_file("b", "orders.csv", "etag", FileState.DONE, rows=n, published=n,
                       rejected=0, now=T0 + 0.5)  # fmt: skip
    return ledger


def test_a_finished_run_whose_counts_are_off_ends_on_the_orders_not_the_stall_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = finished_run(tmp_path / "ledger.db", 5)
    # a claim counted whose order then moved on uncounted: what a process killed between
    # an order's write and its count's leaves on DynamoDB
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute(
            "INSERT INTO order_counts VALUES ('s3://b/orders.csv', 'delivering', 1, 1)"
            " ON CONFLICT DO UPDATE SET n = n + 1"
        )
    assert sum(ledger.counts("s3://b/orders.csv").values()) == 6
    monkeypatch.setattr(runner, "RECOUNT_AFTER_S", 0.5, raising=False)
    monkeypatch.setattr(runner, "POLL_S", 0.05)
    started = time.monotonic()
    summary = runner.follow(ledger, "b", "orders.csv", "etag", T0, stall_timeout_s=30)
    assert time.monotonic() - started < 5
    assert (summary.delivered, summary.lost) == (5, 0)
    assert "running counts of s3://b/orders.csv say 5 of 6 orders finished" in caplog.text


def test_a_run_still_under_way_is_not_cut_short_by_the_recount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = finished_run(tmp_path / "ledger.db", 3)
    ledger.add_queued(["late"], "s3://b/orders.csv", now=T0 + 4)  # not finished
    monkeypatch.setattr(runner, "RECOUNT_AFTER_S", 0.2)
    monkeypatch.setattr(runner, "POLL_S", 0.05)
    started = time.monotonic()
    summary = runner.follow(ledger, "b", "orders.csv", "etag", T0, stall_timeout_s=1.5)
    assert time.monotonic() - started >= 1.5  # waited out the stall timeout
    assert (summary.delivered, summary.lost) == (3, 1)
