"""Dispatch: orders in the queue -> invocations accepted by the local Lambda service.

Counted by the service itself (``/health``: async_accepted), from the first accepted
invocation to the last, with the Invoke answering at once and with injected latency."""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from typing import Any

from bench.common import Services, summary, wait_for
from courierflow.local.processes import spawn
from courierflow.orders import Order
from courierflow.transports.base import OutgoingMessage
from courierflow.transports.rabbitmq import RabbitMQTransport


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


def _measure(svc: Services, name: str, latency_ms: float, n: int) -> float:
    """Orders/s of one manager ("courierflow" or "lab") draining ``n`` orders."""
    url = svc.start_lambda(
        f"lambda-{name}-{uuid.uuid4().hex[:4]}",
        {"lambda_delivery": "handlers:noop"},
        "--set", "lambda_delivery.concurrency=16", "--inject-latency-ms", str(latency_ms),
    )  # fmt: skip
    lambda_proc = svc.processes[-1]
    queue = f"dispatch-{uuid.uuid4().hex[:6]}"
    _fill(svc, queue, n, durable_quorum=name == "courierflow")
    env = svc.env(
        AWS_ENDPOINT_URL_LAMBDA=url,
        COURIERFLOW_QUEUE=queue,
        COURIERFLOW_LEDGER_URL=f"sqlite:///{svc.work / (queue + '.db')}",
    )
    if name == "courierflow":
        argv = [sys.executable, "-m", "courierflow.cli", "manager"]
    else:
        argv = [sys.executable, "-m", "bench.peers.lab_baseline.manager", svc.amqp_url, queue]
    manager = spawn(name, argv, svc.work / f"{queue}.log", env)
    try:
        wait_for(lambda: accepted(url) > 0, 60)
        first = accepted(url)
        seconds = wait_for(lambda: accepted(url) >= n, 600, poll_s=0.02)
        return (n - first) / seconds
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
