"""Dispatch: orders in the queue -> invocations accepted by the local Lambda service.

Counted by the service itself (``/health``: async_accepted), from the first accepted
invocation to the last, with the Invoke answering at once and with injected latency."""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from bench.common import Services, summary, wait_for
from courierflow.local.processes import spawn
from courierflow.orders import Order
from courierflow.transports.base import OutgoingMessage
from courierflow.transports.rabbitmq import RabbitMQTransport

#: how a manager process is started: this interpreter, running a module
PYTHON = [sys.executable, "-m"]


def accepted(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        doc = json.load(response)
    return int(doc["functions"]["lambda_delivery"]["async_accepted"])


def _fill(svc: Services, queue: str, n: int, durable_quorum: bool) -> None:
    messages = (
        OutgoingMessage(
            Order(f"D-{i:07d}", customer="c", address="a").to_json(), f"D-{i:07d}", f"D-{i}"
        )
        for i in range(n)
    )
    if durable_quorum:
        RabbitMQTransport(svc.amqp_url, queue).publish(messages)
        return
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(svc.amqp_url))
    channel = conn.channel()
    channel.queue_declare(queue=queue)
    for m in messages:
        channel.basic_publish("", queue, m.body)
    conn.close()


@dataclass(frozen=True)
class Drained:
    """What one manager's drain of a queue measured."""

    #: invocations the Lambda service accepted per second, first to last
    orders_per_s: float
    #: the manager process's CPU (user + system) per order over the same span, in ms
    manager_cpu_ms_per_order: float


def _measure(svc: Services, name: str, latency_ms: float, n: int) -> float:
    """Orders/s of one manager ("courierflow" or "lab") draining ``n`` orders."""
    if name == "courierflow":
        ours = [*PYTHON, "courierflow.cli", "manager"]
        return drain_queue(svc, name, lambda _queue: ours, latency_ms, n).orders_per_s
    lab = [*PYTHON, "bench.peers.lab_baseline.manager", svc.amqp_url]
    drained = drain_queue(
        svc, name, lambda queue: [*lab, queue], latency_ms, n, durable_quorum=False
    )
    return drained.orders_per_s


def drain_queue(
    svc: Services,
    name: str,
    manager_argv: Callable[[str], list[str]],
    latency_ms: float,
    n: int,
    durable_quorum: bool = True,
) -> Drained:
    """Drain ``n`` orders with the manager ``manager_argv(queue)`` starts, from a queue of
    its own (a durable quorum queue as courierflow declares it, or a plain one) into a
    Lambda service of its own, both named in its environment (``COURIERFLOW_QUEUE``,
    ``AWS_ENDPOINT_URL_LAMBDA``)."""
    url = svc.start_lambda(
        f"lambda-{name}-{uuid.uuid4().hex[:4]}",
        {"lambda_delivery": "handlers:noop"},
        "--set", "lambda_delivery.concurrency=16", "--inject-latency-ms", str(latency_ms),
    )  # fmt: skip
    lambda_proc = svc.processes[-1]
    queue = f"dispatch-{uuid.uuid4().hex[:6]}"
    _fill(svc, queue, n, durable_quorum=durable_quorum)
    env = svc.env(
        AWS_ENDPOINT_URL_LAMBDA=url,
        COURIERFLOW_QUEUE=queue,
        COURIERFLOW_LEDGER_URL=f"sqlite:///{svc.work / (queue + '.db')}",
    )
    manager = spawn(name, manager_argv(queue), svc.work / f"{queue}.log", env)
    try:
        wait_for(lambda: accepted(url) > 0, 60)
        cpu_before = _cpu_s(manager.pid)
        first = accepted(url)
        seconds = wait_for(lambda: accepted(url) >= n, 600, poll_s=0.02)
        cpu_ms = (_cpu_s(manager.pid) - cpu_before) * 1000
        return Drained((n - first) / seconds, cpu_ms / max(1, n - first))
    finally:
        manager.stop()
        svc.stop(lambda_proc)


def run(
    svc: Services, n: int, repeats: int, latencies: tuple[float, ...] = (0.0, 30.0)
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for latency in latencies:
        entry: dict[str, Any] = {}
        for name in ("courierflow", "lab"):
            count = n if name == "courierflow" or latency == 0 else max(200, n // 10)
            entry[name] = {
                "orders": count,
                "orders_per_s": summary(
                    [_measure(svc, name, latency, count) for _ in range(repeats)]
                ),
            }
        results[f"{latency:g}ms"] = entry
    return results


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
