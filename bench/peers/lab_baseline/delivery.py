"""The lab's delivery function: sleep random.randint(2, 10) seconds (scaled), log, return."""

from __future__ import annotations

import os
import random
import time
from typing import Any


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    delay = random.randint(2, 10)
    time.sleep(delay * float(os.environ.get("COURIERFLOW_TIME_SCALE", "1")))
    print(f"Order {event.get('order_id')} delivered in {delay} seconds")
    return {"order_id": event.get("order_id"), "delay": delay}
