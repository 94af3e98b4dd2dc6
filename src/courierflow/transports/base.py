"""The queue seam: what publisher and manager need from a transport, nothing more.

A transport publishes batches with confirmation and consumes with explicit ack/reject.
Library errors never leave a transport module; callers see ``courierflow.errors``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from courierflow.config import SQS_MAX_WAIT_S


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One order on its way to the queue."""

    body: bytes
    order_id: str
    #: stable id derived from the order, so a re-publish carries the same id
    message_id: str


class QueuedMessage(ABC):
    """One message the queue handed to a consumer (not yet a courier's delivery: the order
    it carries is delivered once the manager invoked the delivery function for it).
    ``ack`` and ``reject`` are safe from any thread."""

    body: bytes
    #: how many times the broker handed this message out before (0 on first delivery)
    delivery_count: int = 0

    @abstractmethod
    def ack(self) -> None:
        """The work is safely handed on: the broker may forget the message."""

    @abstractmethod
    def reject(self, requeue: bool) -> None:
        """Give the message back (``requeue``) or dead-letter it (``requeue=False``)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message as `courierflow dlq list` shows it."""

    order_id: str
    reason: str
    attempts: int
    body: bytes = field(repr=False)


class Transport(ABC):
    """A queue of orders. One instance per process; consumers may ack from worker threads."""

    @abstractmethod
    def publish(self, messages: Iterable[OutgoingMessage]) -> int:
        """Publish every message and return once the broker confirmed them all.

        Publishing is pipelined (many messages in flight). On a lost connection the
        transport reconnects with backoff and re-publishes what was not confirmed, so a
        message may reach the queue twice, never zero times. Returns the number confirmed.

        Raises:
            PublishError: the broker refused messages, or reconnecting failed for good.
        """

    @abstractmethod
    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        """Call ``on_message`` for each message until ``stop`` is set, reconnecting on loss.

        At most ``prefetch`` messages are unacknowledged at once. Messages not acked
        when a connection dies are redelivered by the broker.
        """

    @abstractmethod
    def depth(self) -> int:
        """Messages ready in the queue (not counting those handed out and unacked)."""

    def backlog(self) -> int:
        """Messages the queue still holds for its consumers: the ready ones and, where
        the broker counts them in the same call, those handed out and not yet settled.
        The reconciler leaves queued orders alone while there are any. By default the
        ready ones alone (a RabbitMQ passive declare counts nothing else): the
        reconciler allows for the unsettled ones it cannot see (``courierflow.reconciler``).

        Raises:
            TransportError: the queue cannot be reached.
        """
        return self.depth()

    @abstractmethod
    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Look at dead-lettered messages without removing them."""

    @abstractmethod
    def replay_dead_letters(self, order_id: str | None = None) -> int:
        """Move dead letters (all, or one order's) back to the queue; return how many."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_transport(
    url: str,
    queue: str,
    region: str | None = None,
    sqs_client: Any = None,
    sqs_wait_s: int = SQS_MAX_WAIT_S,
) -> Transport:
    """The transport a queue URL names.

    ``amqp://``/``amqps://``: RabbitMQ, with ``queue`` as the queue name.
    ``sqs://NAME`` or an SQS queue URL (``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``,
    or any ``http(s)://`` endpoint such as moto's): Amazon SQS through ``sqs_client``
    (default: boto3's, in ``region``, else :func:`courierflow.config.resolve_region`),
    whose consumer's receives wait up to ``sqs_wait_s`` seconds (default: 20).
    """
    from courierflow.errors import ConfigError

    if url.startswith(("amqp://", "amqps://")):
        from courierflow.transports.rabbitmq import RabbitMQTransport

        return RabbitMQTransport(url, queue)
    if url.startswith(("sqs://", "https://", "http://")):
        from courierflow.transports.sqs import SQSTransport

        return SQSTransport(url, client=sqs_client, region=region, wait_time_s=sqs_wait_s)
    raise ConfigError(
        f"unknown queue URL {url!r}: use amqp://user:pass@host:5672/vhost for RabbitMQ "
        "or sqs://QUEUE_NAME for SQS (COURIERFLOW_QUEUE_URL)"
    )
