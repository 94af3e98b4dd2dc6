"""What every RabbitMQ client of courierflow declares and sends, written once.

Topology (declared idempotently by every client, blocking or asynchronous):
- ``QUEUE``: a durable quorum queue. Quorum queues persist every message on disk before
  confirming it and count redeliveries, so ``x-delivery-limit`` stops a poison message
  from looping forever; both are what "nothing lost" needs.
- ``QUEUE.dlx`` -> ``QUEUE.dlq``: where rejected and over-delivered messages go.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
from pika.spec import BasicProperties

from courierflow.transports.base import OutgoingMessage

#: deliveries of one message before the broker dead-letters it (poison messages)
MAX_DELIVERIES = 5
#: message header that carries the order id
ORDER_ID_HEADER = "order_id"
#: pika's answers to credentials (or a virtual host) the broker refused: retrying the
#: same settings cannot help
CREDENTIALS_REFUSED = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)


def queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{queue}.dlx",
        "x-dead-letter-routing-key": queue,
        "x-delivery-limit": MAX_DELIVERIES,
    }


def topology(queue: str) -> list[tuple[str, dict[str, Any]]]:
    """The declarations, in order, as (channel method, keyword arguments).

    The same names and arguments serve pika's blocking channel and its asynchronous one
    (which takes a ``callback`` besides), so both declare exactly the same topology.
    """
    return [
        ("exchange_declare", {"exchange": f"{queue}.dlx", "exchange_type": "direct",
                              "durable": True}),
        ("queue_declare", {"queue": f"{queue}.dlq", "durable": True}),
        ("queue_bind", {"queue": f"{queue}.dlq", "exchange": f"{queue}.dlx",
                        "routing_key": queue}),
        ("queue_declare", {"queue": queue, "durable": True,
                           "arguments": queue_arguments(queue)}),
    ]  # fmt: skip


def message_properties(message: OutgoingMessage) -> BasicProperties:
    return BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        message_id=message.message_id,
        headers={ORDER_ID_HEADER: message.order_id},
    )
