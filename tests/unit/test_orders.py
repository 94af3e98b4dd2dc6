"""The order model: messages round-trip, bad messages are refused, states know if final."""

from __future__ import annotations

import dataclasses
import json

import pytest

from courierflow.orders import KNOWN_COLUMNS, Order, OrderState

pytestmark = pytest.mark.unit


def test_the_reader_can_build_orders_positionally_in_this_field_order() -> None:
    # csvreader passes the fields positionally for speed; this pins the order it uses
    assert [f.name for f in dataclasses.fields(Order)] == [
        "order_id", "customer", "address", "items", "quantity",
        "priority", "notes", "extra", "source", "line",
    ]  # fmt: skip


def test_the_known_columns_are_the_order_fields_read_from_csv() -> None:
    assert KNOWN_COLUMNS == (
        "order_id", "customer", "address", "items", "quantity", "priority", "notes",
    )  # fmt: skip


def test_an_order_round_trips_through_its_json_message() -> None:
    order = Order(
        "ORD-1", "Zoë", "1 Rue, Lyon", "lamp", 2, "express", "=1+1",
        {"Gift Wrap": "yes"}, "s3://b/k.csv", 7,
    )  # fmt: skip
    body = order.to_json()
    assert json.loads(body)["customer"] == "Zoë"
    assert "Zoë".encode() in body  # not \\u-escaped
    assert Order.from_message(body) == order
    assert Order.from_message(body.decode()) == order
    assert Order.from_message(order.to_message()) == order


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("[]", "not a JSON object"),
        ({"customer": "x"}, "no order_id"),
        ({"order_id": "  "}, "no order_id"),
        ({"order_id": "A", "quantity": 0}, "not a positive integer"),
        ({"order_id": "A", "quantity": True}, "not a positive integer"),
        ({"order_id": "A", "quantity": "2"}, "not a positive integer"),
        ({"order_id": "A", "extra": ["x"]}, "extra is not an object"),
    ],
)
def test_a_message_that_is_not_a_valid_order_is_refused(
    message: str | dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Order.from_message(message)  # type: ignore[arg-type]


def test_a_minimal_message_gets_the_defaults() -> None:
    order = Order.from_message(b'{"order_id": "A"}')
    assert (order.quantity, order.extra, order.line, order.source) == (1, {}, 0, "")


def test_only_delivered_and_failed_are_final() -> None:
    assert {s for s in OrderState if s.is_final} == {OrderState.DELIVERED, OrderState.FAILED}
    assert OrderState("queued") is OrderState.QUEUED
