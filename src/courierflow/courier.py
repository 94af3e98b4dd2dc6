"""One delivery: claim the order, make the trip, record it. Knows nothing about Lambda."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from courierflow import faults
from courierflow.config import Settings
from courierflow.errors import CourierflowError
from courierflow.ledger.base import ClaimResult, Ledger

log = logging.getLogger(__name__)

#: a claim outlives the attempt's own deadline by this much before another may take it
CLAIM_GRACE_S = 5.0


class DeliveryFailed(CourierflowError):
    """Raised when a trip fails; Lambda retries the event, then sends it on-failure."""


@dataclass(frozen=True)
class Courier:
    """Delivers orders; ``sleep`` and ``rng`` are injectable so tests control time."""

    ledger: Ledger
    settings: Settings
    sleep: Callable[[float], None] = time.sleep
    #: None uses the module's generator, which Python reseeds in every forked child
    rng: random.Random | None = None
    clock: Callable[[], float] = time.time

    def deliver(self, order_id: str, request_id: str, deadline_s: float) -> dict[str, Any]:
        """Claim and deliver ``order_id``; a duplicate attempt is skipped, not an error.

        Returns a confirmation: order id, status (delivered | duplicate), delay, times.

        Raises:
            DeliveryFailed: the trip failed; the claim is released for a retry.
        """
        extra = {"order_id": order_id, "request_id": request_id}
        claim = self.ledger.claim_delivery(
            order_id, request_id, deadline_s + CLAIM_GRACE_S, self.clock()
        )
        if claim is not ClaimResult.CLAIMED:
            log.info("duplicate delivery skipped (%s)", claim.value, extra=extra)
            return {"order_id": order_id, "status": "duplicate", "reason": claim.value}
        delay = (self.rng or random).randint(self.settings.delay_min, self.settings.delay_max)
        started = self.clock()
        # DEBUG: one INFO line per delivery ("delivered in"), which carries the delay too;
        # a second line per order was a tenth of a short delivery's CPU (docs/performance.md)
        log.debug("courier on the road for %d s", delay, extra=extra)
        self.sleep(delay * self.settings.time_scale)
        if self._injected_failure(order_id):
            reason = "injected failure (COURIERFLOW_FAIL_RATE)"
            self.ledger.release_claim(order_id, request_id, reason, self.clock())
            log.warning("delivery failed: %s", reason, extra=extra)
            raise DeliveryFailed(f"order {order_id}: {reason}")
        finished = self.clock()
        if not self.ledger.complete_delivery(order_id, request_id, delay, started, finished):
            log.warning("claim lost before completion; another attempt owns it", extra=extra)
            return {"order_id": order_id, "status": "duplicate", "reason": "claim_lost"}
        log.info("delivered in %d s", delay, extra=extra)
        return {
            "order_id": order_id,
            "status": "delivered",
            "delay_s": delay,
            "started_at": started,
            "finished_at": finished,
            "request_id": request_id,
        }

    def _injected_failure(self, order_id: str) -> bool:
        """The same orders fail every time, so retries cannot hide the fault."""
        return faults.chosen(order_id, self.settings.fail_rate)
