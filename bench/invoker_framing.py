"""The manager's HTTP framing, side by side: its own HTTP/1.1 on asyncio streams against
aiohttp's client, in one run, on the same machine, broker and Lambda service.

Each repetition drains the same number of orders from RabbitMQ through a manager process
(the real ``Dispatcher``, ``DEFAULT_MAX_IN_FLIGHT`` invokes in flight) into the local
Lambda service, once per framing, the order alternating between repetitions; throughput
is counted by the service itself (``/health``: async_accepted), as ``bench.dispatch``
does. Only the framing differs: the aiohttp variant is ``EventInvoker`` with its
``_post`` on an ``aiohttp.ClientSession`` (same signer, same credentials).

    python -m bench.invoker_framing --orders 5000 --repeats 5

Prints each run, the medians with their spread, and the ratio aiohttp/hand of each
repetition; writes bench/results/invoker_framing.json.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
from functools import partial
from types import FrameType
from typing import Any

import aiohttp
import boto3
from yarl import URL

from bench.common import RESULTS, Services, services, summary
from bench.dispatch import PYTHON, drain_queue
from courierflow.config import Settings
from courierflow.errors import InvokeError
from courierflow.manager.dispatcher import DEFAULT_MAX_IN_FLIGHT
from courierflow.manager.event_invoker import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, EventInvoker
from courierflow.manager.service import build_dispatcher

FRAMINGS = ("hand", "aiohttp")


class AiohttpEventInvoker(EventInvoker):
    """``EventInvoker`` with aiohttp framing the requests: a pool of keep-alive
    connections (``TCPConnector(limit=max_connections)``), one request at a time on each."""

    def __init__(self, lambda_client: Any, max_connections: int = 256, **kwargs: Any) -> None:
        super().__init__(lambda_client, max_connections, **kwargs)
        self._client: aiohttp.ClientSession | None = None

    async def _post(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ssl=self._tls if self._tls else False
                ),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        url = URL(self.endpoint.removesuffix(self._base_path) + path, encoded=True)
        try:
            async with self._client.post(url, data=body, headers=headers) as answer:
                data = await answer.read()
                return answer.status, {k.lower(): v for k, v in answer.headers.items()}, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InvokeError(f"cannot reach Lambda at {self.endpoint}: {exc!r}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        await super().close()


def serve_manager(framing: str) -> None:
    """The manager as ``courierflow manager`` runs it, with ``framing``'s invoker."""
    settings = Settings.from_env()
    dispatcher = build_dispatcher(settings)
    if framing == "aiohttp":
        session = boto3.Session(region_name=settings.region)
        dispatcher.invoker = AiohttpEventInvoker(
            session.client("lambda"), DEFAULT_MAX_IN_FLIGHT, session=session
        )

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        dispatcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher.run()


def manager_argv(framing: str, _queue: str) -> list[str]:
    return [*PYTHON, "bench.invoker_framing", "--manager", framing]


def run(svc: Services, n: int, repeats: int, latency_ms: float = 0.0) -> dict[str, Any]:
    runs: dict[str, list[float]] = {name: [] for name in FRAMINGS}
    cpu: dict[str, list[float]] = {name: [] for name in FRAMINGS}
    for rep in range(repeats):
        order = FRAMINGS if rep % 2 == 0 else FRAMINGS[::-1]
        for framing in order:
            got = drain_queue(svc, framing, partial(manager_argv, framing), latency_ms, n)
            runs[framing].append(got.orders_per_s)
            cpu[framing].append(got.manager_cpu_ms_per_order)
            print(
                f"  run {rep + 1}/{repeats} {framing:8s} {got.orders_per_s:8,.0f} orders/s, "
                f"manager CPU {got.manager_cpu_ms_per_order:.3f} ms/order",
                flush=True,
            )
    return {
        "orders": n,
        "latency_ms": latency_ms,
        "orders_per_s": {name: summary(values) for name, values in runs.items()},
        "manager_cpu_ms_per_order": {name: summary(values) for name, values in cpu.items()},
        "ratio_aiohttp_over_hand": _ratios(runs),
        "cpu_ratio_aiohttp_over_hand": _ratios(cpu),
    }


def _ratios(runs: dict[str, list[float]]) -> dict[str, Any]:
    """aiohttp over hand: the ratio of the medians, and each repetition's own ratio."""
    per_repetition = [_ratio(a, h) for a, h in zip(runs["aiohttp"], runs["hand"], strict=True)]
    return {
        "of_medians": _ratio(statistics.median(runs["aiohttp"]), statistics.median(runs["hand"])),
        "per_repetition": summary(per_repetition),
    }


def _ratio(a: float, b: float) -> float:
    """``a / b``; NaN when a tiny run drained before it was timed (``b`` is 0)."""
    return a / b if b else math.nan


def report(result: dict[str, Any]) -> str:
    lines = [f"dispatch of {result['orders']:,} orders, Invoke latency {result['latency_ms']:g} ms"]
    for name, stat in result["orders_per_s"].items():
        lines.append(
            f"  {name:8s} median {stat['median']:8,.0f} orders/s "
            f"[{stat['min']:,.0f}-{stat['max']:,.0f}, {stat['runs']} runs]"
        )
    for name, stat in result["manager_cpu_ms_per_order"].items():
        lines.append(
            f"  {name:8s} manager CPU median {stat['median']:.3f} ms/order "
            f"[{stat['min']:.3f}-{stat['max']:.3f}]"
        )
    for key, what in (("ratio_aiohttp_over_hand", "orders/s"), ("cpu_ratio_aiohttp_over_hand",
                                                               "CPU per order")):  # fmt: skip
        ratio = result[key]
        per = ratio["per_repetition"]
        lines.append(
            f"  aiohttp/hand, {what}: {ratio['of_medians']:.3f} (ratio of medians); per "
            f"repetition median {per['median']:.3f} [{per['min']:.3f}-{per['max']:.3f}]"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--manager", choices=FRAMINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.manager:
        serve_manager(args.manager)
        return
    with services() as svc:
        result = run(svc, args.orders, args.repeats, args.latency_ms)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "invoker_framing.json").write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
