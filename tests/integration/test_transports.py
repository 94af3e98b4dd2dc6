"""Transports against the real thing: RabbitMQ (a private node) and SQS (moto's server).

The behaviour both must share runs against each through the parametrised ``transport``
fixture; what only one of them has (message properties, the delivery limit) is tested
on that one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import boto3
import pika
import pytest

from courierflow.errors import AuthenticationError, ConnectionLost, PublishError, TransportError
from courierflow.local.processes import free_port
from courierflow.transports import rabbitmq as rabbitmq_module
from courierflow.transports.base import OutgoingMessage, QueuedMessage, Transport
from courierflow.transports.rabbitmq import RabbitMQTransport
from courierflow.transports.rabbitmq_topology import MAX_DELIVERIES
from courierflow.transports.sqs import SQSTransport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(params=["rabbitmq", "sqs"])
def transport(request: pytest.FixtureRequest) -> Transport:
    name = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "rabbitmq":
        return RabbitMQTransport(request.getfixturevalue("amqp_url"), name)
    endpoint = request.getfixturevalue("moto_server")
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    return SQSTransport(f"sqs://{name}", client=client, wait_time_s=1)


@pytest.fixture
def rabbit(amqp_url: str) -> RabbitMQTransport:
    return RabbitMQTransport(amqp_url, f"test-{uuid.uuid4().hex[:8]}")


def messages(n: int, prefix: str = "O") -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            f'{{"order_id":"{prefix}-{i}"}}'.encode(), f"{prefix}-{i}", f"order:{prefix}-{i}"
        )
        for i in range(n)
    ]


def _drain(transport: Transport, handle: Callable[[QueuedMessage], bool]) -> None:
    """Consume until ``handle`` (called for every delivery) says stop, or 30 s passed."""
    stop = threading.Event()

    def on_message(d: QueuedMessage) -> None:
        if handle(d):
            stop.set()

    timer = threading.Timer(30, stop.set)
    timer.start()
    transport.consume(on_message, prefetch=100, stop=stop)
    timer.cancel()


def consume(transport: Transport, n: int, settle: str = "ack") -> list[QueuedMessage]:
    got: list[QueuedMessage] = []

    def handle(d: QueuedMessage) -> bool:
        got.append(d)
        d.ack() if settle == "ack" else d.reject(requeue=settle == "requeue")
        return len(got) >= n

    _drain(transport, handle)
    return got


def consume_until_seen(transport: Transport, wanted: set[bytes]) -> list[bytes]:
    """Ack every body until each wanted one was seen; returns them all, repeats included."""
    bodies: list[bytes] = []
    missing = set(wanted)

    def handle(d: QueuedMessage) -> bool:
        bodies.append(d.body)
        missing.discard(d.body)
        d.ack()
        return not missing

    _drain(transport, handle)
    return bodies


def test_every_published_message_is_confirmed_and_consumed_once(transport: Transport) -> None:
    """Each message reaches the consumer; RabbitMQ hands each to it once. SQS is
    at-least-once (moto's server, with several receivers, now and then hands one message
    out twice), so there a rare repeat is allowed; the delivery's claim skips it."""
    assert transport.publish(messages(200)) == 200
    assert transport.depth() == 200
    wanted = {f'{{"order_id":"O-{i}"}}'.encode() for i in range(200)}
    seen = consume_until_seen(transport, wanted)
    assert set(seen) == wanted
    repeats = len(seen) - len(wanted)
    assert repeats == 0 if isinstance(transport, RabbitMQTransport) else repeats <= 4
    # acks are applied asynchronously by the broker (quorum queues commit them via Raft)
    deadline = time.monotonic() + 10
    while transport.depth() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert transport.depth() == 0


