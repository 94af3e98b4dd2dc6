"""The DynamoDB ledger's conditional writes on moto (in process): every "someone got there
first" path, and errors converted at the edge."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from courierflow.errors import LedgerError
from courierflow.ledger import dynamodb_table
from courierflow.ledger.base import ClaimResult, FileState
from courierflow.ledger.dynamodb import (
    OPEN_INDEX,
    OPEN_SHARDS,
    DynamoDBLedger,
    open_shard,
    table_definition,
)
from courierflow.orders import OrderState

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SOURCE = "s3://uploads/orders.csv"


@pytest.fixture
def ledger() -> Iterator[DynamoDBLedger]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition("ledger"))
        yield DynamoDBLedger("ledger", client=client)


def test_second_claim_while_the_first_holds_it_gets_in_progress(ledger: DynamoDBLedger) -> None:
    ledger.add_queued(["o-1"], SOURCE, now=100.0)
    assert ledger.claim_delivery("o-1", "req-a", lease_s=30, now=101.0) is ClaimResult.CLAIMED
    assert ledger.claim_delivery("o-1", "req-b", lease_s=30, now=102.0) is ClaimResult.IN_PROGRESS
    record = ledger.get_order("o-1")
    assert record is not None
    assert (record.state, record.request_id, record.duplicates) == (
        OrderState.DELIVERING, "req-a", 1,
    )  # fmt: skip


def test_claim_after_delivery_gets_already_delivered(ledger: DynamoDBLedger) -> None:
    ledger.claim_delivery("o-2", "req-a", lease_s=30, now=100.0)
    assert ledger.complete_delivery("o-2", "req-a", delay_s=3, started=100.0, finished=103.0)
    assert ledger.claim_delivery("o-2", "req-b", 30, now=104.0) is ClaimResult.ALREADY_DELIVERED
    assert ledger.add_queued(["o-2"], SOURCE, now=105.0) == []  # a re-upload never re-delivers
    record = ledger.get_order("o-2")
    assert record is not None and record.state is OrderState.DELIVERED


def test_expired_claim_is_reclaimed_and_the_stale_attempt_cannot_complete(
    ledger: DynamoDBLedger,
) -> None:
    ledger.claim_delivery("o-3", "req-old", lease_s=10, now=100.0)
    assert ledger.claim_delivery("o-3", "req-new", lease_s=10, now=111.0) is ClaimResult.CLAIMED
    assert not ledger.complete_delivery("o-3", "req-old", 1, started=100.0, finished=112.0)
    assert ledger.complete_delivery("o-3", "req-new", 1, started=111.0, finished=112.0)
    record = ledger.get_order("o-3")
    assert record is not None
    assert (record.state, record.request_id, record.attempts) == (
        OrderState.DELIVERED,
        "req-new",
        2,
    )


def test_released_claim_can_be_taken_again_and_keeps_the_reason(ledger: DynamoDBLedger) -> None:
    ledger.claim_delivery("o-4", "req-a", 30, now=100.0)
    ledger.release_claim("o-4", "req-other", "not mine", now=101.0)  # not the holder: no-op
    assert ledger.claim_delivery("o-4", "req-b", 30, now=102.0) is ClaimResult.IN_PROGRESS
    ledger.release_claim("o-4", "req-a", "courier crashed", now=103.0)
    record = ledger.get_order("o-4")
    assert record is not None
    assert (record.state, record.reason) == (OrderState.DISPATCHED, "courier crashed")
    assert ledger.claim_delivery("o-4", "req-c", 30, now=104.0) is ClaimResult.CLAIMED


def test_file_is_begun_once_and_can_be_forgotten(ledger: DynamoDBLedger) -> None:
    assert ledger.begin_file("uploads", "orders.csv", "etag1", now=1.0)
    assert not ledger.begin_file("uploads", "orders.csv", "etag1", now=2.0)
    assert ledger.begin_file("uploads", "orders.csv", "etag2", now=3.0)  # a new version
    ledger.finish_file("uploads", "orders.csv", "etag2", FileState.DONE,
                       rows=3, published=2, rejected=1, now=4.0)  # fmt: skip
    latest = ledger.get_file("uploads", "orders.csv")
    assert latest is not None
    assert (latest.etag, latest.state, latest.rejected) == ("etag2", FileState.DONE, 1)
    ledger.forget_file("uploads", "orders.csv", "etag1")
    assert ledger.begin_file("uploads", "orders.csv", "etag1", now=5.0)


def test_dispatch_never_moves_an_order_backwards_and_stuck_finds_old_ones(
    ledger: DynamoDBLedger,
) -> None:
    ledger.add_queued(["a", "b", "c"], SOURCE, now=100.0)
    ledger.add_queued(["z"], "s3://uploads/other.csv", now=100.0)
    ledger.claim_delivery("a", "req", 30, now=101.0)
    ledger.mark_dispatched({"a": 102.0, "b": 102.0})  # a is delivering: it stays so
    states = {r.order_id: r.state for r in ledger.orders(SOURCE)}
    assert states == {"a": OrderState.DELIVERING, "b": OrderState.DISPATCHED,
                      "c": OrderState.QUEUED}  # fmt: skip
    stuck = ledger.stuck([OrderState.QUEUED, OrderState.DISPATCHED], older_than=150.0)
    assert sorted(r.order_id for r in stuck[:2]) == ["c", "z"]  # oldest first
    assert stuck[2].order_id == "b"
    ledger.touch(["c"], now=200.0)
    assert "c" not in {r.order_id for r in ledger.stuck([OrderState.QUEUED], older_than=150.0)}
    ledger.mark_failed("c", "gave up", now=201.0)
    assert ledger.counts(SOURCE)[OrderState.FAILED] == 1


def _indexed(ledger: DynamoDBLedger) -> set[str]:
    """The order keys the open-orders index holds, every shard read."""
    return {
        item["pk"]["S"]
        for shard in range(OPEN_SHARDS)
        for item in ledger.client.query(
            TableName=ledger.table,
            IndexName=OPEN_INDEX,
            KeyConditionExpression="open_shard = :k",
            ExpressionAttributeValues={":k": {"S": str(shard)}},
        )["Items"]
    }


def test_the_open_orders_index_holds_exactly_the_orders_not_yet_finished(
    ledger: DynamoDBLedger,
) -> None:
    """Every way into an open state files the order; delivered and failed take it out;
    a failed order queued again comes back."""
    ids = [f"o-{i:03d}" for i in range(40)]
    ledger.add_queued(ids, SOURCE, now=1.0)
    assert _indexed(ledger) == {f"ORDER#{o}" for o in ids}
    assert len({open_shard(o) for o in ids}) > OPEN_SHARDS // 2  # spread over the shards

    ledger.mark_dispatched({"o-000": 2.0, "o-001": 2.0, "never-queued": 2.0})
    ledger.claim_delivery("o-001", "req-1", 30, now=3.0)
    ledger.complete_delivery("o-001", "req-1", 1, started=3.0, finished=4.0)
    ledger.claim_delivery("o-002", "req-2", 30, now=3.0)
    ledger.release_claim("o-002", "req-2", "throttled", now=4.0)
    ledger.mark_failed("o-003", "gave up", now=5.0)
    assert _indexed(ledger) == {f"ORDER#{o}" for o in ids if o not in ("o-001", "o-003")} | {
        "ORDER#never-queued"
    }

    ledger.add_queued(["o-003"], SOURCE, now=6.0)  # a re-upload queues the failed one again
    assert "ORDER#o-003" in _indexed(ledger)
    assert {r.order_id for r in ledger.stuck([OrderState.QUEUED], older_than=10.0)} == {
        o for o in ids if o not in ("o-000", "o-001", "o-002")
    }


def test_stuck_reads_the_index_not_the_table_and_trusts_only_the_items(
    ledger: DynamoDBLedger,
) -> None:
    """No Scan, however many orders are finished; and an index entry that lags its item
    (an order delivered after the index was read) is not reported."""
    ledger.add_queued([f"done-{i}" for i in range(50)] + ["late", "open"], SOURCE, now=1.0)
    for i in range(50):
        ledger.claim_delivery(f"done-{i}", f"r{i}", 30, now=2.0)
        ledger.complete_delivery(f"done-{i}", f"r{i}", 1, started=2.0, finished=3.0)
    calls = _count_calls(ledger)

    def deliver_late(**_: Any) -> None:  # after the index is read, before the items are
        if ledger.get_order("late").state is OrderState.QUEUED:  # type: ignore[union-attr]
            ledger.claim_delivery("late", "r-late", 30, now=4.0)

    ledger.client.meta.events.register("before-call.dynamodb.BatchGetItem", deliver_late)
    stuck = ledger.stuck([OrderState.QUEUED], older_than=10.0)

    assert [r.order_id for r in stuck] == ["open"]
    assert calls["Scan"] == 0 and calls["Query"] == OPEN_SHARDS and calls["BatchGetItem"] == 1


def test_a_missing_table_is_a_ledger_error_not_a_botocore_error() -> None:
    with mock_aws():
        ledger = DynamoDBLedger("no-such-table", client=boto3.client("dynamodb", "us-east-1"))
        with pytest.raises(LedgerError, match="no-such-table"):
            ledger.add_queued(["o"], SOURCE, now=1.0)
        with pytest.raises(LedgerError):
            ledger.orders()


def _count_calls(ledger: DynamoDBLedger) -> Counter[str]:
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    ledger.client.meta.events.register("before-call.dynamodb.*", count)
    return calls


def test_add_queued_makes_far_fewer_calls_than_orders(ledger: DynamoDBLedger) -> None:
    """One conditional write per order cost ~2 ms of client CPU each: 1,000 new orders
    take 10 reads of 100 keys and 40 writes of 25 items instead of 1,000 calls; the
    running counts add two updates per call (the file's name, the new orders' count)."""
    ids = [f"o-{i:04d}" for i in range(1000)]
    ledger.add_queued(ids[:10], SOURCE, now=1.0)  # a re-upload: known orders
    calls = _count_calls(ledger)

    assert ledger.add_queued(ids, SOURCE, now=2.0) == ids

    assert calls == {"BatchGetItem": 10, "BatchWriteItem": 40, "UpdateItem": 10 + 2}
    assert ledger.counts(SOURCE)[OrderState.QUEUED] == 1000


def test_an_order_delivered_between_the_read_and_the_write_is_left_alone(
    ledger: DynamoDBLedger,
) -> None:
    """A re-upload while the file's orders are in flight: the order was being delivered
    when add_queued read it, and is delivered before add_queued writes."""
    ledger.add_queued(["o-1", "o-2"], SOURCE, now=1.0)
    ledger.claim_delivery("o-2", "req-a", 30, now=2.0)
    done: list[bool] = []

    def deliver_now(**_: Any) -> None:
        if not done:
            done.append(ledger.complete_delivery("o-2", "req-a", 1, started=2.0, finished=3.0))

    ledger.client.meta.events.register("after-call.dynamodb.BatchGetItem", deliver_now)

    assert ledger.add_queued(["o-1", "o-2", "o-3"], SOURCE, now=4.0) == ["o-1", "o-3"]

    assert done == [True]
    record = ledger.get_order("o-2")
    assert record is not None and record.state is OrderState.DELIVERED


def test_unprocessed_keys_and_items_are_sent_again(
    ledger: DynamoDBLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DynamoDB hands back part of a batch when throttled: here the first answer of each
    batch call claims half its work was not done."""
    monkeypatch.setattr(dynamodb_table, "BATCH_BACKOFF_BASE_S", 0.0)
    throttled: set[str] = set()

    def throttle_once(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in throttled or not model.name.startswith("Batch"):
            return
        throttled.add(model.name)
        if model.name == "BatchGetItem":
            parsed["Responses"]["ledger"] = []
            parsed["UnprocessedKeys"] = {"ledger": _sent[-1]["RequestItems"]["ledger"]}
        else:
            parsed["UnprocessedItems"] = {"ledger": _sent[-1]["RequestItems"]["ledger"][:12]}

    _sent: list[dict[str, Any]] = []
    ledger.client.meta.events.register(
        "provide-client-params.dynamodb.*", lambda params, **_: _sent.append(params)
    )
    ledger.client.meta.events.register("after-call.dynamodb.*", throttle_once)
    calls = _count_calls(ledger)
    ids = [f"o-{i}" for i in range(25)]

    assert ledger.add_queued(ids, SOURCE, now=1.0) == ids

    assert calls == {"BatchGetItem": 2, "BatchWriteItem": 2, "UpdateItem": 2}  # 2: counts
    assert ledger.counts(SOURCE)[OrderState.QUEUED] == 25


def test_a_batch_throttled_for_good_is_a_ledger_error(
    ledger: DynamoDBLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynamodb_table, "BATCH_BACKOFF_BASE_S", 0.0)

    def never_processed(parsed: dict[str, Any], **_: Any) -> None:
        parsed["UnprocessedItems"] = {"ledger": [{"PutRequest": {"Item": {"pk": {"S": "x"}}}}]}

    ledger.client.meta.events.register("after-call.dynamodb.BatchWriteItem", never_processed)
    calls = _count_calls(ledger)

    with pytest.raises(LedgerError, match="unprocessed"):
        ledger.add_queued(["o-1"], SOURCE, now=1.0)
    assert calls["BatchWriteItem"] == dynamodb_table.MAX_BATCH_ATTEMPTS
