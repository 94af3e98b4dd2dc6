"""The SQS transport's dead-letter queue: looked at without taking anything away, and
replayed into the main queue (all of it, or one order's messages).

botocore's errors pass through; :class:`~courierflow.transports.sqs.SQSTransport`
converts them at its edge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from courierflow.transports.base import DeadLetter, OutgoingMessage

#: SQS's limit on messages per receive
RECEIVE_BATCH = 10
#: seconds a looked-at dead letter stays hidden from another reader before it is shown again
LOOK_VISIBILITY_S = 30
#: message attribute carrying the order id (and the reason, on dead letters)
ORDER_ID_ATTRIBUTE = "order_id"
REASON_ATTRIBUTE = "courierflow_reason"


def receive_count(message: dict[str, Any]) -> int:
    """How many times SQS handed the message out, this time included."""
    return int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


def _attribute(message: dict[str, Any], name: str, default: str) -> str:
    attrs = message.get("MessageAttributes") or {}
    return str(attrs.get(name, {}).get("StringValue", default))


class DeadLetterQueue:
    """The dead-letter queue at ``url``, read through ``client`` (boto3's SQS client)."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    def _messages(self) -> Iterator[dict[str, Any]]:
        """Every message, each hidden for ``LOOK_VISIBILITY_S`` once received."""
        while True:
            got = self._client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=RECEIVE_BATCH,
                WaitTimeSeconds=0,
                VisibilityTimeout=LOOK_VISIBILITY_S,
                AttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
            messages = got.get("Messages") or []
            if not messages:
                return
            yield from messages

    def _show_again(self, handles: list[str]) -> None:
        for handle in handles:
            self._client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=handle, VisibilityTimeout=0
            )

    def look(self, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters; all of them stay in the queue, visible."""
        letters: list[DeadLetter] = []
        seen: list[str] = []
        for message in self._messages():
            letters.append(
                DeadLetter(
                    _attribute(message, ORDER_ID_ATTRIBUTE, "(no order id)"),
                    _attribute(message, REASON_ATTRIBUTE, "maxReceiveCount"),
                    receive_count(message),
                    message["Body"].encode(),
                )
            )
            seen.append(message["ReceiptHandle"])
            if len(letters) >= limit:
                break
        self._show_again(seen)  # looking must not hide them
        return letters

    def replay(self, order_id: str | None, send: Callable[[OutgoingMessage], object]) -> int:
        """``send`` each dead letter (``order_id``'s only, when given), then delete it;
        returns how many were moved. The others stay, visible again."""
        moved = 0
        skipped: list[str] = []
        for message in self._messages():
            this_id = _attribute(message, ORDER_ID_ATTRIBUTE, "")
            if order_id is not None and this_id != order_id:
                skipped.append(message["ReceiptHandle"])
                continue
            # A new deduplication id: FIFO queues drop a repeat of the original's
            # for 5 minutes, even after it was deleted.
            replay_id = f"order:{this_id}:replay:{message['MessageId']}"
            send(OutgoingMessage(message["Body"].encode(), this_id, replay_id))
            self._client.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
        self._show_again(skipped)
        return moved
