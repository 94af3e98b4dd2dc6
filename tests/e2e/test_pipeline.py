"""The whole system on one machine: CSV upload -> publisher -> RabbitMQ -> manager ->
one delivery Lambda per order, with every part real (private RabbitMQ node, moto's
server, the local Lambda service, the manager and reconciler as processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from courierflow import faults
from courierflow.ledger.base import open_ledger
from courierflow.local import stack
from courierflow.orders import OrderState
from tests.stackfixtures import running_stack, s3_client, upload_and_follow, write_orders

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
FAST = stack.StackOptions(fleet=128, time_scale=0.01, stuck_after_s=30)


SHAPES = [("rabbitmq", "manager"), ("sqs", "manager"), ("sqs", "serverless")]


@pytest.mark.parametrize(("transport", "mode"), SHAPES)
def test_500_orders_are_each_delivered_once_and_in_parallel(
    tmp_path: Path, amqp_url: str, transport: str, mode: str
) -> None:
    ids = write_orders(tmp_path / "orders.csv", 500)
    # moto's SQS hands out ~20 messages/s (a receive costs ~0.6 s with 500 queued), so
    # the SQS shapes use longer trips for deliveries to overlap as they would on AWS.
    scale = 0.01 if transport == "rabbitmq" else 0.1
    options = dataclasses.replace(FAST, transport=transport, mode=mode, time_scale=scale)
    with running_stack(tmp_path / "home", amqp_url, options) as info:
        summary = upload_and_follow(info, tmp_path / "orders.csv")
        records = open_ledger(info.ledger_url).orders()
        log_text = (Path(info.home) / "lambda" / "logs" / "lambda_delivery.log").read_text()

    assert (summary.rows, summary.published, summary.rejected) == (500, 500, 0)
    assert (summary.delivered, summary.failed, summary.lost) == (500, 0, 0)
    assert sorted(r.order_id for r in records) == ids
    assert all(r.state is OrderState.DELIVERED for r in records)
    # An attempt claims again only as Lambda's retry of an invocation that timed out or
    # died (same request id: a machine loaded past the 15 s timeout does that)
    claimed_again = {r.order_id: r.request_id for r in records if r.attempts != 1}
    retried = cut_short_requests(log_text)
    assert all(rid in retried for rid in claimed_again.values()), claimed_again
    assert all(2 <= (r.delay_s or 0) <= 10 for r in records)
    assert summary.peak_concurrency >= 10, "deliveries did not overlap"
    if mode == "manager":  # `down` stopped it, not its SIGKILL (an SQS manager was once
        # killed in a 20 s long poll, every time: its in-flight receives lost for a while)
        manager_log = (Path(info.home) / "logs" / "manager-0.log").read_text()
        assert '"manager stopped:' in manager_log


def cut_short_requests(log_text: str) -> set[str]:
    """Request ids of invocations the Lambda service ended (timed out, or the runtime
    died), from the lines it writes for them in the function's log."""
    ended: set[str] = set()
    for line in log_text.splitlines():
        timed_out = "Task timed out after" in line
        if timed_out or (line.startswith("RequestId: ") and "Runtime exited" in line):
            ended.add(line.split()[1])
    return ended


def test_bad_rows_are_named_with_line_numbers_and_the_good_ones_delivered(
    tmp_path: Path, amqp_url: str
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "order_id;customer;quantity\r\n"
        "A-1;Ann;2\r\n"
        ";nobody;1\r\n"
        "A-2;Bob;zero\r\n"
        "A-1;Ann again;1\r\n"
        'A-3;"Cy\nline two";1\r\n'
    )
    with running_stack(tmp_path / "home", amqp_url, FAST) as info:
        summary = upload_and_follow(info, path)
        rejects = s3_client(info).get_object(Bucket=info.bucket, Key="rejects/mixed.csv")
        report = rejects["Body"].read().decode()
        delivered = {r.order_id for r in open_ledger(info.ledger_url).orders()}

    assert delivered == {"A-1", "A-3"}
    assert (summary.rows, summary.published, summary.rejected, summary.delivered) == (5, 2, 3, 2)
    lines = report.splitlines()
    assert lines[0] == "line,reason,raw"
    assert [line.split(",")[0] for line in lines[1:]] == ["3", "4", "5"]
    assert "duplicate" in lines[3]


