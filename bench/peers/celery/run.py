"""Run the Celery peer: a worker pool sized like our fleet, the same orders, the same
delays; returns makespan and deliveries/s."""

from __future__ import annotations

import csv
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Services, wait_for
from bench.procstats import ProcessSampler, current_thread_cpu
from courierflow.local.processes import spawn


def run(
    svc: Services,
    csv_path: Path,
    fleet: int,
    time_scale: float,
    pool: str = "threads",
    sampler: Callable[[int], ProcessSampler] | None = None,
) -> dict[str, Any]:
    """One run; ``sampler``, given the worker's pid, returns the processes to sample from
    the first task sent to the last one done (the result then has ``cpu``, with the
    producer's own CPU seconds as role ``producer``, and ``delays``)."""
    queue = f"celery-{uuid.uuid4().hex[:6]}"
    done = svc.work / f"{queue}.done"
    env = svc.env(
        CELERY_BENCH_QUEUE=queue,
        CELERY_BENCH_DONE=str(done),
        COURIERFLOW_TIME_SCALE=str(time_scale),
    )
    argv = [sys.executable, "-m", "celery", "-A", "bench.peers.celery.tasks", "worker",
            "-P", pool, "-c", str(fleet), "-Q", queue, "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "WARNING"]  # fmt: skip
    worker = spawn("celery", argv, svc.work / f"{queue}.log", env)
    try:
        import os

        os.environ.update(env)
        from bench.peers.celery import tasks

        tasks.app.conf.broker_url = svc.amqp_url
        tasks.app.conf.task_default_queue = queue
        with open(csv_path, newline="") as source:
            ids = [row["order_id"] for row in csv.DictReader(source)]
        time.sleep(3)  # let the worker connect
        sampling = sampler(worker.pid) if sampler else None
        if sampling:
            sampling.start()
        started = time.time()
        producer_cpu = current_thread_cpu()
        with tasks.app.producer_or_acquire() as producer:
            for order_id in ids:
                tasks.deliver.apply_async((order_id,), queue=queue, producer=producer)
        producer_cpu_s = producer_cpu()
        wait_for(lambda: done.exists() and done.read_text().count("\n") >= len(ids), 3600, 0.2)
        cpu = sampling.stop() if sampling else None
        rows = [line.split(",") for line in done.read_text().splitlines()]
        makespan = max(float(r[2]) for r in rows) - started
        result: dict[str, Any] = {"pool": pool, "orders": len(ids), "makespan_s": makespan,
                                  "deliveries_per_s": len(ids) / makespan}  # fmt: skip
        if cpu is not None:
            cpu["roles"]["producer"] = {"cpu_s": round(producer_cpu_s, 3)}
            result["cpu"] = cpu
            result["delays"] = [int(r[3]) for r in rows]
        return result
    finally:
        worker.stop()
