"""End to end: a file of orders through the whole local stack, against the ideal bound
for the fleet, and the same workload on Celery."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import Services, percentiles, summary, write_orders_csv
from bench.peers.celery import run as celery_run
from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.local import runner, stack
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary


def ideal_s(delays: list[float], fleet: int) -> float:
    """The fleet's bound: the longest trip, or all the trips spread over the fleet."""
    return max(max(delays), sum(delays) / fleet) if delays else 0.0


def run_figures(result: RunSummary, n: int, ideal: float) -> dict[str, Any]:
    """A run's figures against the fleet's bound ``ideal``."""
    return {
        "orders": n,
        "delivered": result.delivered,
        "lost": result.lost,
        "makespan_s": result.makespan_s,
        "ideal_s": ideal,
        "makespan_over_ideal": result.makespan_s / ideal if ideal else 0.0,
        "deliveries_per_s": result.delivered / result.makespan_s if result.makespan_s else 0.0,
        "peak_concurrency": result.peak_concurrency,
    }


def _ours(svc: Services, n: int, fleet: int, time_scale: float, warm: bool) -> dict[str, Any]:
    """One run; ``warm``: the fleet's environments are started with the stack (the Lambda
    service's provisioned concurrency), as Celery's workers are before its clock starts."""
    home = svc.work / f"stack-{time.time_ns()}"
    env = {**os.environ, "COURIERFLOW_HOME": str(home), "COURIERFLOW_AMQP_URL": svc.amqp_url}
    settings = Settings.from_env(env)
    options = stack.StackOptions(
        fleet=fleet, time_scale=time_scale, stuck_after_s=300, provisioned=fleet if warm else 0
    )
    info = stack.up(settings, options)
    try:
        path = write_orders_csv(svc.work / "e2e.csv", n)
        ledger = open_ledger(info.ledger_url)
        started = time.time()
        key, etag = runner.upload(info, path)
        result = runner.follow(ledger, info.bucket, key, etag, started, 120)
        records = [r for r in ledger.orders() if r.state is OrderState.DELIVERED]
    finally:
        stack.down(home)
    ideal = ideal_s([(r.delay_s or 0) * time_scale for r in records], fleet)
    waits = [(r.started_at or 0) - (r.queued_at or 0) for r in records]
    first_start = min((r.started_at or started for r in records), default=started) - started
    # deliveries' own overhead: time on the road beyond the simulated trip
    overhead = [
        (r.finished_at or 0) - (r.started_at or 0) - (r.delay_s or 0) * time_scale for r in records
    ]
    return {
        **run_figures(result, n, ideal),
        "queue_to_start_s": percentiles(waits),
        "upload_to_first_start_s": first_start,
        "delivery_overhead_s": percentiles(overhead),
    }


CELERY_POOLS = ("threads", "gevent")


def _variant(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "makespan_s": summary([r["makespan_s"] for r in runs]),
        "makespan_over_ideal": summary([r["makespan_over_ideal"] for r in runs]),
        "deliveries_per_s": summary([r["deliveries_per_s"] for r in runs]),
        "runs": runs,
    }


def run(svc: Services, n: int, fleet: int, time_scale: float, repeats: int) -> dict[str, Any]:
    ours: dict[str, list[dict[str, Any]]] = {"on_demand": [], "warm": []}
    for _ in range(repeats):  # interleaved, so that a drift of the machine hits both
        for variant in ours:
            ours[variant].append(_ours(svc, n, fleet, time_scale, warm=variant == "warm"))
    path = write_orders_csv(svc.work / "celery.csv", n)
    celery: dict[str, Any] = {}
    for pool in CELERY_POOLS:
        runs = [celery_run.run(svc, path, fleet, time_scale, pool) for _ in range(repeats)]
        celery[pool] = {
            "makespan_s": summary([r["makespan_s"] for r in runs]),
            "deliveries_per_s": summary([r["deliveries_per_s"] for r in runs]),
        }
    best = max(celery, key=lambda pool: celery[pool]["deliveries_per_s"]["median"])
    return {
        "fleet": fleet,
        "time_scale": time_scale,
        # environments started on demand (the local stack's default) or all before
        "courierflow": _variant(ours["on_demand"]),
        "courierflow_warm": _variant(ours["warm"]),
        "celery": {"best_pool": best, **celery},
    }
