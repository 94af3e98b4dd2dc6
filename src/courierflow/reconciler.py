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

A queued order is the broker's in the same way: its message waits behind every message
published before it, and with a million orders in the queue that wait is far longer than
any deadline fit to notice a lost message. Re-dispatching it then only makes a second
invoke (the delivery's claim lets one of the two through). So each pass first asks how
many messages the queue holds (``queue_backlog``). While it holds any, a queued order is
stuck only after the long bound of a dispatched one: a lost message is still caught, only
later. An empty queue has handed every message out, but the last ones may still be in a
consumer's hands, unacked, for a while: a RabbitMQ passive declare does not count them,
and SQS's counts are approximate. So the queue's emptying counts as a change of every
queued order: it is stuck after the deadline from the later of its own last change and
the first pass that found the queue empty after one that found messages (a reconciler
that has not seen the queue hold any, just started, takes an empty queue at its word).
When the backlog is unknown (no probe, or it failed) a queued order is stuck after the
deadline, as before: a wasted invoke is cheaper than an order that never arrives.
"""

from __future__ import annotations

import json
import logging
import math
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
    #: how many messages the order queue holds, counting those handed out and not yet
    #: acked where the transport can tell (None: unknown); see the module's doc
    queue_backlog: Callable[[], int | None] = lambda: None
    sqs: Any = None
    failure_queue_url: str = ""
    clock: Callable[[], float] = time.time
    _redispatches: dict[str, int] = field(default_factory=dict)
    #: when the first pass ran that found the order queue empty after one found messages
    #: (None: the last pass that could tell found messages; minus infinity: none has)
    _empty_since: float | None = -math.inf
    #: the last pass could not tell the backlog (logged once, when it stops knowing)
    _backlog_unknown: bool = False

    def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        if self.sqs is not None and self.failure_queue_url:
            report.failed = self._read_failures()
        now = self.clock()
        deadline = now - self.stuck_after_s
        if self._queue_emptied(now):
            stuck = self.ledger.stuck((OrderState.QUEUED, OrderState.DELIVERING), deadline)
        else:  # the queue still holds its orders: the long bound (see the module's doc)
            stuck = self.ledger.stuck((OrderState.DELIVERING,), deadline)
            stuck += self.ledger.stuck((OrderState.QUEUED,), deadline - self.dispatched_after_s)
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

    def _queue_emptied(self, now: float) -> bool:
        """True when a queued order is stuck after the ordinary deadline: the order queue
        has been found empty for that long since a pass last found messages in it (or
        none has), or its backlog is unknown. A pass that cannot tell changes nothing of
        what the others found."""
        backlog = self._backlog()
        if backlog is None:
            return True
        if backlog > 0:
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = now
        return self._empty_since <= now - self.stuck_after_s

    def _backlog(self) -> int | None:
        """The order queue's backlog, or None when the probe cannot tell (logged once at
        info when it stops telling, not on every pass of an outage)."""
        try:
            backlog = self.queue_backlog()
            why = "no answer"
        except Exception as exc:  # whatever the probe raises, the pass goes on without it
            backlog, why = None, str(exc)
        if backlog is not None:
            self._backlog_unknown = False
            return backlog
        if not self._backlog_unknown:
            log.info(
                "the order queue's backlog is unknown (%s): a queued order is stuck after "
                "%.0f s, as if the queue were empty",
                why,
                self.stuck_after_s,
            )
        self._backlog_unknown = True
        return None

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
