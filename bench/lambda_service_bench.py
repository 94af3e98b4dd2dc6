"""The local Lambda service on its own: Event accept latency at a paced rate, cold and
warm invokes, and how many sleeping environments fit in how much memory.

Run ``python -m bench.lambda_service_bench [--smoke]``. It starts its own service
processes (nothing else is needed), writes ``bench/results/lambda_service.json`` and
prints a markdown table. The client runs on the same machine as the service, so its
own CPU use is inside the latency figures; requests are not SigV4-signed (the local
service does not check signatures; boto3's signing would cost the client ~0.3 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from courierflow.local.processes import free_port

BENCH = Path(__file__).parent
RESULTS = BENCH / "results"
API = "/2015-03-31/functions"
#: the readiness line `courierflow lambda serve` prints
READY = "courierflow lambda service listening on"
#: seconds a service may take to print its readiness line
START_TIMEOUT_S = 60.0
#: keep-alive connections the paced client may open
CLIENT_CONNECTIONS = 64
#: warm sync invokes measured
WARM_INVOKES = 500


@dataclass
class RunningService:
    """One `courierflow lambda serve` started by the benchmark."""

    process: subprocess.Popen[str]
    url: str
    state_dir: Path


@contextlib.contextmanager
def lambda_service(work: Path, function: str, *sets: str) -> Iterator[RunningService]:
    """Start a service with one function ``fn`` (a handler in bench/handlers.py); stop
    it by PID (SIGTERM, then SIGKILL) when done."""
    port = free_port()
    state = work / f"state-{port}"
    argv = [
        sys.executable, "-m", "courierflow.local.lambda_service", "serve",
        "--port", str(port), "--state-dir", str(state), "--code-dir", str(BENCH),
        "--function", f"fn={function}", *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    with open(work / f"service-{port}.log", "w") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while READY not in line:
            line = proc.stdout.readline()
            if (not line and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"lambda service did not start; see {errors.name}")
        yield RunningService(proc, f"http://127.0.0.1:{port}", state)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of ``values`` (nearest rank)."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    pick = {
        f"p{p}": ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] for p in (50, 95, 99)
    }
    return {**pick, "max": ordered[-1]}


async def _paced_events(url: str, rate: int, seconds: float) -> dict[str, Any]:
    """Open loop: request i is sent at ``start + i / rate`` whether or not earlier ones
    were answered. Latency is from the scheduled send time (no coordinated omission)."""
    body = json.dumps({"order_id": "BENCH-1", "items": ["a", "b"]}).encode()
    headers = {"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}
    target = f"{url}{API}/fn/invocations"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(scheduled: float) -> None:
            async with session.post(target, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append((time.perf_counter() - scheduled) * 1000)

        for _ in range(20):  # warm the connections up
            await one(time.perf_counter())
        latencies.clear()
        statuses.clear()
        total = int(rate * seconds)
        tasks: list[asyncio.Task[None]] = []
        gc.collect()
        gc.freeze()  # the client's own collector pauses are not the service's latency
        begin = time.perf_counter()
        for i in range(total):
            scheduled = begin + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
        gc.unfreeze()
    return {
        "target_rate": rate,
        "achieved_rate": total / elapsed,
        "requests": total,
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": percentiles(latencies),
    }


def accept_latency(work: Path, rate: int, seconds: float) -> dict[str, Any]:
    """Event invokes at ``rate``/s for ``seconds`` while the events run on 16 environments."""
    with lambda_service(work, "handlers:noop", "fn.concurrency=16") as svc:
        result: dict[str, Any] = _run_async(_paced_events(svc.url, rate, seconds))
        return result


async def _sync_invokes(url: str, count: int) -> tuple[float, list[float]]:
    target = f"{url}{API}/fn/invocations"
    async with aiohttp.ClientSession() as session:

        async def one() -> float:
            start = time.perf_counter()
            async with session.post(target, data=b"{}") as response:
                await response.read()
                assert response.status == 200, response.status
            return (time.perf_counter() - start) * 1000

        cold = await one()
        warm = [await one() for _ in range(count)]
    return cold, warm


def starts(work: Path, count: int) -> dict[str, Any]:
    """Cold invoke (fork + connect + run) and warm invokes of a no-op handler, measured
    by the client; overhead is the client's time minus the handler's own Duration."""
    with lambda_service(work, "handlers:noop", "fn.concurrency=1") as svc:
        cold, warm = _run_async(_sync_invokes(svc.url, count))
        time.sleep(0.2)
        lines = (svc.state_dir / "logs" / "fn.log").read_text().splitlines()
    reports = [x for x in lines if x.startswith("REPORT")]
    durations = [float(x.split("\tDuration: ")[1].split(" ms")[0]) for x in reports]
    overhead = [total - inside for total, inside in zip(warm, durations[1:], strict=False)]
    init = [x.split("Init Duration: ")[1] for x in reports if "Init Duration" in x]
    return {
        "cold_invoke_ms": cold,
        "init_duration": init[0] if init else "",
        "warm_invoke_ms": percentiles(warm),
        "warm_overhead_ms": percentiles(overhead),
    }


def tree_memory(pid: int) -> dict[str, float]:
    """RSS, PSS (shared pages split among their users) and USS summed over a process
    tree, in MB. RSS counts every shared page once per process, so it overstates."""
    root = psutil.Process(pid)
    rss = pss = uss = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.uss)
            uss += info.uss
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "uss_mb": uss / 2**20}


async def _fill(url: str, n: int) -> None:
    target = f"{url}{API}/fn/invocations"
    headers = {"X-Amz-Invocation-Type": "Event"}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(target, data=b'{"seconds": 120}', headers=headers) as r:
                assert r.status == 202, r.status


def environments(work: Path, n: int) -> dict[str, Any]:
    """``n`` concurrent sleeping environments: time until all run, and their memory."""
    sets = (f"fn.concurrency={n}", "fn.timeout=300")
    with lambda_service(work, "handlers:sleeper", *sets) as svc:
        started = time.perf_counter()
        _run_async(_fill(svc.url, n))
        busy = 0
        while busy < n:
            if time.perf_counter() - started > 120:
                raise TimeoutError(f"only {busy} of {n} environments busy after 120 s")
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                import urllib.request

                with urllib.request.urlopen(f"{svc.url}/health", timeout=5) as answer:
                    busy = int(json.load(answer)["functions"]["fn"]["busy"])
        ready = time.perf_counter() - started
        memory = tree_memory(svc.process.pid)
        processes = 1 + len(psutil.Process(svc.process.pid).children(recursive=True))
    return {
        "environments": n,
        "processes": processes,
        "all_busy_after_s": ready,
        **memory,
        "per_env_pss_mb": memory["pss_mb"] / n,
    }


def _run_async(work: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (a cheaper client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def run(smoke: Any = False, services: Any = None) -> dict[str, Any]:
    """Every measurement; ``smoke`` runs tiny sizes (< 20 s).

    ``bench/run.py`` calls ``run(services, smoke)``: the services are not needed (this
    benchmark starts its own), so that order is accepted too.
    """
    if not isinstance(smoke, bool):
        smoke = bool(services)
    with tempfile.TemporaryDirectory(prefix="cf-lambda-bench-") as tmp:
        work = Path(tmp)
        return {
            "accept": accept_latency(work, 200 if smoke else 1000, 1.0 if smoke else 10.0),
            "starts": starts(work, 50 if smoke else WARM_INVOKES),
            "environments": environments(work, 16 if smoke else 256),
        }


def table(results: dict[str, Any]) -> str:
    """The figures as a small markdown table."""
    acc, st, env = results["accept"], results["starts"], results["environments"]
    lat, warm, over = acc["latency_ms"], st["warm_invoke_ms"], st["warm_overhead_ms"]
    rows = [
        ("measure", "figure", "goal"),
        ("---", "---", "---"),
        (
            f"Event accept at {acc['target_rate']}/s (achieved {acc['achieved_rate']:.0f}/s), "
            "p50 / p99 / max",
            f"{lat['p50']:.2f} / {lat['p99']:.2f} / {lat['max']:.1f} ms",
            "p99 < 5 ms",
        ),
        (
            "cold invoke (client) / Init Duration",
            f"{st['cold_invoke_ms']:.1f} ms / {st['init_duration']}",
            "-",
        ),
        ("warm sync invoke p50 / p99", f"{warm['p50']:.2f} / {warm['p99']:.2f} ms", "-"),
        (
            "warm overhead (client - handler) p50 / p99",
            f"{over['p50']:.2f} / {over['p99']:.2f} ms",
            "< 2 ms",
        ),
        (
            f"{env['environments']} sleeping environments: PSS / USS / RSS sum",
            f"{env['pss_mb']:,.0f} / {env['uss_mb']:,.0f} / {env['rss_mb']:,.0f} MB",
            "< 3 GB",
        ),
        ("time until all are busy", f"{env['all_busy_after_s']:.2f} s", "-"),
    ]
    return "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 20 s")
    args = parser.parse_args()
    results = run(args.smoke)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "lambda_service_smoke.json" if args.smoke else "lambda_service.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten to {RESULTS / name}")


if __name__ == "__main__":
    main()
