"""Short deliveries: when trips take 20-100 ms, the pipeline's own cost per order bounds
the run. courierflow (warm fleet) and Celery (threads pool of the same size, the same
RabbitMQ) side by side, with the CPU seconds each process spent per order.

    python -m bench.short [ORDERS] [--repeats N]

Writes bench/results/short_deliveries.json and prints the table rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Services, services, spread, summary, write_orders_csv
from bench.e2e import ideal_s, run_figures
from bench.peers.celery import run as celery_run
from bench.procstats import (
    ProcessSampler,
    broker_processes,
    children_matching,
    one,
    per_order_ms,
)
from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.local import runner, stack
from courierflow.orders import OrderState

#: the regime of issue 15: 50,000 orders, delays x0.01 (20-100 ms), a warm fleet of 256
ORDERS = 50_000
TIME_SCALE = 0.01
FLEET = 256
#: seconds without progress before the follow gives up (what is left is lost)
STALL_S = 120
#: our processes, in the order the table shows them
OUR_ROLES = (
    "publisher",
    "broker",
    "manager",
    "lambda_service",
    "environments",
    "reconciler",
    "moto",
)


def lambda_health(lambda_url: str) -> dict[str, Any]:
    """The local Lambda service's /health: counters and environments of each function."""
    with urllib.request.urlopen(f"{lambda_url}/health", timeout=10) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def our_sampler(info: stack.StackInfo, broker: Any) -> ProcessSampler:
    """Every process of a running stack, by role (the publisher's environments are told
    from the delivery's by the function named in their zygote's command line)."""
    service = info.pids["lambda"]
    managers = [pid for name, pid in info.pids.items() if name.startswith("manager")]

    def manager_procs() -> list[Any]:
        return [p for pid in managers for p in one(pid)()]

    return ProcessSampler(
        {
            "publisher": children_matching(service, stack.PUBLISHER),
            "broker": broker,
            "manager": manager_procs,
            "lambda_service": one(service),
            "environments": children_matching(service, stack.PUBLISHER, present=False),
            "reconciler": one(info.pids["reconciler"]),
            "moto": one(info.pids["moto"]),
        }
    )


def _ours(svc: Services, path: Path, n: int, fleet: int, time_scale: float) -> dict[str, Any]:
    home = svc.work / f"short-{time.time_ns()}"
    env = {**os.environ, "COURIERFLOW_HOME": str(home), "COURIERFLOW_AMQP_URL": svc.amqp_url}
    options = stack.StackOptions(fleet=fleet, time_scale=time_scale, provisioned=fleet)
    info = stack.up(Settings.from_env(env), options)
    try:
        ledger = open_ledger(info.ledger_url)
        sampler = our_sampler(info, broker_processes(svc.amqp_url, svc.broker_pid))
        sampler.start()
        started = time.time()
        key, etag = runner.upload(info, path)
        result = runner.follow(ledger, info.bucket, key, etag, started, STALL_S)
        cpu = sampler.stop()
        invokes = lambda_health(info.lambda_url)["functions"][stack.DELIVERY]["async_accepted"]
        delays = [
            (r.delay_s or 0) * time_scale
            for r in ledger.orders()
            if r.state is OrderState.DELIVERED
        ]
    finally:
        stack.down(home)
    return {
        **run_figures(result, n, ideal_s(delays, fleet)),
        "duplicate_invokes": invokes - n,
        "duplicates_skipped": result.duplicates,
        "cpu": cpu,
        "cpu_ms_per_order": per_order_ms(cpu, n),
    }


