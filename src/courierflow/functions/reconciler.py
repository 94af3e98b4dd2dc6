"""The scheduled reconciler (EventBridge rate(1 minute) on AWS): one pass per invocation.
Deployable as ``courierflow.functions.reconciler.lambda_handler``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import boto3

from courierflow import dead_letters, logs
from courierflow.config import LogSettings, Settings, xray_trace_id
from courierflow.ledger.base import open_ledger
from courierflow.reconciler import Reconciler


def reachable_queue_backlog(settings: Settings) -> Callable[[], int | None]:
    """A probe of the messages the order queue holds, when this function can reach it."""
    if settings.queue_url.startswith(("amqp://", "amqps://")):
        # RabbitMQ listens on the instance's private address, and its security group
        # admits 5672 from the publisher's group only; this function is not in the VPC
        # (the template gives it no VpcConfig) and its role does not read the broker's
        # secret. Unknown, then: a queued order is stuck after stuck_after_s, as before.
        return lambda: None
    return dead_letters.queue_backlog(settings)  # SQS: its public endpoint, as the DLQ's


logs.setup_logging(LogSettings.from_env())
_settings = Settings.from_env().with_secrets()
_reconciler = Reconciler(
    ledger=open_ledger(_settings.ledger_url, _settings.region),
    lambda_client=boto3.client("lambda", region_name=_settings.region),
    function_name=_settings.delivery_function,
    stuck_after_s=_settings.stuck_after_s,
    dispatched_after_s=_settings.dispatched_stuck_after_s,
    queue_backlog=reachable_queue_backlog(_settings),
    sqs=boto3.client("sqs", region_name=_settings.region),
    failure_queue_url=_settings.failure_queue_url,
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run one reconciliation pass and return what it did."""
    logs.inject_context(context, xray_trace_id())
    return asdict(_reconciler.run_once())
