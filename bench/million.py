"""A million orders end to end, as a user runs them: ``courierflow up --fleet 256
--time-scale 0.01``, then ``courierflow submit`` of a valid 1,000,000-row file, until
every order is delivered.

    python -m bench.million [ROWS] [--fleet N] [--time-scale X]     (make bench-million)

Reports delivered, lost, duplicate invokes (the Lambda service's accepted Event invokes
of the delivery beyond one per order, and the attempts the ledger's claim skipped), wall
time, and the CPU seconds and peak RSS of every process of the stack. The live dashboard
is watched throughout as an open page watches it (its event stream, one snapshot a
second), and ``/api/snapshot`` is timed every few seconds as the ledger grows: the
dashboard's share of a core and the snapshot's latency are reported with the rest. The
stack runs on a RabbitMQ node of its own, under a scratch folder, and is stopped at the
end whatever happens. Writes bench/results/million.json (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import RESULTS, write_orders_csv
from bench.procstats import broker_processes, per_order_ms, tree
from bench.short import lambda_health, our_sampler
from courierflow.local import stack
from courierflow.local.processes import free_port

#: the regime of issue 15
ROWS = 1_000_000
FLEET = 256
TIME_SCALE = 0.01
#: seconds without progress before `submit` reports what is left as lost
STALL_S = 300
#: the goal for the publisher's peak RSS, MB
PUBLISHER_RSS_GOAL_MB = 100
#: seconds between timed /api/snapshot calls while the run goes on
SNAPSHOT_EVERY_S = 5.0


class PageStandIn:
    """What an open dashboard tab costs the stack: the page's event stream, read to the
    end of the run, and a timed ``/api/snapshot`` every ``SNAPSHOT_EVERY_S`` (latencies
    in milliseconds, in the order taken)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.events = 0
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._stream, daemon=True),
            threading.Thread(target=self._time_snapshots, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        ordered = sorted(self.latencies_ms)

        def at(share: float) -> float | None:
            return (
                round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)
                if ordered
                else None
            )

        return {
            "events_received": self.events,
            "snapshots_timed": len(ordered),
            "snapshot_ms_p50": at(0.5),
            "snapshot_ms_p99": at(0.99),
            "snapshot_ms_max": round(ordered[-1], 2) if ordered else None,
            "snapshot_ms_last_10": [round(v, 2) for v in self.latencies_ms[-10:]],
        }

    def _stream(self) -> None:
        try:
            with urllib.request.urlopen(f"{self.url}/events", timeout=30) as stream:
                for line in stream:
                    if self._stop.is_set():
                        return
                    if line.startswith(b"data:"):
                        self.events += 1
        except OSError as exc:
            print(f"dashboard stream ended: {exc}")

    def _time_snapshots(self) -> None:
        while not self._stop.wait(SNAPSHOT_EVERY_S):
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.url}/api/snapshot", timeout=30) as answer:
                    answer.read()
            except OSError as exc:
                print(f"snapshot failed: {exc}")
                continue
            self.latencies_ms.append((time.perf_counter() - began) * 1000)


def _courierflow() -> list[str]:
    exe = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "courierflow.cli"]


def run(rows: int, fleet: int, time_scale: float, work: Path) -> dict[str, Any]:
    home = work / "home"
    # nothing answers on a fresh port, so `up` starts a RabbitMQ node of the stack's own
    # rather than sharing a broker (and its "orders" queue) with anyone else
    env = {
        **os.environ,
        "COURIERFLOW_HOME": str(home),
        "COURIERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
    }
    started = time.time()
    path = write_orders_csv(work / f"orders-{rows}.csv", rows)
    csv_s = time.time() - started
    print(f"{rows:,} rows written in {csv_s:.1f} s ({path.stat().st_size / 2**20:.0f} MB)")
    up = [*_courierflow(), "up", "--fleet", str(fleet), "--time-scale", str(time_scale)]
    report = work / "summary.json"
    try:
        subprocess.run(up, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
        info = stack.load(home)
        assert info is not None
        sampler = our_sampler(info, broker_processes(info.amqp_url, info.pids.get("rabbitmq", 0)))
        page = PageStandIn(info.dashboard_url) if info.dashboard_url else None
        if "dashboard" in info.pids:
            sampler.roles["dashboard"] = tree(info.pids["dashboard"])
        submit = [*_courierflow(), "submit", str(path), "--output", "json"]
        submit += ["--stall-timeout", str(STALL_S), "--report-json", str(report)]
        began = time.time()
        with open(work / "submit.log", "wb") as log:
            proc = subprocess.Popen(submit, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler.roles["submit (upload, follow)"] = tree(proc.pid)
            sampler.start()
            if page:
                page.start()
            code = proc.wait()
        wall = time.time() - began
        cpu = sampler.stop()
        dashboard = page.stop() if page else {}
        health = lambda_health(info.lambda_url)["functions"][stack.DELIVERY]
    finally:
        subprocess.run([*_courierflow(), "down"], env=env, check=False, timeout=300)
    summary = json.loads(report.read_text()) if report.exists() else {}
    #: every order finished: only then is "accepted beyond one per order" a duplicate count
    complete = summary.get("delivered", 0) + summary.get("failed", 0) == rows
    return {
        "rows": rows,
        "fleet": fleet,
        "time_scale": time_scale,
        "complete": complete,
        "submit_exit_code": code,
        "wall_s": round(wall, 1),
        "delivered": summary.get("delivered"),
        "failed": summary.get("failed"),
        "lost": summary.get("lost"),
        "makespan_s": summary.get("makespan_s"),
        "peak_concurrency": summary.get("peak_concurrency"),
        "duplicate_invokes": health["async_accepted"] - rows if complete else None,
        "duplicates_skipped": summary.get("duplicates"),
        "lambda_delivery": health,
        "processes": cpu["roles"],
        "cpu_ms_per_order": per_order_ms(cpu, rows),
        "publisher_rss_mb": cpu["roles"]["publisher"]["rss_mb"],
        "publisher_rss_goal_met": cpu["roles"]["publisher"]["rss_mb"] < PUBLISHER_RSS_GOAL_MB,
        "dashboard_page": dashboard,
        "dashboard_core_share": round(cpu["roles"]["dashboard"]["cpu_s"] / wall, 4)
        if "dashboard" in cpu["roles"]
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", type=int, nargs="?", default=ROWS)
    parser.add_argument("--fleet", type=int, default=FLEET)
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE)
    parser.add_argument("--out", type=Path, default=RESULTS / "million.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="courierflow-million-"))
    try:
        result = run(args.rows, args.fleet, args.time_scale, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "processes"}, indent=2))
    for role, figures in result["processes"].items():
        print(
            f"{role:24} CPU {figures['cpu_s']:8.1f} s  peak RSS {figures['rss_mb']:7.1f} MB "
            f"(sum {figures['rss_sum_mb']:,.0f} MB over {figures['processes']} processes)"
        )


if __name__ == "__main__":
    main()
