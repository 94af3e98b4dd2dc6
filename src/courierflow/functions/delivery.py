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

from courierflow.config import Settings
from courierflow.courier import Courier, DeliveryFailed
from courierflow.ledger.base import open_ledger
from courierflow.logs import setup_logging

setup_logging()
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
    deadline_s = context.get_remaining_time_in_millis() / 1000
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        return _courier.deliver(_order_id(event), context.aws_request_id, deadline_s)
    failures: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    for record in records:
        try:
            order_id = _order_id(json.loads(record["body"]))
            # One claim per record: a redelivered message gets its own attempt id.
            attempt = f"{context.aws_request_id}:{record['messageId']}"
            results.append(_courier.deliver(order_id, attempt, deadline_s))
        except (DeliveryFailed, ValueError, KeyError) as exc:
            log.warning("record %s failed: %s", record.get("messageId"), exc)
            failures.append({"itemIdentifier": record.get("messageId", "")})
    return {"batchItemFailures": failures, "results": results}
