"""Dead-lettered orders as `courierflow dlq` shows them: the broker's reason beside the
ledger's, and putting them back on the queue after a fix."""

from __future__ import annotations

from dataclasses import dataclass

from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.transports.base import Transport, open_transport


@dataclass(frozen=True)
class DeadLetterView:
    """One dead-lettered order, with what each side knows of it."""

    order_id: str
    #: why the broker dead-lettered the message
    broker_reason: str
    #: how many times the message was handed out
    attempts: int
    #: the ledger's reason for the order ("" when the ledger has none or no such order)
    ledger_reason: str


def open_queue(settings: Settings) -> Transport:
    """The order queue ``settings`` name (the local stack's SQS when they point at it)."""
    sqs_client = settings.aws_client("sqs") if settings.local_aws_url else None
    return open_transport(settings.queue_url, settings.queue, settings.region, sqs_client)


def list_dead_letters(settings: Settings) -> list[DeadLetterView]:
    """The dead letters of the order queue, each with the ledger's reason for its order.

    Raises:
        TransportError: the queue cannot be reached (the ledger is not opened then).
    """
    transport = open_queue(settings)
    try:
        letters = transport.dead_letters()
    finally:
        transport.close()
    ledger = open_ledger(settings.ledger_url)
    try:
        views = []
        for letter in letters:
            record = ledger.get_order(letter.order_id)
            reason = record.reason if record else ""
            views.append(DeadLetterView(letter.order_id, letter.reason, letter.attempts, reason))
        return views
    finally:
        ledger.close()


def replay_dead_letters(settings: Settings, order_id: str | None = None) -> int:
    """Put the dead letters (all, or ``order_id``'s) back on the queue; how many moved."""
    transport = open_queue(settings)
    try:
        return transport.replay_dead_letters(order_id)
    finally:
        transport.close()
