"""The reconciler leaves an order Lambda still holds alone, and still catches lost ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from courierflow.config import Settings
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.reconciler import Reconciler

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class RecordingLambda:
    """Stands in for the Lambda client: records the re-dispatches it is asked for."""

    def __init__(self) -> None:
        self.invoked: list[str] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.invoked.append(kwargs["Payload"])
        return {"StatusCode": 202}


def test_a_dispatched_order_waits_for_the_event_age_while_a_queued_one_is_redispatched(
    tmp_path: Path,
) -> None:
    ledger = SQLiteLedger(str(tmp_path / "ledger.db"))
    t0 = 1_000_000.0
    ledger.add_queued(["waiting-in-lambda", "never-dispatched"], "s3://b/k", t0)
    ledger.mark_dispatched({"waiting-in-lambda": t0})
    client = RecordingLambda()
    now = [t0 + 400]
    reconciler = Reconciler(
        ledger=ledger,
        lambda_client=client,
        function_name="lambda_delivery",
        stuck_after_s=300,
        dispatched_after_s=3600,
        clock=lambda: now[0],
    )
    assert reconciler.run_once().redispatched == ["never-dispatched"]
    now[0] = t0 + 3700  # past the event age: Lambda no longer holds it
    assert "waiting-in-lambda" in reconciler.run_once().redispatched


def test_the_reconcilers_thresholds_come_from_the_environment_the_template_sets() -> None:
    settings = Settings.from_env(
        {
            "COURIERFLOW_STUCK_AFTER_S": "300",
            "COURIERFLOW_DISPATCHED_STUCK_AFTER_S": "21600",
            "COURIERFLOW_FAILURE_QUEUE_URL": "https://sqs.example/1/q",
        }
    )
    assert (settings.stuck_after_s, settings.dispatched_stuck_after_s) == (300, 21600)
    assert settings.failure_queue_url == "https://sqs.example/1/q"
    assert Settings.from_env({}).dispatched_stuck_after_s is None
