"""Amazon SQS transport: the fully managed alternative to RabbitMQ.

Publishing sends batches of 10 (``SendMessageBatch``) with several calls in flight and
retries the entries SQS reports as failed. Consuming long-polls with several receivers;
a message is deleted only when the consumer acks it (after Lambda accepted the
invocation), backed off with ``ChangeMessageVisibility`` when requeued, and moved to the
dead-letter queue (named ``QUEUE-dlq``) with its reason when rejected. The redrive policy
(``maxReceiveCount``) dead-letters poison messages on its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.backoff import backoff_delay
from courierflow.config import SQS_MAX_WAIT_S, resolve_region
from courierflow.errors import PublishError, TransportError
from courierflow.transports.base import DeadLetter, OutgoingMessage, QueuedMessage, Transport
from courierflow.transports.sqs_dead_letters import (
    ORDER_ID_ATTRIBUTE,
    REASON_ATTRIBUTE,
    DeadLetterQueue,
    receive_count,
)

log = logging.getLogger(__name__)

#: SQS's limit on entries per batch call
BATCH_SIZE = 10
#: batch calls in flight while publishing
PUBLISH_CONCURRENCY = 16
#: attempts at one entry SQS reported as failed
MAX_SEND_ATTEMPTS = 5
#: the longest pause after a first failed SendMessageBatch, doubling per failure up to
#: the largest, in seconds (``backoff_delay``: each pause drawn between zero and that)
SEND_BACKOFF_BASE_S = 0.1
SEND_BACKOFF_MAX_S = 2.0
#: the same for a requeued message's visibility timeout (rounded up to whole seconds):
#: it comes back after a pause that grows with its receives
REQUEUE_BACKOFF_BASE_S = 2.0
REQUEUE_BACKOFF_MAX_S = 300.0
#: receives before SQS itself moves a message to the dead-letter queue
MAX_RECEIVES = 5
#: long polling, as SQS recommends; shorter only when a caller asks (COURIERFLOW_SQS_WAIT_S)
WAIT_TIME_S = SQS_MAX_WAIT_S
#: seconds a received message stays invisible; longer than an Invoke takes
VISIBILITY_TIMEOUT_S = 60
#: receivers polling at once
RECEIVERS = 4
#: seconds an ack waits for others to share its DeleteMessageBatch call
DELETE_LINGER_S = 0.05
#: the queue's counts of messages ready, received and not yet deleted, and delayed
READY = "ApproximateNumberOfMessages"
IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"
DELAYED = "ApproximateNumberOfMessagesDelayed"


def _aws(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return str(exc)


def _chunks(items: Iterator[OutgoingMessage], size: int) -> Iterator[list[OutgoingMessage]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


class _SqsMessage(QueuedMessage):
    def __init__(self, transport: SQSTransport, message: dict[str, Any]) -> None:
        self._transport = transport
        self._message = message
        self.body = message["Body"].encode()
        self.delivery_count = receive_count(message) - 1

    def ack(self) -> None:
        self._transport._settle(self._message, "ack")

    def reject(self, requeue: bool) -> None:
        self._transport._settle(self._message, "requeue" if requeue else "dead-letter")


class SQSTransport(Transport):
    """Orders on an SQS queue (standard or FIFO), with a dead-letter queue beside it."""

    def __init__(
        self,
        url: str,
        client: Any = None,
        wait_time_s: int = WAIT_TIME_S,
        region: str | None = None,
    ) -> None:
        self._client: Any = client or boto3.client(
            "sqs",
            region_name=region or resolve_region(),
            config=Config(max_pool_connections=PUBLISH_CONCURRENCY + RECEIVERS + 8),
        )
        self._spec = url
        self._url = ""
        self._dlq_url = ""
        self.wait_time_s = wait_time_s
        self._slots: threading.BoundedSemaphore | None = None
        self._acks: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()

    # --- queue names and topology --------------------------------------------------------

    @property
    def name(self) -> str:
        if self._spec.startswith("sqs://"):
            return self._spec.removeprefix("sqs://").strip("/")
        return urlparse(self._spec).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    def _urls(self) -> tuple[str, str]:
        """The queue and dead-letter queue URLs, creating both if missing (idempotent)."""
        with self._lock:
            if not self._url:
                self._url, self._dlq_url = self.ensure_queues()
        return self._url, self._dlq_url

    def ensure_queues(self) -> tuple[str, str]:
        """Create the queue with its redrive policy and dead-letter queue; return URLs."""
        fifo = {"FifoQueue": "true"} if self.fifo else {}
        dlq_name = self.name.removesuffix(".fifo") + "-dlq" + (".fifo" if self.fifo else "")
        try:
            dlq_url = self._client.create_queue(QueueName=dlq_name, Attributes=fifo)["QueueUrl"]
            dlq_arn = self._client.get_queue_attributes(
                QueueUrl=dlq_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES})
            url = self._client.create_queue(
                QueueName=self.name,
                Attributes={
                    **fifo,
                    "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S),
                    "RedrivePolicy": redrive,
                },
            )["QueueUrl"]
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(f"cannot set up SQS queue {self.name}: {_aws(exc)}") from None
        return url, dlq_url

    # --- publishing --------------------------------------------------------------------

    def publish(self, messages: Iterable[OutgoingMessage]) -> int:
        url, _ = self._urls()
        confirmed = 0
        in_flight: list[Future[int]] = []
        with ThreadPoolExecutor(PUBLISH_CONCURRENCY, thread_name_prefix="sqs-send") as pool:
            for batch in _chunks(iter(messages), BATCH_SIZE):
                in_flight.append(pool.submit(self._send_batch, url, batch))
                if len(in_flight) >= PUBLISH_CONCURRENCY * 2:  # bound memory, keep pipe full
                    confirmed += in_flight.pop(0).result()
            for future in in_flight:
                confirmed += future.result()
        return confirmed

    def _entry(self, i: int, message: OutgoingMessage) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Id": str(i),
            "MessageBody": message.body.decode(),
            "MessageAttributes": {
                ORDER_ID_ATTRIBUTE: {"DataType": "String", "StringValue": message.order_id}
            },
        }
        if self.fifo:
            entry["MessageGroupId"] = message.order_id
            entry["MessageDeduplicationId"] = hashlib.sha256(
                message.message_id.encode()
            ).hexdigest()
        return entry

    def _send_batch(self, url: str, batch: list[OutgoingMessage]) -> int:
        pending = dict(enumerate(batch))
        for attempt in range(1, MAX_SEND_ATTEMPTS + 1):
            entries = [self._entry(i, m) for i, m in pending.items()]
            try:
                result = self._client.send_message_batch(QueueUrl=url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                log.warning(
                    "SendMessageBatch failed [%d/%d]: %s", attempt, MAX_SEND_ATTEMPTS, _aws(exc)
                )
            else:
                for ok in result.get("Successful", []):
                    pending.pop(int(ok["Id"]), None)
                if not pending:
                    return len(batch)
                log.warning(
                    "%d entries failed [%d/%d]: %s",
                    len(pending),
                    attempt,
                    MAX_SEND_ATTEMPTS,
                    result.get("Failed", [])[:1],
                )
            if attempt < MAX_SEND_ATTEMPTS:
                time.sleep(backoff_delay(attempt, SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S))
        raise PublishError(
            f"SQS did not take {len(pending)} orders after {MAX_SEND_ATTEMPTS} attempts "
            f"(first: {next(iter(pending.values())).order_id})"
        )

    # --- consuming ---------------------------------------------------------------------

    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        url, _ = self._urls()
        self._slots = threading.BoundedSemaphore(max(prefetch, BATCH_SIZE))
        receivers = [
            threading.Thread(target=self._receive_loop, args=(url, on_message, stop), daemon=True)
            for _ in range(RECEIVERS)
        ]
        log.info("consuming %s with %d receivers (prefetch %d)", self.name, RECEIVERS, prefetch)
        deleter = threading.Thread(target=self._delete_loop, args=(url, stop), daemon=True)
        deleter.start()
        for thread in receivers:
            thread.start()
        for thread in receivers:
            thread.join()
        self._acks.put(None)  # receivers are done: flush what is acked and stop
        deleter.join()

    def _delete_loop(self, url: str, stop: threading.Event) -> None:
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
            done = handle is None  # the end mark: nothing more will be acked
            if batch:
                self._delete_batch(url, batch)

    def _delete_batch(self, url: str, handles: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            result = self._client.delete_message_batch(QueueUrl=url, Entries=entries)
            failed = result.get("Failed") or []
            if failed:
                log.warning("%d deletes failed; those messages come back later", len(failed))
        except (ClientError, BotoCoreError) as exc:
            # Not deleted: the messages reappear after their visibility timeout. Not lost.
            log.warning("DeleteMessageBatch failed: %s", _aws(exc))
        finally:
            if self._slots is not None:
                for _ in handles:
                    self._slots.release()

    def _receive_loop(
        self, url: str, on_message: Callable[[QueuedMessage], None], stop: threading.Event
    ) -> None:
        assert self._slots is not None
        while not stop.is_set():
            for _ in range(BATCH_SIZE):  # room for a full batch before asking for one
                while not self._slots.acquire(timeout=0.5):
                    if stop.is_set():
                        return
            try:
                got = self._client.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=BATCH_SIZE,
                    WaitTimeSeconds=self.wait_time_s,
                    AttributeNames=["ApproximateReceiveCount"],
                    MessageAttributeNames=["All"],
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("ReceiveMessage failed: %s; retrying", _aws(exc))
                got = {}
                stop.wait(1.0)
            messages = got.get("Messages") or []
            for _ in range(BATCH_SIZE - len(messages)):
                self._slots.release()
            for message in messages:
                on_message(_SqsMessage(self, message))

    def _settle(self, message: dict[str, Any], action: str) -> None:
        url, dlq_url = self._urls()
        handle = message["ReceiptHandle"]
        if action == "ack":
            self._acks.put(handle)  # deleted in batches; the slot is freed then
            return
        try:
            if action == "requeue":
                pause = backoff_delay(
                    receive_count(message), REQUEUE_BACKOFF_BASE_S, REQUEUE_BACKOFF_MAX_S
                )
                self._client.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=math.ceil(pause)
                )
            else:
                attributes = dict(message.get("MessageAttributes") or {})
                attributes[REASON_ATTRIBUTE] = {"DataType": "String", "StringValue": "rejected"}
                extra = {"MessageGroupId": "dead-letters"} if self.fifo else {}
                if self.fifo:
                    extra["MessageDeduplicationId"] = message["MessageId"]
                self._client.send_message(
                    QueueUrl=dlq_url,
                    MessageBody=message["Body"],
                    MessageAttributes=attributes,
                    **extra,
                )
                self._client.delete_message(QueueUrl=url, ReceiptHandle=handle)
        except (ClientError, BotoCoreError) as exc:
            # Not settled: the message reappears after its visibility timeout. Not lost.
            log.warning("could not %s an SQS message: %s", action, _aws(exc))
        finally:
            if self._slots is not None:
                self._slots.release()

    # --- inspection and dead letters ---------------------------------------------------

    def depth(self) -> int:
        return self._count(READY)

    def backlog(self) -> int:
        """Ready messages, those received and not yet deleted (a consumer holds them, or
        a requeued one waits out its visibility timeout) and delayed ones: SQS counts
        all three in one call."""
        return self._count(READY, IN_FLIGHT, DELAYED)

    def _count(self, *attributes: str) -> int:
        """The sum of the queue's ``attributes`` (approximate, as SQS keeps them)."""
        url, _ = self._urls()
        try:
            got = self._client.get_queue_attributes(QueueUrl=url, AttributeNames=list(attributes))
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(f"cannot read the depth of {self.name}: {_aws(exc)}") from None
        return sum(int(got["Attributes"].get(name, 0)) for name in attributes)

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        _, dlq_url = self._urls()
        try:
            return DeadLetterQueue(self._client, dlq_url).look(limit)
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"cannot read the dead letters of {self.name}: {_aws(exc)}"
            ) from None

    def replay_dead_letters(self, order_id: str | None = None) -> int:
        url, dlq_url = self._urls()
        try:
            return DeadLetterQueue(self._client, dlq_url).replay(
                order_id, lambda message: self._send_batch(url, [message])
            )
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"cannot replay the dead letters of {self.name}: {_aws(exc)}"
            ) from None
