"""The CLI against a running local stack: with --output json, stdout is exactly one JSON
document a pipe can read; progress and diagnostics stay on stderr; a run with failed
orders exits 1 and `status` after it exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from courierflow import faults
from courierflow.exitcodes import ExitCode
from courierflow.local import stack
from tests.stackfixtures import running_stack, write_orders

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: a fifth of the orders fail on purpose; Lambda retries each twice, 0.1 and 0.2 s later
FAIL_RATE = 0.2
OPTIONS = stack.StackOptions(
    fleet=8, time_scale=0.01, fail_rate=FAIL_RATE, retry_delays="0.1,0.2", stuck_after_s=30
)


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[stack.StackInfo]:
    with running_stack(tmp_path_factory.mktemp("cli-output"), amqp_url, OPTIONS) as started:
        yield started


def courierflow(info: stack.StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "courierflow.cli", *args],
        env={**os.environ, **info.client_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_json_is_the_report_json_and_failed_orders_exit_one(
    info: stack.StackInfo, tmp_path: Path
) -> None:
    ids = write_orders(tmp_path / "orders.csv", 30)
    failing = sorted(i for i in ids if faults.chosen(i, FAIL_RATE))
    report = tmp_path / "report.json"
    result = courierflow(
        info, "submit", str(tmp_path / "orders.csv"), "--output", "json",
        "--stall-timeout", "60", "--report-json", str(report),
    )  # fmt: skip

    assert failing, "the fault injection chose no order"
    assert result.returncode == ExitCode.NOT_DELIVERED, result.stderr[-3000:]
    document = json.loads(result.stdout)  # one document, nothing else on stdout
    assert document == json.loads(report.read_text())
    assert (document["delivered"], document["failed"], document["lost"]) == (
        len(ids) - len(failing),
        len(failing),
        0,
    )
    said = " ".join(result.stderr.split())
    for order_id in failing:  # the diagnostics, for people, on stderr
        assert f"failed {order_id}:" in said
    assert "published" in said, "no progress on stderr"

    piped = subprocess.run(
        [sys.executable, "-m", "courierflow.cli", "status", "--output", "json"],
        env={**os.environ, **info.client_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == ExitCode.OK, piped.stderr
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=piped.stdout, capture_output=True, text=True
    )
    assert tool.returncode == 0, tool.stderr
    status = json.loads(piped.stdout)
    assert status["counts"]["failed"] == len(failing)
    assert status["counts"]["delivered"] == len(ids) - len(failing)
    assert sorted(f["order_id"] for f in status["failures"]) == failing


def test_status_through_a_shell_pipe(info: stack.StackInfo) -> None:
    env = {**os.environ, **info.client_env()}
    command = f"set -o pipefail; {sys.executable} -m courierflow.cli status --output json"
    result = subprocess.run(
        ["bash", "-c", f"{command} | {sys.executable} -m json.tool"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"counts", "failures"}

    table = courierflow(info, "status")
    assert table.returncode == ExitCode.OK
    assert "orders by state" in table.stdout
    assert table.stderr == ""


def test_dlq_list_json_names_the_queue_and_its_dead_letters(info: stack.StackInfo) -> None:
    result = courierflow(info, "dlq", "list", "--output", "json")
    assert result.returncode == ExitCode.OK, result.stderr
    document = json.loads(result.stdout)
    assert document["queue"] == info.queue
    assert isinstance(document["dead_letters"], list)
    for letter in document["dead_letters"]:
        assert set(letter) == {"order_id", "broker_reason", "attempts", "ledger_reason"}
