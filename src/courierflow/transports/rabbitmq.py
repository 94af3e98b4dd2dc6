"""RabbitMQ transport on pika: pipelined confirmed publishing (``rabbitmq_publish``), and
a consumer whose messages can be acked from worker threads.

The queue, its dead-letter exchange and queue are declared by every client
(``rabbitmq_topology``). pika's exceptions stop here: callers see ``AuthenticationError``
when the broker refused the credentials, ``ConnectionLost`` when it could not be reached,
``TransportError`` otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from courierflow.backoff import backoff_delay
from courierflow.errors import AuthenticationError, ConnectionLost, PublishError, TransportError
from courierflow.transports.base import DeadLetter, OutgoingMessage, QueuedMessage, Transport
from courierflow.transports.rabbitmq_publish import PipelinedPublish
from courierflow.transports.rabbitmq_topology import (
    CREDENTIALS_REFUSED,
    ORDER_ID_HEADER,
    message_properties,
    topology,
)

log = logging.getLogger(__name__)

#: failed connections in a row before publishing gives up (the count resets on progress)
MAX_CONNECT_ATTEMPTS = 10
#: failed connections in a row before a consumer gives up (the count resets once one
#: opens): a service rides out a broker restart, and on EC2 systemd restarts it after
MAX_CONSUME_RECONNECTS = 30
#: the longest pause after a first failed connection, doubling per failure up to the
#: largest, in seconds (``backoff_delay``: each pause drawn between zero and that)
RECONNECT_BACKOFF_BASE_S = 1.0
RECONNECT_BACKOFF_MAX_S = 10.0
#: seconds a stopping consumer waits for in-flight messages to be settled
DRAIN_TIMEOUT_S = 60.0
#: longest an ack waits to be sent with others (behind a delivery still in progress)
ACK_HOLD_S = 0.05
#: acks queued before a worker wakes the I/O thread for them; fewer wait for its next
#: pass, which comes with the next delivery or after ``SETTLE_EVERY_S`` at the latest
SETTLE_BATCH = 64
#: the longest the I/O thread waits for the broker before it settles what is queued
SETTLE_EVERY_S = 0.01
#: the longest it waits when no delivery is in flight: nothing can be queued to settle
#: then, and a delivery from the broker ends the wait at once; only stopping waits on it
IDLE_WAIT_S = 0.5


def declare_topology(channel: BlockingChannel, queue: str) -> None:
    """Declare the queue, its dead-letter exchange and queue (idempotent)."""
    for method, arguments in topology(queue):
        getattr(channel, method)(**arguments)


class _Settler:
    """Settles one channel's deliveries on the connection's I/O thread, many at a time.

    Worker threads queue their acks and rejects here. Waking the I/O thread is a pipe
    write and a GIL hand-over (9% of the manager's busy samples when every ack woke it:
    docs/performance.md), so an ack does not wake it: the thread settles what is queued
    on each pass of its loop (at least every ``SETTLE_EVERY_S``), and is woken only for
    a reject or once ``SETTLE_BATCH`` acks wait; one wake-up takes everything queued
    since the last. A message is still acked only after its worker acked it. Acks are
    sent as one cumulative ``basic.ack``
    (``multiple=True``) up to the highest tag below which every delivery is settled, so
    the broker handles one frame for a run of messages instead of one each. An ack held
    behind a delivery still in progress is sent on its own after ``ACK_HOLD_S``, so a
    slow order never keeps the others unacknowledged (and the prefetch window full).
    Delivery tags of a channel count up from 1, which is what makes the floor exact.
    """

    def __init__(self, conn: pika.BlockingConnection, channel: BlockingChannel) -> None:
        self._conn = conn
        self._channel = channel
        self._lock = threading.Lock()
        self._queued: list[tuple[int, str]] = []
        #: a flush was asked of the I/O thread and has not run yet
        self._wake_pending = False
        #: every tag up to the floor is settled
        self._floor = 0
        #: settled tags above the floor
        self._settled: set[int] = set()
        #: acks not yet sent to the broker: tag -> when the worker acked it
        self._unsent: dict[int, float] = {}
        #: deliveries handed out and not yet settled here
        self.outstanding = 0

    def settle(self, tag: int, action: str) -> None:
        """Queue ``ack``, ``requeue`` or ``drop`` of one delivery (any thread)."""
        with self._lock:
            self._queued.append((tag, action))
            wake = not self._wake_pending and (action != "ack" or len(self._queued) >= SETTLE_BATCH)
            self._wake_pending = self._wake_pending or wake
        if wake:
            try:
                self._conn.add_callback_threadsafe(self.flush)
            except (pika.exceptions.ConnectionWrongStateError, pika.exceptions.AMQPError):
                # The connection is gone: the broker redelivers the message. Not lost.
                log.warning("connection gone before settling; the broker redelivers")

    @property
    def busy(self) -> bool:
        """Deliveries are handed out or acks held (I/O thread only)."""
        return self.outstanding > 0 or bool(self._unsent)

    def flush(self, force: bool = False) -> None:
        """Send what is queued (I/O thread only); ``force`` sends held acks too."""
        with self._lock:
            batch, self._queued = self._queued, []
            self._wake_pending = False
        if not self._channel.is_open:
            return
        now = time.monotonic()
        for tag, action in batch:
            self.outstanding -= 1
            if action == "ack":
                self._unsent[tag] = now
            else:
                self._channel.basic_reject(tag, requeue=action == "requeue")
            self._settled.add(tag)
        while self._floor + 1 in self._settled:
            self._floor += 1
            self._settled.discard(self._floor)
        covered = [tag for tag in self._unsent if tag <= self._floor]
        if covered:
            self._channel.basic_ack(max(covered), multiple=True)
            for tag in covered:
                del self._unsent[tag]
        for tag, since in list(self._unsent.items()):
            if force or now - since >= ACK_HOLD_S:
                self._channel.basic_ack(tag)
                del self._unsent[tag]


class _RabbitMessage(QueuedMessage):
    def __init__(self, settler: _Settler, tag: int, body: bytes, delivery_count: int) -> None:
        self._settler = settler
        self._tag = tag
        self.body = body
        self.delivery_count = delivery_count

    def ack(self) -> None:
        self._settler.settle(self._tag, "ack")

    def reject(self, requeue: bool) -> None:
        self._settler.settle(self._tag, "requeue" if requeue else "drop")


class RabbitMQTransport(Transport):
    """Orders on a RabbitMQ quorum queue."""

    def __init__(self, url: str, queue: str) -> None:
        self.params = pika.URLParameters(url)
        self.params.heartbeat = 30
        self.params.blocked_connection_timeout = 60
        self.params.connection_attempts = 1
        self.queue = queue

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self.params)
        except CREDENTIALS_REFUSED as exc:
            raise AuthenticationError(
                f"RabbitMQ at {self._where()} refused the credentials ({exc!r}); "
                "check COURIERFLOW_AMQP_URL"
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise ConnectionLost(f"cannot reach RabbitMQ at {self._where()}: {exc!r}") from None

    def _where(self) -> str:
        return f"{self.params.host}:{self.params.port}"

    @contextlib.contextmanager
    def _channel(self, doing: str) -> Iterator[BlockingChannel]:
        """A channel on a connection of its own, the topology declared; closed after.

        pika's errors inside become ``TransportError("cannot {doing}: ...")``.
        """
        conn = self._connect()
        try:
            channel = conn.channel()
            declare_topology(channel, self.queue)
            yield channel
        except pika.exceptions.AMQPError as exc:
            raise TransportError(f"cannot {doing}: {exc!r}") from None
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                if conn.is_open:
                    conn.close()

    # --- publishing --------------------------------------------------------------------

    def publish(self, messages: Iterable[OutgoingMessage]) -> int:
        job = PipelinedPublish(self.params, self.queue, iter(messages))
        failures = 0
        while not job.finished:
            before = job.confirmed
            job.run_connection()
            if job.fatal:
                raise PublishError(f"{job.fatal} (RabbitMQ at {self._where()})")
            if job.finished:
                break
            failures = 0 if job.confirmed > before else failures + 1
            if failures >= MAX_CONNECT_ATTEMPTS:
                raise PublishError(
                    f"RabbitMQ at {self._where()} unreachable after {failures} attempts; "
                    f"{job.confirmed} messages were confirmed, the rest were not published"
                )
            pause = backoff_delay(failures, RECONNECT_BACKOFF_BASE_S, RECONNECT_BACKOFF_MAX_S)
            log.warning(
                "reconnecting to RabbitMQ in %.1f s [%d/%d]", pause, failures, MAX_CONNECT_ATTEMPTS
            )
            time.sleep(pause)
        return job.confirmed

    # --- consuming ---------------------------------------------------------------------

    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        """See :meth:`Transport.consume`. A lost connection is opened again after a pause
        (``backoff_delay``), up to ``MAX_CONSUME_RECONNECTS`` failures in a row.

        Raises:
            AuthenticationError: the broker refused the credentials (never retried).
            ConnectionLost: no connection opened after ``MAX_CONSUME_RECONNECTS`` tries.
        """
        failures = 0
        while not stop.is_set():
            try:
                with self._channel(f"consume {self.queue}") as channel:
                    failures = 0
                    self._consume_on(channel, on_message, prefetch, stop)
                return
            except AuthenticationError:
                raise
            except TransportError as exc:  # ConnectionLost, or the channel failed
                failures += 1
                if failures >= MAX_CONSUME_RECONNECTS:
                    raise ConnectionLost(
                        f"RabbitMQ at {self._where()} lost for {failures} attempts: {exc}"
                    ) from None
                pause = backoff_delay(failures, RECONNECT_BACKOFF_BASE_S, RECONNECT_BACKOFF_MAX_S)
                log.warning(
                    "RabbitMQ connection lost (%s); reconnecting in %.1f s [%d/%d]",
                    exc,
                    pause,
                    failures,
                    MAX_CONSUME_RECONNECTS,
                )
                stop.wait(pause)

    def _consume_on(
        self,
        channel: BlockingChannel,
        on_message: Callable[[QueuedMessage], None],
        prefetch: int,
        stop: threading.Event,
    ) -> None:
        conn = channel.connection
        channel.basic_qos(prefetch_count=prefetch)
        settler = _Settler(conn, channel)

        def deliver(
            ch: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes
        ) -> None:
            if stop.is_set():
                return  # not handed out: the broker takes it back when the connection closes
            headers = props.headers or {}
            count = int(headers.get("x-delivery-count", 0) or 0)
            settler.outstanding += 1
            on_message(_RabbitMessage(settler, method.delivery_tag, body, count))

        channel.basic_consume(self.queue, deliver)
        log.info("consuming %s on %s (prefetch %d)", self.queue, self._where(), prefetch)
        while not stop.is_set():
            # idle, the thread wakes twice a second instead of a hundred times
            wait = SETTLE_EVERY_S if settler.busy else IDLE_WAIT_S
            conn.process_data_events(time_limit=wait)
            settler.flush()  # acks queued since, and those held behind a slow delivery
        # Settle what is in flight before closing. The consumer stays registered until
        # then: RabbitMQ 3.10's quorum queues return messages whose ack arrives after
        # basic.cancel (docs/performance.md has the measurement).
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while settler.outstanding > 0 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=SETTLE_EVERY_S)
            settler.flush()
        settler.flush(force=True)
        if settler.outstanding:
            log.warning(
                "%d messages unsettled at shutdown; the broker redelivers them",
                settler.outstanding,
            )

    # --- inspection and dead letters ---------------------------------------------------

    def depth(self) -> int:
        with self._channel(f"read the depth of {self.queue}") as channel:
            return int(channel.queue_declare(self.queue, passive=True).method.message_count)

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        with self._channel(f"read {self.queue}.dlq") as channel:
            for _ in range(limit):
                method, props, body = channel.basic_get(f"{self.queue}.dlq", auto_ack=False)
                if method is None:
                    break
                letters.append(_dead_letter(props, body))
            # Closing the channel without acking puts every message back, in order.
        return letters

    def replay_dead_letters(self, order_id: str | None = None) -> int:
        moved = 0
        with self._channel(f"replay {self.queue}.dlq") as channel:
            channel.confirm_delivery()
            while True:
                method, props, body = channel.basic_get(f"{self.queue}.dlq", auto_ack=False)
                if method is None:
                    break
                letter = _dead_letter(props, body)
                if order_id is not None and letter.order_id != order_id:
                    continue  # left unacked: back in the dead-letter queue when we close
                message = OutgoingMessage(
                    body, letter.order_id, props.message_id or letter.order_id
                )
                channel.basic_publish("", self.queue, body, message_properties(message))
                channel.basic_ack(method.delivery_tag)
                moved += 1
        return moved


def _dead_letter(props: BasicProperties, body: bytes) -> DeadLetter:
    headers = props.headers or {}
    deaths = headers.get("x-death") or [{}]
    reason = str(deaths[0].get("reason", "unknown"))
    attempts = int(headers.get("x-delivery-count", 0) or 0) + 1
    order_id = headers.get(ORDER_ID_HEADER)
    return DeadLetter(
        order_id=str(order_id) if order_id else "(no order id)",
        reason=reason,
        attempts=attempts,
        body=body,
    )
