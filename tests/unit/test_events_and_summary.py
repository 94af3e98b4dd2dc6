"""Reading AWS events, on-failure records and run figures: pure code, no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from courierflow.functions.events import s3_objects
from courierflow.ledger.base import OrderRecord
from courierflow.orders import Order, OrderState
from courierflow.reconciler import _failure_of
from courierflow.report.summary import peak_concurrency, summarize

pytestmark = pytest.mark.unit
EVENTS = Path(__file__).parent.parent / "events"


def test_every_record_of_a_direct_s3_event_is_read_with_its_key_url_decoded() -> None:
    event = json.loads((EVENTS / "s3_put.json").read_text())
    refs = list(s3_objects(event))
    assert [(r.bucket, r.key, r.etag) for r in refs] == [
        ("courierflow-orders", "incoming/my orders;v2.csv", "2e9019644bb3c49f83a27bce80f6316f"),
        ("courierflow-orders", "second.csv", "abc"),
    ]
    assert all(r.message_id == "" for r in refs)


def test_s3_events_wrapped_in_sqs_records_carry_their_message_id() -> None:
    s3_event = json.loads((EVENTS / "s3_put.json").read_text())
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    event = {
        "Records": [
            {"eventSource": "aws:sqs", "messageId": "m1", "body": json.dumps(s3_event)},
            {"eventSource": "aws:sqs", "messageId": "m2", "body": json.dumps(test_event)},
            {"eventSource": "aws:sqs", "messageId": "m3", "body": "not json"},
        ]
    }
    refs = list(s3_objects(event))
    assert [(r.key, r.message_id) for r in refs] == [
        ("incoming/my orders;v2.csv", "m1"),
        ("second.csv", "m1"),
    ]


def test_an_order_survives_the_round_trip_through_its_message() -> None:
    order = Order(
        "A-1", customer="Zoë", quantity=3, extra={"gift": "yes"}, source="s3://b/k", line=7
    )
    assert Order.from_message(order.to_json()) == order


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"customer": "x"}', b'{"order_id": ""}', b'{"order_id": "A", "quantity": 0}'],
)
def test_messages_that_are_not_orders_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        Order.from_message(body)


def test_on_failure_records_give_the_order_and_lambdas_reason() -> None:
    record = {
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": {"order_id": "A-9"},
        "responsePayload": {"errorMessage": "order A-9: injected failure", "errorType": "X"},
    }
    order_id, reason = _failure_of(json.dumps(record))
    assert order_id == "A-9"
    assert reason == "order A-9: injected failure (after 3 attempts)"
    assert _failure_of("garbage") == ("", "")


def _delivered(order_id: str, start: float, end: float) -> OrderRecord:
    return OrderRecord(order_id, OrderState.DELIVERED, started_at=start, finished_at=end)


def test_peak_concurrency_counts_overlapping_trips_only() -> None:
    records = [
        _delivered("a", 0, 10),
        _delivered("b", 1, 5),
        _delivered("c", 5, 6),  # starts as b ends: not three at once
        _delivered("d", 20, 30),
    ]
    assert peak_concurrency(records) == 2


def test_summary_counts_unfinished_orders_as_lost() -> None:
    records = [
        _delivered("a", 1, 4),
        OrderRecord("b", OrderState.FAILED, reason="x"),
        OrderRecord("c", OrderState.DISPATCHED, duplicates=2),
    ]
    summary = summarize(None, records, started_at=0.0)
    assert (summary.delivered, summary.failed, summary.lost, summary.duplicates) == (1, 1, 1, 2)
    assert summary.makespan_s == 4.0
    assert summary.failures == [("b", "x")] and summary.lost_orders == ["c"]
    assert summary.to_json()["failures"] == [("b", "x")]
