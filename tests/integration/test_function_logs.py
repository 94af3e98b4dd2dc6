"""On the local stack, the functions' logs (`courierflow lambda logs`, the files under
``$COURIERFLOW_HOME/lambda/logs/``) carry Powertools-shaped log lines and CloudWatch EMF
records, inside each invocation's START ... END block, as CloudWatch Logs would hold them."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from courierflow.local import stack
from tests.stackfixtures import running_stack, upload_and_follow, wait_until, write_orders
from tests.unit.test_logs_and_metrics import BASE_KEYS, CONTEXT_KEYS, TIMESTAMP, emf_errors

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ORDERS = 6
#: every order invoked twice by the manager: one delivery and one skipped duplicate each
OPTIONS = stack.StackOptions(fleet=4, time_scale=0.005, duplicate_rate=1.0, stuck_after_s=30)


@dataclasses.dataclass
class Block:
    """One invocation in a function's log."""

    request_id: str
    docs: list[dict[str, Any]]
    report: str

    @property
    def records(self) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if "level" in doc]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if "_aws" in doc]


def blocks(path: Path) -> Iterator[Block]:
    """The invocations of a function's log, each with its JSON lines and REPORT line."""
    text = path.read_text(errors="replace") if path.exists() else ""
    pattern = r"START RequestId: (\S+) [^\n]*\n(.*?)END RequestId: \1\n(REPORT [^\n]*)\n"
    for match in re.finditer(pattern, text, re.S):
        lines = [line for line in match[2].splitlines() if line.startswith("{")]
        yield Block(match[1], [json.loads(line) for line in lines], match[3])


def metric_sum(path: Path, name: str) -> float:
    return sum(doc.get(name, 0) for block in blocks(path) for doc in block.metrics)


def test_function_logs_carry_powertools_keys_and_emf_records(tmp_path: Path, amqp_url: str) -> None:
    csv_path = tmp_path / "orders.csv"
    ids = write_orders(csv_path, ORDERS)
    with csv_path.open("a") as f:
        f.write(",nobody,nowhere,parcel,1\n")  # no order id: rejected
    with running_stack(tmp_path / "home", amqp_url, OPTIONS) as info:
        summary = upload_and_follow(info, csv_path)
        logs = Path(info.home) / "lambda" / "logs"
        delivery_log, publisher_log = (
            logs / "lambda_delivery.log",
            logs / "lambda_order_publisher.log",
        )
        wait_until(
            lambda: (
                metric_sum(delivery_log, "DuplicatesSkipped") >= ORDERS
                and metric_sum(publisher_log, "OrdersPublished") >= ORDERS
            ),
            30,
            "every duplicate invocation and the publisher's metrics in the logs",
        )
    assert (summary.published, summary.rejected, summary.delivered) == (ORDERS, 1, ORDERS)

    deliveries = list(blocks(delivery_log))
    assert len(deliveries) == 2 * ORDERS
    assert all(block.records for block in deliveries), "a delivery logged nothing"
    assert {"Init Duration" in block.report for block in deliveries} == {True, False}
    # the publisher's invocations: the upload, then the rejects report (ignored, silent)
    publishes = [block for block in blocks(publisher_log) if block.docs]
    assert len(publishes) == 1
    for block in deliveries + publishes:
        # cold start: the environment's first invocation, the one whose REPORT has an Init
        cold = "Init Duration" in block.report
        for record in block.records:
            assert set(record) >= BASE_KEYS | CONTEXT_KEYS, record
            assert record["function_request_id"] == block.request_id
            assert record["cold_start"] is cold
            assert record["service"] == "courierflow"
            assert TIMESTAMP.fullmatch(record["timestamp"])
        for doc in block.metrics:
            assert emf_errors(doc) == [], doc
            assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "courierflow"

    order_lines = [r for b in deliveries for r in b.records]
    assert {r["order_id"] for r in order_lines} == set(ids)
    assert all(r["function_name"] == "lambda_delivery" for r in order_lines)
    assert metric_sum(delivery_log, "DeliveriesCompleted") == ORDERS
    assert metric_sum(delivery_log, "DuplicatesSkipped") == ORDERS
    durations = [
        d["DeliveryDuration"] for b in deliveries for d in b.metrics if "DeliveryDuration" in d
    ]
    assert len(durations) == ORDERS and all(d > 0 for d in durations)
    assert metric_sum(publisher_log, "OrdersPublished") == ORDERS
    assert metric_sum(publisher_log, "OrdersRejected") == 1
