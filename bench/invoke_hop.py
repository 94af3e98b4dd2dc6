"""The Invoke hop's CPU per call, piece by piece, small enough to run beside other jobs.

    python -m bench.invoke_hop signer            # SigV4 headers for one request
    python -m bench.invoke_hop template          # the same from a per-function template
    python -m bench.invoke_hop invoker           # invoke_event, the HTTP exchange stubbed
    python -m bench.invoke_hop service --events 5000

``signer``, ``template`` and ``invoker`` run in this process and print CPU µs per call for each of
``--repeats`` timings of ``--calls`` calls. ``service`` starts a local Lambda service
with a no-op function on 16 environments, sends ``--events`` Event invokes through the
manager's ``EventInvoker`` (64 in flight), waits until every event ran, and prints the
CPU (user + system) the service process spent per event, and that of its environments.
Each run prints one line per repetition; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import psutil
from botocore.credentials import ReadOnlyCredentials

from bench.lambda_service_bench import lambda_service
from courierflow.manager.event_invoker import EventInvoker, SigV4Signer
from courierflow.orders import Order

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("signer", "template", "invoker", "service"))
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
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
    bench = {"signer": bench_signer, "template": bench_template, "invoker": bench_invoker}
    runs = bench[args.part](args.calls, args.repeats)
    print(" ".join(f"{us:.2f}" for us in runs), "µs/call;", f"min {min(runs):.2f}")


if __name__ == "__main__":
    main()
