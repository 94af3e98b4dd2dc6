"""The gap of issue #15: with orders waiting in the local Lambda service's async queue
longer than the reconciler's deadline, `courierflow reconcile` dispatched them again
(3,391 duplicate invokes in a 200,000-order run). Here the real service holds four
orders behind a concurrency of one, and the real command makes its passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState
from tests.integration.test_lambda_service import Service, start_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: seconds each held order's handler runs, one at a time
TRIP_S = 4
SERVICE_ARGS = ("--function", "held=samples:sleepy", "--set", "held.concurrency=1")


def accepted(service: Service) -> int:
    """Event invokes the service accepted since it started."""
    with urllib.request.urlopen(service.url + "/health", timeout=5) as got:
        return int(json.load(got)["functions"]["held"]["async_accepted"])


def reconcile_once(service: Service, ledger_path: Path, home: Path) -> str:
    """One pass of the command the local stack runs, with a 1 s deadline."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_LAMBDA": service.url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COURIERFLOW_LEDGER_URL": f"sqlite:///{ledger_path}",
        "COURIERFLOW_DELIVERY_FUNCTION": "held",
        "COURIERFLOW_HOME": str(home),
        # no broker here (these orders are dispatched, not queued): the queue's backlog is
        # unknown, and no broker that happens to listen on 5672 is asked
        "COURIERFLOW_QUEUE_URL": "amqp://guest:guest@127.0.0.1:9/%2F",
    }
    done = subprocess.run(
        [sys.executable, "-m", "courierflow.cli", "reconcile", "--every", "0",
         "--stuck-after", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr + done.stdout


def test_orders_the_lambda_service_holds_are_left_alone_and_those_a_restart_lost_are_not(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path, *SERVICE_ARGS)
    ledger_path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(ledger_path)
    ids = [f"o{i}" for i in range(4)]
    ledger.add_queued(ids, "s3://b/orders.csv", time.time())
    client: Any = service.client()
    for order_id in ids:
        client.invoke(
            FunctionName="held",
            InvocationType="Event",
            Payload=json.dumps({"order_id": order_id, "seconds": TRIP_S}),
        )
    ledger.mark_dispatched(dict.fromkeys(ids, time.time()))
    try:
        time.sleep(2.5)  # dispatched longer ago than the deadline; three still queued
        reconcile_once(service, ledger_path, tmp_path)
        assert accepted(service) == 4, "an order the service holds was dispatched again"

        os.killpg(service.process.pid, signal.SIGKILL)  # the service, its queue with it
        service.process.popen.wait(10)
        service = start_service(tmp_path, *SERVICE_ARGS, port=int(service.url.rsplit(":")[-1]))
        time.sleep(1.5)
        log = reconcile_once(service, ledger_path, tmp_path)
        assert accepted(service) == 4, "each lost order is dispatched again, once"
        assert log.count("re-dispatched order stuck in dispatched") == 4
        assert {r.state for r in ledger.orders()} == {OrderState.DISPATCHED}
    finally:
        os.killpg(service.process.pid, signal.SIGKILL)
