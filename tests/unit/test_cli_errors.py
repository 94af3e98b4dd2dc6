"""Errors of the CLI read as sentences that say what to do next, not tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from courierflow.exitcodes import ExitCode
from courierflow.local.processes import free_port

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def courierflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COURIERFLOW_HOME": str(tmp_path / "home"),
        "COURIERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
    }
    env.pop("COURIERFLOW_QUEUE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "courierflow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )


def test_dlq_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    result = courierflow(tmp_path, "dlq", "list")
    said = " ".join(result.stderr.split())
    assert result.returncode == ExitCode.UNREACHABLE == 3
    assert result.stdout == ""
    assert "cannot reach RabbitMQ at 127.0.0.1:" in said
    assert "Start it with `courierflow up`" in said
    assert "Traceback" not in result.stderr and "ERROR:pika" not in result.stderr


def test_submit_without_a_stack_says_to_start_one(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\nA-1\n")
    result = courierflow(tmp_path, "submit", str(orders))
    assert result.returncode == ExitCode.UNREACHABLE == 3
    assert "start one with `courierflow up`" in " ".join(result.stderr.split())
