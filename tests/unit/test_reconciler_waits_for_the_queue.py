"""The reconciler leaves an order the broker still holds alone, and still catches lost ones.

Issue 15: with a million orders in RabbitMQ, orders waited in the queue longer than the
reconciler's deadline, and each of those was dispatched a second time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from courierflow.config import Settings
from courierflow.dead_letters import queue_backlog
from courierflow.errors import TransportError
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.reconciler import Reconciler
from courierflow.transports.base import OutgoingMessage
from courierflow.transports.sqs import SQSTransport
from tests.unit.test_reconciler_waits_for_lambda import RecordingLambda

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

T0 = 1_000_000.0
#: the deadline and the delivery's event age of these tests' reconcilers
STUCK_S, EVENT_AGE_S = 300.0, 3600.0


class Queue:
    """The order queue as the reconciler's probe sees it: ``backlog`` messages, or an
    error to raise."""

    def __init__(self, backlog: int | None) -> None:
        self.backlog = backlog
        self.error: Exception | None = None

    def __call__(self) -> int | None:
        if self.error is not None:
            raise self.error
        return self.backlog


@pytest.fixture
def ledger(tmp_path: Path) -> SQLiteLedger:
    """A ledger with one order queued at T0, its message lost or still waiting."""
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add_queued(["waiting"], "s3://b/orders.csv", T0)
    return ledger


def reconciler_of(ledger: SQLiteLedger, queue: Queue, now: list[float]) -> Reconciler:
    """A reconciler on ``ledger`` and ``queue`` whose clock reads ``now[0]``."""
    return Reconciler(
        ledger,
        RecordingLambda(),
        "lambda_delivery",
        stuck_after_s=STUCK_S,
        dispatched_after_s=EVENT_AGE_S,
        queue_backlog=queue,
        clock=lambda: now[0],
    )


def test_a_queued_order_past_the_deadline_waits_while_the_queue_holds_messages(
    ledger: SQLiteLedger,
) -> None:
    ledger.add_queued(["claim-expired"], "s3://b/orders.csv", T0)
    ledger.claim_delivery("claim-expired", "req-1", lease_s=60, now=T0)
    now = [T0 + 2 * STUCK_S]
    reconciler = reconciler_of(ledger, Queue(backlog=250_000), now)
    report = reconciler.run_once()
    assert "waiting" not in report.redispatched
    assert "claim-expired" in report.redispatched, "a delivering order is not the queue's"
    now[0] += STUCK_S
    assert "waiting" not in reconciler.run_once().redispatched


def test_a_queued_order_is_redispatched_once_the_queue_has_been_empty_for_the_deadline(
    ledger: SQLiteLedger,
) -> None:
    queue = Queue(backlog=1000)
    now = [T0 + 2 * STUCK_S]
    reconciler = reconciler_of(ledger, queue, now)
    assert reconciler.run_once().redispatched == []
    queue.backlog = 0  # the last messages may still be with the manager, unacked
    now[0] += 10
    assert reconciler.run_once().redispatched == []
    queue.backlog = 3  # the manager gave some back: the wait starts again after this
    now[0] += 10
    assert reconciler.run_once().redispatched == []
    queue.backlog = 0
    now[0] += 10
    empty_from = now[0]
    assert reconciler.run_once().redispatched == []
    now[0] = empty_from + STUCK_S - 1
    assert reconciler.run_once().redispatched == []
    now[0] = empty_from + STUCK_S
    assert reconciler.run_once().redispatched == ["waiting"]


def test_a_reconciler_that_never_saw_the_queue_hold_messages_takes_an_empty_one_at_its_word(
    ledger: SQLiteLedger,
) -> None:
    """`courierflow reconcile --every 0`, or the scheduled function's first pass: an order
    whose message was lost from a quiet queue is caught after the ordinary deadline."""
    now = [T0 + STUCK_S + 1]
    reconciler = reconciler_of(ledger, Queue(backlog=0), now)
    assert reconciler.run_once().redispatched == ["waiting"]


def test_a_queued_order_is_redispatched_after_the_long_bound_even_while_the_queue_holds_messages(
    ledger: SQLiteLedger,
) -> None:
    now = [T0 + EVENT_AGE_S]
    reconciler = reconciler_of(ledger, Queue(backlog=250_000), now)
    assert reconciler.run_once().redispatched == []
    now[0] = T0 + EVENT_AGE_S + STUCK_S - 1
    assert reconciler.run_once().redispatched == []
    now[0] = T0 + EVENT_AGE_S + STUCK_S + 1
    assert reconciler.run_once().redispatched == ["waiting"]


def test_an_unknown_backlog_keeps_the_ordinary_deadline_and_is_logged_once(
    ledger: SQLiteLedger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger.add_queued(["lost-later"], "s3://b/orders.csv", T0 + 200)
    queue = Queue(backlog=None)
    queue.error = TransportError("cannot read the depth of orders: connection refused")
    now = [T0 + STUCK_S + 1]
    reconciler = reconciler_of(ledger, queue, now)
    with caplog.at_level(logging.INFO, logger="courierflow.reconciler"):
        assert reconciler.run_once().redispatched == ["waiting"]
        queue.error = None  # the probe answers, but cannot tell
        now[0] = T0 + 200 + STUCK_S + 1
        assert reconciler.run_once().redispatched == ["lost-later"]
    unknown = [r for r in caplog.records if "backlog is unknown" in r.getMessage()]
    assert len(unknown) == 1 and unknown[0].levelno == logging.INFO
    assert "connection refused" in unknown[0].getMessage()


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def test_the_sqs_backlog_counts_the_messages_a_consumer_holds(sqs: Any) -> None:
    """A message received and not yet deleted is the manager's (or, requeued, waits out
    its visibility timeout): its order is still held, though the queue shows it nowhere
    as ready."""
    transport = SQSTransport("sqs://orders", client=sqs)
    transport.publish(OutgoingMessage(b"{}", f"o{i}", f"o{i}") for i in range(3))
    url = sqs.get_queue_url(QueueName="orders")["QueueUrl"]
    assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2)["Messages"]) == 2
    assert (transport.depth(), transport.backlog()) == (1, 3)


def test_the_reconcile_loop_reads_the_queue_its_settings_name(sqs: Any) -> None:
    settings = Settings(queue_url="sqs://orders", queue="orders", region="us-east-1")
    probe = queue_backlog(settings)
    assert probe() == 0
    SQSTransport("sqs://orders", client=sqs).publish([OutgoingMessage(b"{}", "o1", "o1")])
    assert probe() == 1
    assert queue_backlog(Settings(queue_url="ftp://nowhere/orders"))() is None
