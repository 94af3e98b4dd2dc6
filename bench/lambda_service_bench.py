"""The local Lambda service on its own: Event accept latency at a paced rate, cold and
warm start, and how many sleeping environments fit in how much memory."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

from bench.common import Services, percentiles, tree_memory_mb, wait_for
from courierflow.local.stack import LOCAL_CREDENTIALS
from courierflow.manager.invoker import EventInvoker


def _client(url: str) -> Any:
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", **LOCAL_CREDENTIALS)


def accept_latency(svc: Services, rate: int, seconds: float) -> dict[str, Any]:
    """Open-loop: ``rate`` Event invokes per second for ``seconds``; latency of each."""
    url = svc.start_lambda("lat", {"fn": "handlers:noop"}, "--set", "fn.concurrency=16")
    proc = svc.processes[-1]
    invoker = EventInvoker(_client(url), max_connections=64)
    body = json.dumps({"order_id": "L-1"}).encode()
    latencies: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.perf_counter()
        invoker.invoke_event("fn", body)
        with lock:
            latencies.append((time.perf_counter() - start) * 1000)

    total = int(rate * seconds)
    begin = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        for i in range(total):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    achieved = total / (time.perf_counter() - begin)
    svc.stop(proc)
    return {"target_rate": rate, "achieved_rate": achieved, "latency_ms": percentiles(latencies)}


def starts(svc: Services) -> dict[str, Any]:
    """Cold start (a new environment forked) and warm invoke, measured by the client."""
    url = svc.start_lambda("starts", {"fn": "handlers:noop"}, "--set", "fn.concurrency=1")
    proc = svc.processes[-1]
    client = _client(url)
    start = time.perf_counter()
    client.invoke(FunctionName="fn", Payload=b"{}")
    cold = (time.perf_counter() - start) * 1000
    warm: list[float] = []
    for _ in range(300):
        start = time.perf_counter()
        client.invoke(FunctionName="fn", Payload=b"{}")
        warm.append((time.perf_counter() - start) * 1000)
    overhead = []
    log = (svc.work / "starts" / "logs" / "fn.log").read_text().splitlines()
    durations = [
        float(x.split("Duration: ")[1].split(" ms")[0]) for x in log if x.startswith("REPORT")
    ]
    for total, inside in zip(warm, durations[1:], strict=False):
        overhead.append(total - inside)
    init = [x for x in log if "Init Duration" in x]
    svc.stop(proc)
    return {
        "cold_invoke_ms": cold,
        "warm_invoke_ms": percentiles(warm),
        "warm_overhead_ms": percentiles(overhead),
        "init_line": init[0].split("\t")[-1] if init else "",
    }


def environments(svc: Services, n: int) -> dict[str, Any]:
    """``n`` concurrent sleeping environments: time to get them all running, memory."""
    url = svc.start_lambda("envs", {"fn": "handlers:sleeper"}, "--set", f"fn.concurrency={n}",
                           "--set", "fn.timeout=120")  # fmt: skip
    proc = svc.processes[-1]
    client = _client(url)
    started = time.perf_counter()
    for _ in range(n):
        client.invoke(FunctionName="fn", InvocationType="Event", Payload=b'{"seconds": 60}')

    def busy() -> int:
        doc = json.load(__import__("urllib.request").request.urlopen(f"{url}/health"))
        return int(doc["functions"]["fn"]["busy"])

    wait_for(lambda: busy() >= n, 120, 0.2)
    ready = time.perf_counter() - started
    memory = tree_memory_mb(proc.pid)
    svc.stop(proc)
    return {
        "environments": n,
        "all_busy_after_s": ready,
        **memory,
        "per_env_pss_mb": memory["pss_mb"] / n,
    }


def run(svc: Services, smoke: bool) -> dict[str, Any]:
    return {
        "accept": accept_latency(svc, 1000 if not smoke else 200, 10 if not smoke else 1),
        "starts": starts(svc),
        "environments": environments(svc, 256 if not smoke else 16),
    }
