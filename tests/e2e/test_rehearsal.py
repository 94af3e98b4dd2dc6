"""`courierflow rehearse`, run as a user runs it: what `deploy` ships, deployed to a
stand-in account on this machine and run together; every order must be delivered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from courierflow.local.processes import rabbitmq_available

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ROOT / "examples" / "orders.csv"
#: orders of the sample file each rehearsal submits: enough for deliveries in parallel;
#: the whole file (100) took 80 s of a make test's 13 minutes on the moto-backed ledger
REHEARSED = 40


def _excerpt(out: Path, n: int = REHEARSED) -> Path:
    """The header and the first ``n`` orders of the sample file."""
    lines = ORDERS.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[: n + 1]))
    return out


def _rehearse(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = home / "rehearsal.json"
    orders = _excerpt(home / "orders.csv")
    courierflow = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    assert courierflow, "the courierflow command is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COURIERFLOW_"))}
    env["COURIERFLOW_HOME"] = str(home)
    result = subprocess.run(
        [courierflow, "rehearse", *args, "--orders", str(orders), "--report-json", str(report)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=880,
    )  # fmt: skip
    summary = json.loads(report.read_text()) if report.exists() else {}
    return result, summary


@pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server not installed")
def test_rabbitmq_and_manager_deliver_every_order_and_a_redeploy_runs_the_changed_handler(
    tmp_path: Path,
) -> None:
    result, summary = _rehearse(tmp_path, "--transport", "rabbitmq", "--mode", "manager")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (summary["delivered"], summary["failed"], summary["lost"]) == (REHEARSED, 0, 0)
    details = summary["rehearsal"]
    assert details["second_delivered"] == 10
    assert details["change_running"] is True
    assert details["instance_credentials_from_imds"] is True
    assert f"{REHEARSED} delivered" in result.stdout
    # the bootstrap configured the broker as on the instance, from the deployed user data
    user_data_log = (tmp_path / "rehearsal" / "user-data.log").read_text()
    assert "guest removed" in user_data_log
    assert (
        tmp_path / "rehearsal" / "root" / "opt" / "courierflow" / "bin" / "courierflow"
    ).exists()


def test_sqs_serverless_delivers_every_order_through_the_deployed_functions(
    tmp_path: Path,
) -> None:
    result, summary = _rehearse(
        tmp_path, "--transport", "sqs", "--mode", "serverless", "--no-redeploy"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (summary["delivered"], summary["failed"], summary["lost"]) == (REHEARSED, 0, 0)
    assert "change_running" not in summary["rehearsal"]
