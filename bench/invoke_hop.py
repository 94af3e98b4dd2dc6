"""The Invoke hop's CPU per call, piece by piece, small enough to run beside other jobs.

    python -m bench.invoke_hop signer            # SigV4 headers for one request
    python -m bench.invoke_hop template          # the same from a per-function template
    python -m bench.invoke_hop invoker           # invoke_event, the HTTP exchange stubbed
    python -m bench.invoke_hop service --events 5000
    python -m bench.invoke_hop acks --events 20000  # RabbitMQ acks from another thread
    python -m bench.invoke_hop dispatcher --events 20000  # the manager's loop, no I/O

``signer``, ``template``, ``invoker`` and ``dispatcher`` run in this process and print
CPU µs per call (per order) for each of ``--repeats`` timings of ``--calls`` calls
(``--events`` orders). ``service`` starts a local Lambda service
with a no-op function on 16 environments, sends ``--events`` Event invokes through the
manager's ``EventInvoker`` (64 in flight), waits until every event ran, and prints the
CPU (user + system) the service process spent per event, and that of its environments.
``acks`` starts a private RabbitMQ node, and per repetition publishes ``--events``
orders and consumes them with ``RabbitMQTransport``, a worker thread acking each at
``--rate`` a second (as the manager's loop thread acks each order when its Invoke
returns), once with the I/O thread woken for every ack (``SETTLE_BATCH`` 1) and once as
shipped; it prints this process's CPU per message.
Each run prints one line per repetition; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import statistics
import tempfile
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psutil
from botocore.credentials import ReadOnlyCredentials

from bench.lambda_service_bench import lambda_service
from courierflow.local.processes import start_rabbitmq
from courierflow.manager.dispatcher import Dispatcher
from courierflow.manager.event_invoker import EventInvoker, SigV4Signer
from courierflow.orders import Order
from courierflow.transports import rabbitmq
from courierflow.transports.base import OutgoingMessage, QueuedMessage, Transport
from courierflow.transports.rabbitmq import RabbitMQTransport

#: a typical order as the manager sends it
PAYLOAD = Order.from_message(
    {
        "order_id": "ORD-0002",
        "customer": "Noah Petrov",
        "address": "55 Maple Street, Lisbon",
        "items": "chef's knife",
        "quantity": 1,
        "priority": "standard",
        "notes": "back door, please",
    }
).to_json()
FUNCTION = "fn"
PATH = f"/2015-03-31/functions/{FUNCTION}/invocations"
#: Event invokes in flight while measuring the service
IN_FLIGHT = 64


def _best_us(call: Any, calls: int, repeats: int) -> list[float]:
    """CPU µs per call of each repetition (this process's CPU time, not the wall clock:
    the machine is shared, and time spent descheduled is not the call's cost)."""
    runs = timeit.repeat(call, number=calls, repeat=repeats, timer=time.process_time)
    return [t / calls * 1e6 for t in runs]


def bench_signer(calls: int, repeats: int) -> list[float]:
    signer = SigV4Signer("us-east-1")
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)
    extra = {"X-Amz-Invocation-Type": "Event"}
    return _best_us(
        lambda: signer.headers("127.0.0.1:9001", PATH, PAYLOAD, extra, credentials),
        calls,
        repeats,
    )


def bench_template(calls: int, repeats: int) -> list[float]:
    template = SigV4Signer("us-east-1").template(
        "127.0.0.1:9001", PATH, {"X-Amz-Invocation-Type": "Event"}
    )
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)
    return _best_us(lambda: template.headers(PAYLOAD, credentials), calls, repeats)


def _invoker() -> EventInvoker:
    session = boto3.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-east-1"
    )
    client = session.client("lambda", endpoint_url="http://127.0.0.1:9001")
    return EventInvoker(client, session=session)


