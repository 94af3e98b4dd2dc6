"""What every benchmark needs: the real services, sample files, statistics, RSS."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from courierflow.config import LOCAL_CREDENTIALS
from courierflow.local.processes import (
    ManagedProcess,
    RabbitNode,
    free_port,
    spawn,
    start_moto_server,
    start_rabbitmq,
)
from courierflow.local.stack import broker_answers, local_client

BENCH = Path(__file__).parent
RESULTS = BENCH / "results"


@dataclass
class Services:
    """A RabbitMQ node and moto's server for one `make bench`, and a scratch folder."""

    work: Path
    amqp_url: str
    moto_url: str
    processes: list[ManagedProcess | RabbitNode] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": self.moto_url,
            "AWS_ENDPOINT_URL_SQS": self.moto_url,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "COURIERFLOW_AMQP_URL": self.amqp_url,
            "COURIERFLOW_LOG_LEVEL": "WARNING",
            **extra,
        }

    def start_lambda(self, name: str, functions: dict[str, str], *args: str) -> str:
        """Start a Lambda service; returns its URL (stopped with the other services)."""
        port = free_port()
        argv = [sys.executable, "-m", "courierflow.local.lambda_service", "serve"]
        argv += [
            "--port",
            str(port),
            "--state-dir",
            str(self.work / name),
            "--code-dir",
            str(BENCH),
        ]
        for fn, handler in functions.items():
            argv += ["--function", f"{fn}={handler}"]
        proc = spawn(name, [*argv, *args], self.work / f"{name}.log", self.env(), port=port)
        proc.wait_for_port(60)
        self.processes.append(proc)
        return f"http://127.0.0.1:{port}"

    @property
    def broker_pid(self) -> int:
        """The RabbitMQ node this bench started (0: it uses one that was running)."""
        nodes = [p for p in self.processes if isinstance(p, RabbitNode)]
        return nodes[0].broker.pid if nodes else 0

    def stop(self, proc: ManagedProcess | RabbitNode) -> None:
        proc.stop()
        self.processes.remove(proc)


@contextlib.contextmanager
def services() -> Iterator[Services]:
    work = Path(tempfile.mkdtemp(prefix="courierflow-bench-"))
    started: list[ManagedProcess | RabbitNode] = []
    try:
        url = os.environ.get("COURIERFLOW_AMQP_URL", "")
        if not (url and broker_answers(url)):
            node = start_rabbitmq(work / "rabbitmq")
            started.append(node)
            url = node.amqp_url
        moto = start_moto_server(work)
        started.append(moto)
        svc = Services(work, url, f"http://127.0.0.1:{moto.port}", started)
        yield svc
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)  # ledgers, logs and CSVs: 100s of MB a run


def write_orders_csv(path: Path, rows: int) -> Path:
    """A realistic 7-column order file with ``rows`` orders."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["order_id", "customer", "address", "items", "quantity", "priority", "notes"]
        )
        for i in range(rows):
            writer.writerow(
                [f"B-{i:08d}", f"Customer {i % 997}", f"{i % 250} Market Square, Ghent",
                 "espresso beans 1kg", 1 + i % 4, "standard", "ring twice" if i % 5 else ""]
            )  # fmt: skip
    return path


def upload(svc: Services, bucket: str, key: str, path: Path) -> str:
    s3 = local_client("s3", svc.moto_url)
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(path), bucket, key)
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def summary(values: list[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements."""
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "runs": len(ordered),
        "values": [round(v, 3) for v in values],
    }


def percentiles(values: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": 0.0 for p in points}
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] for p in points}


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS (shared pages split fairly) summed over a process and its children."""
    root = psutil.Process(pid)
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.uss)
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20}


def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; raises TimeoutError."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"not done after {timeout_s} s")
        time.sleep(poll_s)
    return time.perf_counter() - start


def spread(stat: dict[str, Any], spec: str = ",.0f") -> str:
    """A repeated measurement as ``median [min-max, n runs]``."""
    if stat.get("runs", 1) < 2:
        return format(stat["median"], spec)
    return (
        f"{stat['median']:{spec}} [{stat['min']:{spec}}-{stat['max']:{spec}}, {stat['runs']} runs]"
    )
