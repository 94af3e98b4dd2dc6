"""`lambda_delivery`: one courier per order.

Invoked asynchronously by the manager with one order, or (serverless mode) by an SQS
event source mapping with a batch of SQS records, each an order; then it reports the
orders that failed in ``batchItemFailures`` so only those go back to the queue.

The lab's behaviour: wait ``random.randint(2, 10)`` seconds (the range and a time scale
come from COURIERFLOW_DELAY_MIN/MAX and COURIERFLOW_TIME_SCALE), log the delivery and
return a confirmation. Before the trip the order is claimed in the ledger, so a duplicate
event never delivers twice. Deployable as ``courierflow.functions.delivery.lambda_handler``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from courierflow import logs, metrics
from courierflow.config import LogSettings, Settings, xray_trace_id
from courierflow.courier import Courier, DeliveryFailed
from courierflow.ledger.base import open_ledger
from courierflow.metrics import Metric, Unit

_log_settings = LogSettings.from_env()
logs.setup_logging(_log_settings)
log = logging.getLogger("courierflow.delivery")

_settings = Settings.from_env().with_secrets()
_courier = Courier(ledger=open_ledger(_settings.ledger_url, _settings.region), settings=_settings)


def _order_id(doc: Any) -> str:
    order_id = doc.get("order_id") if isinstance(doc, dict) else None
    if not isinstance(order_id, str) or not order_id:
        raise ValueError(f"event has no order_id: {str(doc)[:200]}")
    return order_id


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver the order in ``event``, or each order of an SQS batch."""
    logs.inject_context(context, xray_trace_id())
    deadline_s = context.get_remaining_time_in_millis() / 1000
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        return _deliver(_order_id(event), context.aws_request_id, deadline_s)
    failures: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    for record in records:
        try:
            order_id = _order_id(json.loads(record["body"]))
            # One claim per record: a redelivered message gets its own attempt id.
            attempt = f"{context.aws_request_id}:{record['messageId']}"
            results.append(_deliver(order_id, attempt, deadline_s))
        except (DeliveryFailed, ValueError, KeyError) as exc:
            log.warning("record %s failed: %s", record.get("messageId"), exc)
            failures.append({"itemIdentifier": record.get("messageId", "")})
    return {"batchItemFailures": failures, "results": results}


def _deliver(order_id: str, attempt: str, deadline_s: float) -> dict[str, Any]:
    """One delivery, and its outcome as CloudWatch metrics (EMF): the courier returns
    the outcome, the handler reports it."""
    try:
        result = _courier.deliver(order_id, attempt, deadline_s)
    except Exception:
        _emit(order_id, {Metric.DELIVERIES_FAILED: (1, Unit.COUNT)})
        raise
    if result.get("status") == "delivered":
        trip_ms = (result["finished_at"] - result["started_at"]) * 1000
        _emit(
            order_id,
            {
                Metric.DELIVERIES_COMPLETED: (1, Unit.COUNT),
                Metric.DELIVERY_DURATION: (round(trip_ms, 3), Unit.MILLISECONDS),
            },
        )
    else:
        _emit(order_id, {Metric.DUPLICATES_SKIPPED: (1, Unit.COUNT)})
    return result


def _emit(order_id: str, values: dict[str, tuple[float, str]]) -> None:
    metrics.emit(values, {"service": _log_settings.service}, properties={"order_id": order_id})
