"""`lambda_delivery`: one courier per order, invoked asynchronously by the manager.

The lab's behaviour: wait ``random.randint(2, 10)`` seconds (the range and a time scale
come from COURIERFLOW_DELAY_MIN/MAX and COURIERFLOW_TIME_SCALE), log the delivery and
return a confirmation. Before the trip the order is claimed in the ledger, so a duplicate
event never delivers twice. Deployable as ``courierflow.functions.delivery.lambda_handler``.
"""

from __future__ import annotations

import logging
from typing import Any

from courierflow.config import Settings
from courierflow.courier import Courier
from courierflow.ledger.base import open_ledger
from courierflow.logs import setup_logging

setup_logging()
log = logging.getLogger("courierflow.delivery")

_settings = Settings.from_env()
_courier = Courier(ledger=open_ledger(_settings.ledger_url), settings=_settings)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver the order in ``event`` (the order JSON the manager published)."""
    order_id = event.get("order_id") if isinstance(event, dict) else None
    if not isinstance(order_id, str) or not order_id:
        raise ValueError(f"event has no order_id: {str(event)[:200]}")
    deadline_s = context.get_remaining_time_in_millis() / 1000
    return _courier.deliver(order_id, context.aws_request_id, deadline_s)