def test_an_idle_rabbitmq_consumer_sleeps_yet_takes_a_new_message_at_once(
    rabbit: RabbitMQTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing in flight the I/O thread waits long (here 5 s) instead of waking every
    ``SETTLE_EVERY_S`` (100 times a second); a delivery still ends that wait at once."""
    monkeypatch.setattr(rabbitmq_module, "IDLE_WAIT_S", 5.0)
    rabbit.publish(messages(1, "warm"))  # declares the queue
    consume(rabbit, 1)
    passes: list[float] = []
    original = pika.BlockingConnection.process_data_events
    consumer_thread: list[int] = []

    def counted(self: pika.BlockingConnection, time_limit: float | None = 0) -> None:
        if threading.get_ident() in consumer_thread:
            passes.append(time.monotonic())
        original(self, time_limit)

    monkeypatch.setattr(pika.BlockingConnection, "process_data_events", counted)
    arrived: list[float] = []
    stop = threading.Event()

    def on_message(d: QueuedMessage) -> None:
        arrived.append(time.monotonic())
        d.ack()
        stop.set()

    def run() -> None:
        consumer_thread.append(threading.get_ident())
        rabbit.consume(on_message, prefetch=10, stop=stop)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    time.sleep(2.0)
    idle_passes = len(passes)
    published = time.monotonic()
    rabbit.publish(messages(1, "late"))
    worker.join(30)
    assert not worker.is_alive()
    assert idle_passes <= 5, f"{idle_passes} passes in 2 s idle"
    assert arrived and arrived[0] - published < 2.0


def test_rabbitmq_messages_are_persistent_json_with_the_order_id_header(
    rabbit: RabbitMQTransport, amqp_url: str
) -> None:
    rabbit.publish(messages(1))
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method, props, _body = conn.channel().basic_get(rabbit.queue, auto_ack=True)
    finally:
        conn.close()
    assert method is not None
    assert props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert props.message_id == "order:O-0"
    assert props.headers["order_id"] == "O-0"


def test_rejected_messages_are_dead_lettered_and_can_be_replayed(transport: Transport) -> None:
    transport.publish(messages(3))
    consume(transport, 3, settle="dead-letter")
    letters = transport.dead_letters()
    assert sorted(letter.order_id for letter in letters) == ["O-0", "O-1", "O-2"]
    assert {letter.reason for letter in letters} == {"rejected"}
    again = transport.dead_letters()  # looking does not remove
    assert sorted(x.order_id for x in again) == sorted(x.order_id for x in letters)

    assert transport.replay_dead_letters("O-1") == 1
    assert [d.body for d in consume(transport, 1)] == [b'{"order_id":"O-1"}']
    assert sorted(letter.order_id for letter in transport.dead_letters()) == ["O-0", "O-2"]


def test_rabbitmq_poison_message_is_dead_lettered_after_the_delivery_limit(
    rabbit: RabbitMQTransport,
) -> None:
    rabbit.publish(messages(1, "POISON"))
    got = consume(rabbit, MAX_DELIVERIES + 1, settle="requeue")
    assert len(got) == MAX_DELIVERIES + 1
    assert got[-1].delivery_count == MAX_DELIVERIES
    letters = rabbit.dead_letters()
    assert [(letter.order_id, letter.reason) for letter in letters] == [
        ("POISON-0", "delivery_limit")
    ]


def test_refused_credentials_give_a_clear_error(rabbitmq: object, amqp_url: str) -> None:
    bad = RabbitMQTransport(amqp_url.replace("guest:guest", "guest:wrong"), "q")
    with pytest.raises(PublishError, match="refused the credentials"):
        bad.publish(messages(1))
    with pytest.raises(TransportError, match="refused the credentials"):
        bad.depth()


def test_refused_credentials_stop_a_consumer_at_once_with_an_authentication_error(
    rabbitmq: object, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Recognised by pika's exception class: the consumer does not retry what cannot
    succeed, and says so with its own error class (whatever the message says)."""
    bad = RabbitMQTransport(amqp_url.replace("guest:guest", "guest:wrong"), "q")
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)  # a consumer that retried would still be here
    timer.start()
    try:
        with pytest.raises(AuthenticationError):
            bad.consume(lambda _m: None, prefetch=1, stop=stop)
    finally:
        timer.cancel()
    assert not stop.is_set()
    assert "reconnecting" not in caplog.text
    with pytest.raises(AuthenticationError):
        bad.dead_letters()


def test_a_consumer_that_cannot_connect_pauses_logs_each_attempt_and_gives_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No broker on the port: each failed connection is logged as ``[n/max]`` and
    followed by a pause (``backoff_delay``), and the consumer stops after the last."""
    monkeypatch.setattr(rabbitmq_module, "MAX_CONSUME_RECONNECTS", 4)
    pauses: list[float] = []
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda pause: pauses.append(pause) or False)
    nowhere = RabbitMQTransport(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "q")
    caplog.set_level("WARNING", logger=rabbitmq_module.__name__)
    with pytest.raises(ConnectionLost, match="lost for 4 attempts"):
        nowhere.consume(lambda _m: None, prefetch=1, stop=stop)
    assert len(pauses) == 3
    assert all(0 <= p <= rabbitmq_module.RECONNECT_BACKOFF_MAX_S for p in pauses)
    attempts = [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert [a.rsplit(" ", 1)[-1] for a in attempts] == ["[1/4]", "[2/4]", "[3/4]"]


@pytest.fixture
def fifo(moto_server: str) -> SQSTransport:
    client = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    return SQSTransport(f"sqs://test-{uuid.uuid4().hex[:8]}.fifo", client=client, wait_time_s=1)


def test_sqs_fifo_publishing_is_deduplicated_by_order(fifo: SQSTransport) -> None:
    assert fifo.publish(messages(20)) == 20
    assert fifo.publish(messages(20)) == 20  # SQS accepts the repeat and drops it
    assert fifo.depth() == 20
    wanted = {f'{{"order_id":"O-{i}"}}'.encode() for i in range(20)}
    assert set(consume_until_seen(fifo, wanted)) == wanted


def test_sqs_fifo_dead_letters_are_replayed_despite_deduplication(fifo: SQSTransport) -> None:
    """A replay within FIFO's 5-minute deduplication window must not be dropped as a
    repeat of the original message."""
    fifo.publish(messages(2))
    consume(fifo, 2, settle="dead-letter")
    assert sorted(letter.order_id for letter in fifo.dead_letters()) == ["O-0", "O-1"]
    assert fifo.replay_dead_letters("O-1") == 1
    url, _ = fifo._urls()
    got = fifo._client.receive_message(QueueUrl=url, AttributeNames=["MessageDeduplicationId"])
    (replayed,) = got["Messages"]
    original = fifo._entry(0, messages(2)[1])["MessageDeduplicationId"]
    assert replayed["Body"] == '{"order_id":"O-1"}'
    assert replayed["Attributes"]["MessageDeduplicationId"] != original
