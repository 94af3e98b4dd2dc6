"""Consuming an SQS queue: one :class:`SqsConsumer` per ``consume()`` call.

Several receivers long-poll; a message is handed out only while a slot of the prefetch
window is free, and its slot is freed once it is settled. Acks are deleted in batches
(``DeleteMessageBatch``) by a thread of their own.

Stopping does not wait for a receiver in the middle of a long poll (up to 20 s): what a
receiver gets after the stop is made visible again at once (``ChangeMessageVisibility``
to 0 s, the minimum the API takes:
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html),
so another consumer can take it. Everything handed out before is settled, and its acks
deleted, before ``run`` returns. Each consumer keeps its own slots, acks and counts, so
a receiver left in a long poll by an earlier ``consume()`` touches nothing of a later one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from courierflow.transports.base import QueuedMessage
from courierflow.transports.sqs_dead_letters import receive_count

log = logging.getLogger(__name__)

#: SQS's limit on entries per batch call
BATCH_SIZE = 10
#: receivers polling at once
RECEIVERS = 4
#: seconds an ack waits for others to share its DeleteMessageBatch call
DELETE_LINGER_S = 0.05
#: seconds a stopping consumer waits for what it handed out to be settled
DRAIN_TIMEOUT_S = 60.0

#: what a consumer does with a message rejected by its handler: (message, requeue)
Reject = Callable[[dict[str, Any], bool], None]


def aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return str(exc)


class _SqsMessage(QueuedMessage):
    def __init__(self, consumer: SqsConsumer, message: dict[str, Any]) -> None:
        self._consumer = consumer
        self._message = message
        self.body = message["Body"].encode()
        self.delivery_count = receive_count(message) - 1

    def ack(self) -> None:
        self._consumer.settle(self._message, "ack")

    def reject(self, requeue: bool) -> None:
        self._consumer.settle(self._message, "requeue" if requeue else "dead-letter")


class SqsConsumer:
    """The receivers, the deleter and the prefetch window of one ``consume()`` call."""

    def __init__(
        self, client: Any, url: str, wait_time_s: int, prefetch: int, reject: Reject
    ) -> None:
        self._client = client
        self._url = url
        self._wait_time_s = wait_time_s
        self._reject = reject
        self._slots = threading.BoundedSemaphore(max(prefetch, BATCH_SIZE))
        self._acks: queue.Queue[str | None] = queue.Queue()
        #: messages handed out and not settled yet
        self._outstanding = 0
        self._settled = threading.Condition()

    def run(self, on_message: Callable[[QueuedMessage], None], stop: threading.Event) -> None:
        """Hand messages to ``on_message`` until ``stop``; then settle what was handed out."""
        deleter = threading.Thread(target=self._delete_loop, daemon=True)
        deleter.start()
        for _ in range(RECEIVERS):
            receiver = threading.Thread(target=self._receive_loop, args=(on_message, stop))
            receiver.daemon = True  # not joined: one may sit in a long poll (module doc)
            receiver.start()
        stop.wait()
        with self._settled:
            if not self._settled.wait_for(lambda: self._outstanding == 0, DRAIN_TIMEOUT_S):
                log.warning(
                    "%d messages unsettled at shutdown; SQS shows them again after their "
                    "visibility timeout",
                    self._outstanding,
                )
        self._acks.put(None)  # the end mark: delete what is acked, then stop
        deleter.join()

    def settle(self, message: dict[str, Any], action: str) -> None:
        """Ack (deleted in a batch, its slot freed then), requeue or dead-letter."""
        if action == "ack":
            self._acks.put(message["ReceiptHandle"])
        else:
            try:
                self._reject(message, action == "requeue")
            except (ClientError, BotoCoreError) as exc:
                # Not settled: the message reappears after its visibility timeout. Not lost.
                log.warning("could not %s an SQS message: %s", action, aws_error(exc))
            self._slots.release()
        self._handed_back(1)

    def _handed_back(self, n: int) -> None:
        with self._settled:
            self._outstanding -= n
            self._settled.notify_all()

    def _receive_loop(
        self, on_message: Callable[[QueuedMessage], None], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            for _ in range(BATCH_SIZE):  # room for a full batch before asking for one
                while not self._slots.acquire(timeout=0.5):
                    if stop.is_set():
                        return
            try:
                got = self._client.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=BATCH_SIZE,
                    WaitTimeSeconds=self._wait_time_s,
                    AttributeNames=["ApproximateReceiveCount"],
                    MessageAttributeNames=["All"],
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("ReceiveMessage failed: %s; retrying", aws_error(exc))
                got = {}
                stop.wait(1.0)
            messages = got.get("Messages") or []
            for _ in range(BATCH_SIZE - len(messages)):
                self._slots.release()
            with self._settled:  # counted before the stop is looked at: run() waits for them
                self._outstanding += len(messages)
            if stop.is_set():
                self._make_visible(messages)
                return
            for message in messages:
                on_message(_SqsMessage(self, message))

    def _make_visible(self, messages: list[dict[str, Any]]) -> None:
        """Give back messages received after the stop, for another consumer at once."""
        if messages:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)
            ]
            try:
                self._client.change_message_visibility_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not give back %d messages: %s", len(messages), aws_error(exc))
        for _ in messages:
            self._slots.release()
        self._handed_back(len(messages))

    def _delete_loop(self) -> None:
        """Delete acked messages with DeleteMessageBatch, up to 10 per call."""
        done = False
        while not done:
            batch: list[str] = []
            handle = self._acks.get()
            while handle is not None:
                batch.append(handle)
                if len(batch) == BATCH_SIZE:
                    break
                try:
                    handle = self._acks.get(timeout=DELETE_LINGER_S)
                except queue.Empty:
                    break
            done = handle is None
            if batch:
                self._delete_batch(batch)

    def _delete_batch(self, handles: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            result = self._client.delete_message_batch(QueueUrl=self._url, Entries=entries)
            failed = result.get("Failed") or []
            if failed:
                log.warning("%d deletes failed; those messages come back later", len(failed))
        except (ClientError, BotoCoreError) as exc:
            # Not deleted: the messages reappear after their visibility timeout. Not lost.
            log.warning("DeleteMessageBatch failed: %s", aws_error(exc))
        finally:
            for _ in handles:
                self._slots.release()
