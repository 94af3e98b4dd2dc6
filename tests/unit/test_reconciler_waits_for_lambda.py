"""The reconciler leaves an order Lambda still holds alone, and still catches lost ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from courierflow.config import Settings
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState
from courierflow.reconciler import MAX_REDISPATCHES, Reconciler

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class RecordingLambda:
    """Stands in for the Lambda client: records the re-dispatches it is asked for."""

    def __init__(self) -> None:
        self.invoked: list[str] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.invoked.append(kwargs["Payload"])
        return {"StatusCode": 202}


T0 = 1_000_000.0


def reconciler_of(ledger: SQLiteLedger, now: list[float], **settings: Any) -> Reconciler:
    """A reconciler on ``ledger`` whose clock reads ``now[0]``."""
    return Reconciler(ledger, RecordingLambda(), "lambda_delivery", clock=lambda: now[0],
                      **settings)  # fmt: skip


def test_a_dispatched_order_waits_for_the_event_age_while_a_queued_one_is_redispatched(
    tmp_path: Path,
) -> None:
    ledger = SQLiteLedger(str(tmp_path / "ledger.db"))
    t0 = T0
    ledger.add_queued(["waiting-in-lambda", "never-dispatched"], "s3://b/k", t0)
    ledger.mark_dispatched({"waiting-in-lambda": t0})
    now = [t0 + 400]
    reconciler = reconciler_of(ledger, now, stuck_after_s=300, dispatched_after_s=3600)
    assert reconciler.run_once().redispatched == ["never-dispatched"]
    now[0] = t0 + 3700  # past the event age, not yet past the deadline after it
    assert "waiting-in-lambda" not in reconciler.run_once().redispatched
    now[0] = t0 + 3901  # Lambda let go of it and the destination had its time
    assert "waiting-in-lambda" in reconciler.run_once().redispatched


def test_an_order_accepted_before_the_holder_of_events_started_is_lost_at_once(
    tmp_path: Path,
) -> None:
    """The local Lambda service keeps its queue in memory: what it accepted before a
    restart is held by nobody, and is re-dispatched after the ordinary deadline."""
    ledger = SQLiteLedger(str(tmp_path / "ledger.db"))
    t0 = T0
    ledger.add_queued(["before-restart", "after-restart"], "s3://b/k", t0)
    ledger.mark_dispatched({"before-restart": t0, "after-restart": t0 + 200})
    now = [t0 + 250]
    reconciler = reconciler_of(ledger, now, stuck_after_s=30, held_since=lambda: t0 + 100)
    assert reconciler.run_once().redispatched == ["before-restart"]
    now[0] = t0 + 2000  # after-restart is still held: the event age is hours
    assert reconciler.run_once().redispatched == []


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


def test_the_local_services_event_age_and_the_reconcilers_wait_are_one_setting() -> None:
    """The gap of issue #15: the local stack's reconciler called an order stuck after 60 s
    while the local service held it for six hours. Both now read one constant."""
    from courierflow.config import DEFAULT_EVENT_AGE_S
    from courierflow.local.lambda_service.config import FunctionConfig

    held_for = FunctionConfig("lambda_delivery", "m:h").max_event_age
    assert Settings.from_env({}).dispatched_stuck_after_s == held_for == DEFAULT_EVENT_AGE_S
    assert Reconciler(None, None, "f").dispatched_after_s == held_for  # type: ignore[arg-type]


class UnreachableLambda(RecordingLambda):
    """The Lambda endpoint refuses connections (the local service restarting)."""

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


def test_passes_that_cannot_reach_lambda_do_not_count_towards_giving_up(tmp_path: Path) -> None:
    """A fault test failed 3 of 300 orders: the service was down for more passes than
    MAX_REDISPATCHES, and every refused invoke counted as a re-dispatch."""
    ledger = SQLiteLedger(str(tmp_path / "ledger.db"))
    ledger.add_queued(["waiting"], "s3://b/k", T0)
    now = [T0 + 100]
    reconciler = Reconciler(ledger, UnreachableLambda(), "f", stuck_after_s=3, clock=lambda: now[0])
    for _ in range(MAX_REDISPATCHES + 2):
        now[0] += 5
        assert reconciler.run_once().given_up == []
    reconciler.lambda_client = RecordingLambda()
    assert reconciler.run_once().redispatched == ["waiting"]
    record = ledger.get_order("waiting")
    assert record is not None and record.state is OrderState.QUEUED