def _celery(svc: Services, path: Path, n: int, fleet: int, time_scale: float) -> dict[str, Any]:
    broker = broker_processes(svc.amqp_url, svc.broker_pid)

    def sampler(worker: int) -> ProcessSampler:
        return ProcessSampler({"broker": broker, "worker": one(worker)})

    run = celery_run.run(svc, path, fleet, time_scale, "threads", sampler=sampler)
    delays = [d * time_scale for d in run.pop("delays")]
    bound = ideal_s(delays, fleet)
    return {
        **run,
        "ideal_s": bound,
        "makespan_over_ideal": run["makespan_s"] / bound if bound else 0.0,
        "cpu_ms_per_order": per_order_ms(run["cpu"], n),
    }


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    roles = runs[0]["cpu_ms_per_order"]
    return {
        "deliveries_per_s": summary([r["deliveries_per_s"] for r in runs]),
        "makespan_s": summary([r["makespan_s"] for r in runs]),
        "makespan_over_ideal": summary([r["makespan_over_ideal"] for r in runs]),
        "cpu_ms_per_order": {
            role: summary([r["cpu_ms_per_order"][role] for r in runs]) for role in roles
        },
        "runs": runs,
    }


def run(
    svc: Services,
    n: int = ORDERS,
    fleet: int = FLEET,
    time_scale: float = TIME_SCALE,
    repeats: int = 2,
) -> dict[str, Any]:
    """``repeats`` pairs, each courierflow then Celery on the same file (interleaved, so
    that a drift of the machine hits both); ratios are taken within each pair."""
    path = write_orders_csv(svc.work / f"short-{n}.csv", n)
    ours: list[dict[str, Any]] = []
    celery: list[dict[str, Any]] = []
    for i in range(repeats):
        ours.append(_ours(svc, path, n, fleet, time_scale))
        celery.append(_celery(svc, path, n, fleet, time_scale))
        rates = [r[-1]["deliveries_per_s"] for r in (ours, celery)]
        print(
            f"  short deliveries {i + 1}/{repeats}: courierflow {rates[0]:,.0f}/s, "
            f"Celery {rates[1]:,.0f}/s",
            flush=True,
        )
    ratios = [
        o["deliveries_per_s"] / c["deliveries_per_s"] for o, c in zip(ours, celery, strict=True)
    ]
    return {
        "orders": n,
        "fleet": fleet,
        "time_scale": time_scale,
        "courierflow": _stats(ours),
        "celery": _stats(celery),
        "ratio": summary(ratios),
    }


def rows(short: dict[str, Any]) -> list[str]:
    """The README table's rows for this regime."""
    ours, celery, n = short["courierflow"], short["celery"], short["orders"]
    cpu = ours["cpu_ms_per_order"]
    label = f"short deliveries {n:,} orders, fleet {short['fleet']}, x{short['time_scale']}"
    breakdown = ", ".join(f"{role} {cpu[role]['median']:.3f}" for role in OUR_ROLES if role in cpu)
    theirs = celery["cpu_ms_per_order"]
    return [
        f"| {label}, warm fleet: deliveries/s | {spread(ours['deliveries_per_s'])} "
        f"(makespan {spread(ours['makespan_s'], '.1f')} s, "
        f"{ours['makespan_over_ideal']['median']:.2f}x the fleet's bound) | Celery threads "
        f"{spread(celery['deliveries_per_s'])} ({celery['makespan_s']['median']:.1f} s) | "
        f"{spread(short['ratio'], '.2f')}x |",
        f"| {label}: CPU ms per order, all processes ({breakdown}) | "
        f"{spread(cpu['total'], '.3f')} | Celery (worker "
        f"{theirs['worker']['median']:.3f}, broker {theirs['broker']['median']:.3f}, producer "
        f"{theirs['producer']['median']:.3f}) {spread(theirs['total'], '.3f')} | - |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("orders", type=int, nargs="?", default=ORDERS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fleet", type=int, default=FLEET)
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE)
    args = parser.parse_args()
    with services() as svc:
        result = run(svc, args.orders, args.fleet, args.time_scale, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "short_deliveries.json").write_text(json.dumps(result, indent=2))
    print("\n".join(rows(result)))


if __name__ == "__main__":
    main()
