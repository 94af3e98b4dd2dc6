"""Dead-lettered orders as `courierflow dlq` shows them: the broker's reason beside the
ledger's, and putting them back on the queue after a fix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from courierflow.config import Settings
from courierflow.errors import ConfigError
from courierflow.ledger.base import open_ledger
from courierflow.transports.base import Transport, open_transport

log = logging.getLogger(__name__)


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


def queue_backlog(settings: Settings) -> Callable[[], int | None]:
    """A probe of the messages the order queue of ``settings`` holds (the reconciler's),
    on one transport for every call. Nothing is left open between calls to go stale:
    SQS's client keeps its HTTP connections and opens new ones after a failure, and
    RabbitMQ's count opens a connection for its one passive declare (one held idle
    between passes would miss its heartbeats). A call that cannot reach the queue raises
    ``TransportError``, which the reconciler takes as unknown. Unknown too (None) when
    the settings name no queue a transport knows."""
    try:
        transport = open_queue(settings)
    except ConfigError as exc:
        log.warning("cannot read the order queue, queued orders are judged by age: %s", exc)
        return lambda: None
    return transport.backlog


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
