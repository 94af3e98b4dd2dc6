"""The RabbitMQ consumer's acks: queued by workers, sent by the I/O thread in batches,
waking that thread only for a reject or a full batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from courierflow.transports.rabbitmq import SETTLE_BATCH, _Settler

pytestmark = pytest.mark.unit


class FakeConnection:
    """Records each wake-up of the I/O thread (``add_callback_threadsafe``)."""

    def __init__(self) -> None:
        self.wakes: list[Callable[[], None]] = []

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        self.wakes.append(callback)


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, Any]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.sent.append(("ack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.sent.append(("reject", tag, requeue))


def settler(deliveries: int) -> tuple[_Settler, FakeConnection, FakeChannel]:
    conn, channel = FakeConnection(), FakeChannel()
    handed_out = _Settler(conn, channel)  # type: ignore[arg-type]
    handed_out.outstanding = deliveries
    return handed_out, conn, channel


def test_acks_wait_for_the_io_threads_next_pass_without_waking_it() -> None:
    acks, conn, channel = settler(3)
    for tag in (1, 2, 3):
        acks.settle(tag, "ack")
    assert conn.wakes == [] and channel.sent == [], "nothing sent before the thread's pass"

    acks.flush()  # the I/O thread's pass
    assert channel.sent == [("ack", 3, True)], "one cumulative ack for the run"
    assert acks.outstanding == 0


def test_a_full_batch_of_acks_wakes_the_io_thread_once() -> None:
    acks, conn, channel = settler(2 * SETTLE_BATCH)
    for tag in range(1, 2 * SETTLE_BATCH + 1):
        acks.settle(tag, "ack")
    assert len(conn.wakes) == 1, "one wake-up while the first is pending"

    conn.wakes[0]()
    assert channel.sent == [("ack", 2 * SETTLE_BATCH, True)]
    for tag in range(2 * SETTLE_BATCH + 1, 3 * SETTLE_BATCH + 1):
        acks.outstanding += 1
        acks.settle(tag, "ack")
    assert len(conn.wakes) == 2, "after the flush, the next full batch wakes it again"


def test_a_reject_wakes_the_io_thread_at_once_and_takes_the_queued_acks_along() -> None:
    acks, conn, channel = settler(3)
    acks.settle(1, "ack")
    acks.settle(2, "drop")
    assert len(conn.wakes) == 1

    acks.settle(3, "requeue")  # a wake-up is pending: it takes this one too
    assert len(conn.wakes) == 1
    conn.wakes[0]()
    assert channel.sent == [("reject", 2, False), ("reject", 3, True), ("ack", 1, True)]
    assert acks.outstanding == 0