def bench_invoker(calls: int, repeats: int) -> list[float]:
    """``invoke_event`` with the exchange answering 202 at once: signing, framing the
    request and reading the answer's headers, without a socket."""
    invoker = _invoker()

    async def accepted(request: bytes) -> tuple[int, dict[str, str], bytes]:
        return 202, {"x-amzn-requestid": "req"}, b""

    invoker._exchange = accepted  # type: ignore[method-assign]

    async def loop() -> float:
        started = time.process_time()
        for _ in range(calls):
            await invoker.invoke_event(FUNCTION, PAYLOAD)
        return time.process_time() - started

    return [asyncio.run(loop()) / calls * 1e6 for _ in range(repeats)]


async def _send_events(url: str, count: int) -> None:
    invoker = _invoker()
    invoker.endpoint = url
    host_port = url.split("//")[1]
    invoker._host = host_port
    invoker._address = ("127.0.0.1", int(host_port.split(":")[1]))
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await invoker.invoke_event(FUNCTION, PAYLOAD)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    await invoker.close()


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
        doc: dict[str, Any] = json.load(answer)["functions"][FUNCTION]
        return doc


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the service process, and of its children (the environments)."""
    root = psutil.Process(pid)
    times = root.cpu_times()
    children = 0.0
    for child in root.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        children += t.user + t.system
    return times.user + times.system, children


def bench_service(events: int, repeats: int) -> list[tuple[float, float, float]]:
    """(service µs/event, environments µs/event, seconds) per repetition."""
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="cf-hop-") as tmp,
        lambda_service(
            Path(tmp), "handlers:noop", "fn.concurrency=16", "fn.provisioned_concurrency=16"
        ) as svc,
    ):
        asyncio.run(_send_events(svc.url, 500))  # warm up connections and environments
        while _health(svc.url)["invocations"] < 500:
            time.sleep(0.05)
        done = 500
        for _ in range(repeats):
            service_before, envs_before = _cpu(svc.process.pid)
            started = time.perf_counter()
            asyncio.run(_send_events(svc.url, events))
            done += events
            while _health(svc.url)["invocations"] < done:
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            service_after, envs_after = _cpu(svc.process.pid)
            results.append(
                (
                    (service_after - service_before) / events * 1e6,
                    (envs_after - envs_before) / events * 1e6,
                    elapsed,
                )
            )
    return results


def _consume_and_ack(transport: RabbitMQTransport, count: int, rate: float) -> float:
    """Consume ``count`` messages, acked from a worker thread at most ``rate`` a second
    (the manager acks each order when its Invoke returns, spread over time, not in a
    burst); CPU µs per message."""
    handed: queue.SimpleQueue[QueuedMessage] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        begin = time.perf_counter()
        for i in range(count):
            message = handed.get()
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            message.ack()
        stop.set()

    thread = threading.Thread(target=worker)
    started = time.process_time()
    thread.start()
    transport.consume(handed.put, 1024, stop)
    thread.join()
    return (time.process_time() - started) / count * 1e6


def bench_acks(events: int, repeats: int, rate: float) -> list[tuple[float, float]]:
    """(µs/message waking the I/O thread per ack, µs/message as shipped) per repetition."""
    results = []
    with tempfile.TemporaryDirectory(prefix="cf-hop-rabbit-") as tmp:
        node = start_rabbitmq(Path(tmp))
        try:
            transport = RabbitMQTransport(node.amqp_url, "hop-acks")
            for _ in range(repeats):
                row = []
                for batch in (1, rabbitmq.SETTLE_BATCH):
                    transport.publish(
                        OutgoingMessage(PAYLOAD, f"O-{i}", f"O-{i}") for i in range(events)
                    )
                    shipped, rabbitmq.SETTLE_BATCH = rabbitmq.SETTLE_BATCH, batch
                    try:
                        row.append(_consume_and_ack(transport, events, rate))
                    finally:
                        rabbitmq.SETTLE_BATCH = shipped
                results.append((row[0], row[1]))
        finally:
            node.stop()
    return results


class _Delivery(QueuedMessage):
    def __init__(self, body: bytes, acked: threading.Semaphore, window: threading.Semaphore):
        self.body = body
        self._acked = acked
        self._window = window

    def ack(self) -> None:
        self._window.release()
        self._acked.release()

    def reject(self, requeue: bool) -> None:
        raise AssertionError("every order is accepted here")


class _HandOut(Transport):
    """Hands ``count`` orders to the dispatcher from its own thread, as a consumer does,
    never more than ``prefetch`` unacked (as the broker does)."""

    def __init__(self, count: int, acked: threading.Semaphore) -> None:
        self._window = threading.Semaphore(0)
        self.deliveries = [
            _Delivery(Order(f"D-{i:07d}", customer="c", address="a").to_json(), acked, self._window)
            for i in range(count)
        ]

    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        for _ in range(prefetch):
            self._window.release()
        for delivery in self.deliveries:
            self._window.acquire()
            on_message(delivery)
        stop.wait()

    def publish(self, messages: Any) -> int:
        raise NotImplementedError

    def depth(self) -> int:
        return 0

    def dead_letters(self, limit: int = 1000) -> list[Any]:
        return []

    def replay_dead_letters(self, order_id: str | None = None) -> int:
        return 0


class _AcceptingLambda:
    """Accepts every Event invoke after one turn of the loop (no socket, no signing)."""

    async def invoke_event(self, function_name: str, payload: bytes) -> str:
        await asyncio.sleep(0)
        return "req"

    async def close(self) -> None:
        pass


class _NoLedger:
    def mark_dispatched(self, batch: dict[str, float]) -> None:
        pass


def bench_dispatcher(events: int, repeats: int) -> list[float]:
    """The dispatcher's own CPU µs per order: orders handed over from a consumer thread
    (``DEFAULT_PREFETCH`` unacked at most), each invoked (accepted at once) and acked,
    ``DEFAULT_MAX_IN_FLIGHT`` in flight."""
    results = []
    for _ in range(repeats):
        acked = threading.Semaphore(0)
        transport = _HandOut(events, acked)
        dispatcher = Dispatcher(transport, _AcceptingLambda(), _NoLedger(), FUNCTION)  # type: ignore[arg-type]
        thread = threading.Thread(target=dispatcher.run)
        started = time.process_time()
        thread.start()
        for _ in range(events):
            acked.acquire()
        results.append((time.process_time() - started) / events * 1e6)
        dispatcher.stop()
        thread.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ("signer", "template", "invoker", "service", "acks", "dispatcher")
    parser.add_argument("part", choices=parts)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=3000.0, help="acks a second (acks)")
    args = parser.parse_args()
    if args.part == "service":
        rows = bench_service(args.events, args.repeats)
        for service_us, envs_us, seconds in rows:
            print(
                f"service {service_us:7.1f} µs/event  environments {envs_us:7.1f} µs/event  "
                f"({args.events} events in {seconds:.2f} s)"
            )
        print(f"median service {statistics.median(r[0] for r in rows):.1f} µs/event")
        return
    if args.part == "acks":
        for every_ack, shipped in bench_acks(args.events, args.repeats, args.rate):
            print(
                f"consumer CPU {every_ack:6.1f} µs/message waking for every ack, "
                f"{shipped:6.1f} µs/message as shipped ({args.events} messages, "
                f"acked at {args.rate:.0f}/s)"
            )
        return
    if args.part == "dispatcher":
        runs = bench_dispatcher(args.events, args.repeats)
    else:
        bench = {"signer": bench_signer, "template": bench_template, "invoker": bench_invoker}
        runs = bench[args.part](args.calls, args.repeats)
    print(" ".join(f"{us:.2f}" for us in runs), "µs/call;", f"min {min(runs):.2f}")


if __name__ == "__main__":
    main()
