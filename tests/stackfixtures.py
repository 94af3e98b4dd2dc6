"""Starting a whole local stack for a test, on the session's RabbitMQ node."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from courierflow.config import Settings
from courierflow.ledger.base import FileState, open_ledger
from courierflow.local import runner, stack
from courierflow.report.summary import RunSummary


@contextmanager
def running_stack(
    home: Path, amqp_url: str, options: stack.StackOptions
) -> Iterator[stack.StackInfo]:
    """`courierflow up` into ``home`` with its own queue; `down` afterwards, always."""
    env = {
        "COURIERFLOW_HOME": str(home),
        "COURIERFLOW_AMQP_URL": amqp_url,
        "COURIERFLOW_QUEUE": f"orders-{uuid.uuid4().hex[:8]}",
    }
    settings = Settings.from_env({**os.environ, **env})
    info = stack.up(settings, options)
    try:
        yield info
    finally:
        stack.down(home)


def write_orders(path: Path, n: int, prefix: str = "ORD") -> list[str]:
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["order_id", "customer", "address", "items", "quantity"])
    for i, order_id in enumerate(ids):
        writer.writerow([order_id, f"Customer {i}", f"{i} Main St", "parcel", 1 + i % 3])
    path.write_text(buf.getvalue())
    return ids


def upload_and_follow(
    info: stack.StackInfo, path: Path, stall_timeout_s: float = 60.0, key: str | None = None
) -> RunSummary:
    ledger = open_ledger(info.ledger_url)
    started = time.time()
    key, etag = runner.upload(info, path, key)
    return runner.follow(ledger, info.bucket, key, etag, started, stall_timeout_s)


def wait_for_file(info: stack.StackInfo, key: str, timeout_s: float = 60.0) -> None:
    ledger = open_ledger(info.ledger_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = ledger.get_file(info.bucket, key)
        if record is not None and record.state is not FileState.PROCESSING:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{key} was not processed in {timeout_s} s")


def s3_client(info: stack.StackInfo) -> Any:
    return stack.local_client("s3", info.moto_url)


def deliveries_per_order(info: stack.StackInfo) -> dict[str, int]:
    """How many times the delivery handler itself logged a completed trip, per order:
    the evidence that no order was delivered twice, independent of the ledger."""
    counts: dict[str, int] = {}
    path = Path(info.home) / "lambda" / "logs" / "lambda_delivery.log"
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if str(doc.get("message", "")).startswith("delivered in"):
            counts[doc["order_id"]] = counts.get(doc["order_id"], 0) + 1
    return counts


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        time.sleep(0.2)
