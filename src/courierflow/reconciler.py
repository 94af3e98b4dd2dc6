"""The reconciler: the periodic job that makes sure no order silently vanishes.

Each pass (1) reads the delivery function's on-failure destination and marks those
orders failed with Lambda's reason, and (2) re-dispatches orders stuck in queued,
dispatched or delivering (with an expired claim) past a deadline. Re-dispatching is safe
because a delivery first claims its order: a second event for a delivered order is
skipped. Locally a loop in the stack; on AWS a scheduled Lambda.

A dispatched order is one whose Event invoke Lambda accepted. Lambda holds that event
(queued while the function is at its concurrency, running, retried) until the function's
maximum event age, then hands it to the on-failure destination, which (1) reads: until
then the order is waiting its turn, not lost, and a second event would only queue behind
the first. So a dispatched order is stuck only once the event age and the ordinary
deadline have passed since its last change, or, sooner, when it was accepted before the
holder of events began (``held_since``: the local Lambda service keeps its queue in
memory, so a restarted service holds nothing accepted before its start).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from courierflow.config import DEFAULT_EVENT_AGE_S
from courierflow.ledger.base import Ledger, OrderRecord
from courierflow.orders import OrderState

log = logging.getLogger(__name__)

#: an order re-dispatched this often without finishing is reported as failed
MAX_REDISPATCHES = 3
#: on-failure records read per pass (10 per receive call)
MAX_FAILURE_RECORDS = 1000


@dataclass
class ReconcileReport:
    """What one pass did."""

    failed: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)


@dataclass
class Reconciler:
    ledger: Ledger
    lambda_client: Any
    function_name: str
    #: a queued order, or one whose delivery claim expired, is stuck after this long
    stuck_after_s: float = 60.0
    #: the delivery function's maximum event age: a dispatched order is stuck this long
    #: plus ``stuck_after_s`` after its last change (see the module's doc)
    dispatched_after_s: float = DEFAULT_EVENT_AGE_S
    #: since when the holder of accepted events holds every one it accepted (None:
    #: unknown, or always, as on AWS); an order dispatched before is held by nobody
    held_since: Callable[[], float | None] = lambda: None
    sqs: Any = None
    failure_queue_url: str = ""
    clock: Callable[[], float] = time.time
    _redispatches: dict[str, int] = field(default_factory=dict)

    def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        if self.sqs is not None and self.failure_queue_url:
            report.failed = self._read_failures()
        now = self.clock()
        stuck = self.ledger.stuck(
            (OrderState.QUEUED, OrderState.DELIVERING), now - self.stuck_after_s
        )
        stuck += self._dispatched_and_lost(now)
        for record in stuck:
            if record.state is OrderState.DELIVERING and (record.claim_expires_at or 0) > now:
                continue  # a live attempt holds it
            # only an invoke Lambda accepted counts: a pass that could not reach Lambda
            # (the local service restarting) is no attempt to give up after
            count = self._redispatches.get(record.order_id, 0) + 1
            extra = {"order_id": record.order_id}
            if count > MAX_REDISPATCHES:
                reason = (
                    f"stuck in {record.state.value}; gave up after {MAX_REDISPATCHES} re-dispatches"
                )
                self.ledger.mark_failed(record.order_id, reason, now)
                report.given_up.append(record.order_id)
                log.error("order will not finish: %s", reason, extra=extra)
                continue
            try:
                self.lambda_client.invoke(
                    FunctionName=self.function_name,
                    InvocationType="Event",
                    Payload=json.dumps({"order_id": record.order_id, "redispatch": True}),
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("re-dispatch failed, next pass retries: %s", exc, extra=extra)
                continue
            self._redispatches[record.order_id] = count
            report.redispatched.append(record.order_id)
            log.warning(
                "re-dispatched order stuck in %s [%d/%d]",
                record.state.value,
                count,
                MAX_REDISPATCHES,
                extra=extra,
            )
        if report.redispatched:
            self.ledger.touch(report.redispatched, now)
        return report

    def _dispatched_and_lost(self, now: float) -> list[OrderRecord]:
        """Dispatched orders no event stands for any more: past the event age (and the
        deadline), or accepted before the holder of events began, at least the deadline
        ago."""
        lost = self.ledger.stuck(
            (OrderState.DISPATCHED,), now - self.dispatched_after_s - self.stuck_after_s
        )
        since = self.held_since()
        if since is None:
            return lost
        before = self.ledger.stuck((OrderState.DISPATCHED,), min(since, now - self.stuck_after_s))
        known = {r.order_id for r in lost}
        return lost + [r for r in before if r.order_id not in known]

    def _read_failures(self) -> list[str]:
        failed: list[str] = []
        while len(failed) < MAX_FAILURE_RECORDS:
            try:
                got = self.sqs.receive_message(
                    QueueUrl=self.failure_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("cannot read the failure queue: %s", exc)
                break
            messages = got.get("Messages") or []
            if not messages:
                break
            for message in messages:
                order_id, reason = _failure_of(message.get("Body", ""))
                if order_id:
                    self.ledger.mark_failed(order_id, reason, self.clock())
                    failed.append(order_id)
                    log.error("delivery failed for good: %s", reason, extra={"order_id": order_id})
                self.sqs.delete_message(
                    QueueUrl=self.failure_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return failed


def _failure_of(body: str) -> tuple[str, str]:
    """Order id and reason from an on-failure destination record."""
    try:
        record = json.loads(body)
        request = record.get("requestPayload") or {}
        if isinstance(request, str):
            request = json.loads(request)
        order_id = str(request.get("order_id", ""))
        context = record.get("requestContext") or {}
        response = record.get("responsePayload") or {}
        if isinstance(response, str):
            response = (
                json.loads(response) if response.startswith("{") else {"errorMessage": response}
            )
        message = response.get("errorMessage") or context.get("condition", "failed")
        attempts = context.get("approximateInvokeCount", "?")
        return order_id, f"{message} (after {attempts} attempts)"
    except (ValueError, AttributeError):
        return "", ""
