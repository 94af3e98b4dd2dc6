"""The scheduled reconciler (EventBridge rate(1 minute) on AWS): one pass per invocation.
Deployable as ``courierflow.functions.reconciler.lambda_handler``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import boto3

from courierflow import logs
from courierflow.config import LogSettings, Settings, xray_trace_id
from courierflow.ledger.base import open_ledger
from courierflow.reconciler import Reconciler

logs.setup_logging(LogSettings.from_env())
_settings = Settings.from_env().with_secrets()
_reconciler = Reconciler(
    ledger=open_ledger(_settings.ledger_url, _settings.region),
    lambda_client=boto3.client("lambda", region_name=_settings.region),
    function_name=_settings.delivery_function,
    stuck_after_s=_settings.stuck_after_s,
    dispatched_after_s=_settings.dispatched_stuck_after_s,
    sqs=boto3.client("sqs", region_name=_settings.region),
    failure_queue_url=_settings.failure_queue_url,
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run one reconciliation pass and return what it did."""
    logs.inject_context(context, xray_trace_id())
    return asdict(_reconciler.run_once())
