"""Publishing to RabbitMQ: a window of unconfirmed messages on pika's SelectConnection.

One :class:`PipelinedPublish` is one publishing job: it keeps up to ``PUBLISH_WINDOW``
messages in flight, re-publishes what the broker nacked (a few times), and hands what was
not confirmed when a connection dies back to the next connection, first.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic

from courierflow.transports.base import OutgoingMessage
from courierflow.transports.rabbitmq_topology import (
    CREDENTIALS_REFUSED,
    message_properties,
    topology,
)

log = logging.getLogger(__name__)

#: unconfirmed messages allowed in flight while publishing
PUBLISH_WINDOW = 2000
#: a message nacked by the broker is re-published at most this often
MAX_NACK_REPUBLISH = 3


class PipelinedPublish:
    """One publishing job on pika's SelectConnection: a window of unconfirmed messages."""

    def __init__(self, params: pika.URLParameters, queue: str, source: Iterator[OutgoingMessage]):
        self.params = params
        self.queue = queue
        self.source = source
        self.pending: deque[OutgoingMessage] = deque()  # re-publish these before the source
        self.nacks: dict[str, int] = {}
        self.unconfirmed: dict[int, OutgoingMessage] = {}
        self.confirmed = 0
        self.exhausted = False
        self.fatal: str | None = None
        self._tag = 0
        self._channel: Channel | None = None
        self._conn: pika.SelectConnection | None = None

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.pending and not self.unconfirmed

    def run_connection(self) -> None:
        """Publish over one connection until done or the connection is lost."""
        self._tag = 0
        self._conn = pika.SelectConnection(
            self.params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
        )
        try:
            self._conn.ioloop.start()
        finally:
            # Whatever was not confirmed goes out again first on the next connection.
            for tag in sorted(self.unconfirmed, reverse=True):
                self.pending.appendleft(self.unconfirmed[tag])
            self.unconfirmed.clear()

    # --- callbacks ---------------------------------------------------------------------

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: pika.SelectConnection, error: BaseException | str) -> None:
        if isinstance(error, CREDENTIALS_REFUSED):
            self.fatal = f"the broker refused the credentials: {error}"
        log.warning("cannot connect to RabbitMQ: %s", error)
        conn.ioloop.stop()

    def _on_close(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if not self.finished:
            log.warning("RabbitMQ connection closed while publishing: %s", reason)
        conn.ioloop.stop()

    def _on_channel(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        steps: list[Callable[..., None]] = [
            partial(getattr(channel, method), **arguments)
            for method, arguments in topology(self.queue)
        ]
        steps.append(partial(channel.confirm_delivery, self._on_confirm))

        def run(index: int) -> None:
            if index == len(steps):
                self._pump()
            else:
                steps[index](callback=lambda _frame: run(index + 1))

        run(0)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code in (
            403,
            406,
        ):
            self.fatal = f"the broker closed the channel: {reason.reply_text}"
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [t for t in self.unconfirmed if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            message = self.unconfirmed.pop(tag, None)
            if message is None:
                continue
            if isinstance(method, Basic.Ack):
                self.confirmed += 1
                continue
            count = self.nacks.get(message.order_id, 0) + 1
            self.nacks[message.order_id] = count
            if count > MAX_NACK_REPUBLISH:
                self.fatal = f"the broker refused order {message.order_id} {count} times"
            else:
                log.warning(
                    "broker nacked order %s; re-publishing [%d/%d]",
                    message.order_id,
                    count,
                    MAX_NACK_REPUBLISH,
                )
                self.pending.append(message)
        if self.fatal and self._conn is not None:
            self._conn.close()
            return
        self._pump()

    def _next(self) -> OutgoingMessage | None:
        if self.pending:
            return self.pending.popleft()
        if self.exhausted:
            return None
        try:
            return next(self.source)
        except StopIteration:
            self.exhausted = True
            return None

    def _pump(self) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        while len(self.unconfirmed) < PUBLISH_WINDOW:
            message = self._next()
            if message is None:
                break
            self._tag += 1
            self.unconfirmed[self._tag] = message
            channel.basic_publish(
                "", self.queue, message.body, message_properties(message), mandatory=False
            )
        if self.finished and self._conn is not None and self._conn.is_open:
            self._conn.close()
