"""Publish: CSV in the bucket -> orders confirmed by RabbitMQ, ours vs the lab's."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from bench.common import Services, summary, upload, write_orders_csv


def _run(svc: Services, argv: list[str], queue: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", *argv], env=svc.env(), capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def run(svc: Services, sizes: list[int], repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for rows in sizes:
        path = write_orders_csv(svc.work / f"orders-{rows}.csv", rows)
        key = path.name
        upload(svc, "bench-orders", key, path)
        runs: dict[str, list[dict[str, Any]]] = {"courierflow": [], "lab": [], "lab_confirms": []}
        reps = repeats if rows <= 100_000 else 1
        for _ in range(reps):
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            ledger = svc.work / f"ledger-{uuid.uuid4().hex[:6]}.db"
            argv = ["bench.publish_worker", svc.amqp_url, queue, "bench-orders", key, str(ledger)]
            runs["courierflow"].append(_run(svc, argv, queue))
            _delete_queues(svc, queue, f"{queue}.dlq")
            if rows <= 100_000:  # the lab's one-round-trip-per-row publisher is slow
                lab = ["bench.peers.lab_baseline.publisher", svc.amqp_url, f"lab-{queue}"]
                runs["lab"].append(_run(svc, [*lab, "bench-orders", key], queue))
                runs["lab_confirms"].append(
                    _run(svc, [*lab, "bench-orders", key, "--confirm"], queue)
                )
                _delete_queues(svc, f"lab-{queue}")
        entry: dict[str, Any] = {}
        for name, measured in runs.items():
            if measured:
                entry[name] = {
                    "orders_per_s": summary([m["published"] / m["seconds"] for m in measured]),
                    "rss_mb": summary([m["rss_mb"] for m in measured]),
                }
        results[str(rows)] = entry
        path.unlink()
    return results


def _delete_queues(svc: Services, *queues: str) -> None:
    """Delete the queues a run filled, so the next run's broker holds nothing of it."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(svc.amqp_url))
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)
    finally:
        conn.close()