def test_courierflow_run_reports_json_and_exits_zero(tmp_path: Path, amqp_url: str) -> None:
    write_orders(tmp_path / "orders.csv", 60)
    with open(tmp_path / "orders.csv", "a") as orders:  # lines 62 and 63: two bad rows
        orders.write("ORD-00007,Again,7 Main St,parcel,1\nORD-X,Nobody,nowhere,parcel,0\n")
    env = {
        **os.environ,
        "COURIERFLOW_HOME": str(tmp_path / "home"),
        "COURIERFLOW_AMQP_URL": amqp_url,
        "COURIERFLOW_QUEUE": "orders-cli",
    }
    out = tmp_path / "report.json"
    cli = [sys.executable, "-m", "courierflow.cli"]
    result = subprocess.run(
        [
            *cli,
            "run",
            str(tmp_path / "orders.csv"),
            "--time-scale",
            "0.01",
            "--report-json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in (
        "rows",
        "rejected",
        "published",
        "delivered",
        "failed",
        "lost",
        "duplicates",
        "makespan_s",
        "peak_concurrency",
    ):
        assert key in figures
    assert figures["delivered"] == 60 and figures["lost"] == 0
    assert figures["rejected"] == 2
    # the bad rows are named in the terminal, with their line and reason
    said = " ".join(result.stderr.split())
    assert "rejected orders.csv line 62: duplicate order_id 'ORD-00007' (first on line 9)" in said
    assert "rejected orders.csv line 63: quantity" in said
    assert stack.load(tmp_path / "home") is None, "run left its stack running"

    # run ends by naming report.html; one bar per delivered order
    report = tmp_path / "home" / "report.html"
    assert f"report: {report.as_uri()}" in said
    assert report.read_text().count('<rect class="delivery delivered"') == 60

    # afterwards, with the stack down, `report` draws the same run from the ledger
    again = tmp_path / "again.html"
    png = tmp_path / "timeline.png"
    result = subprocess.run(
        [*cli, "report", "-o", str(again), "--plot", str(png)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert again.read_text().count('<rect class="delivery delivered"') == 60
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _delivery_environments(lambda_pid: int) -> int:
    """Processes forked by the delivery function's zygote under the Lambda service."""
    for child in psutil.Process(lambda_pid).children():
        if stack.DELIVERY in " ".join(child.cmdline()):
            return len(child.children())
    return 0


@pytest.mark.timeout(120)
def test_up_warm_starts_the_whole_fleet_before_any_order(tmp_path: Path, amqp_url: str) -> None:
    env = {
        **os.environ,
        "COURIERFLOW_HOME": str(tmp_path / "home"),
        "COURIERFLOW_AMQP_URL": amqp_url,
    }
    cli = [sys.executable, "-m", "courierflow.cli"]
    try:
        for warm, expected in (("--no-warm", 0), ("--warm", 6)):
            started = subprocess.run(
                [*cli, "up", "--fleet", "6", warm, "--dashboard-port", "0"],
                env=env, capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert started.returncode == 0, started.stderr[-3000:]
            info = stack.load(tmp_path / "home")
            assert info is not None
            assert _delivery_environments(info.pids["lambda"]) == expected
            subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=60, check=True)
    finally:
        stack.down(tmp_path / "home")


def test_courierflow_run_names_failed_orders_and_exits_non_zero(
    tmp_path: Path, amqp_url: str
) -> None:
    ids = write_orders(tmp_path / "orders.csv", 40)
    failing = sorted(i for i in ids if faults.chosen(i, 0.2))
    env = {
        **os.environ,
        "COURIERFLOW_HOME": str(tmp_path / "home"),
        "COURIERFLOW_AMQP_URL": amqp_url,
        "COURIERFLOW_QUEUE": "orders-failing",
    }
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "courierflow.cli", "run", str(tmp_path / "orders.csv"),
         "--time-scale", "0.01", "--fail-rate", "0.2", "--report-json", str(out)],
        env=env, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert failing and (figures["failed"], figures["lost"]) == (len(failing), 0)
    assert figures["delivered"] == len(ids) - len(failing)
    said = " ".join(result.stderr.split())
    for order_id in failing:  # named with Lambda's reason, after its retries
        assert f"failed {order_id}: order {order_id}: injected failure" in said
    assert said.count("(after 3 attempts)") == len(failing)
