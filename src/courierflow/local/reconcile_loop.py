"""The reconciler as a loop in the local stack (on AWS it is a scheduled Lambda)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.request
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import boto3

from courierflow.config import Settings
from courierflow.dead_letters import queue_backlog
from courierflow.ledger.base import open_ledger
from courierflow.reconciler import Reconciler

log = logging.getLogger(__name__)

#: seconds the reconciler waits for the local Lambda service's /health
HEALTH_TIMEOUT_S = 2.0


def build_reconciler(
    settings: Settings, stuck_after_s: float, failure_queue: str, lambda_client: Any = None
) -> Reconciler:
    """The reconciler of ``settings``: it waits the delivery function's event age
    (``settings.dispatched_stuck_after_s``, the local service's own default unless set)
    before calling a dispatched order stuck, asks a local Lambda service since when
    it holds events, so that what a restart lost is caught after ``stuck_after_s``, and
    asks the order queue what it still holds before calling a queued order stuck."""
    lambda_client = lambda_client or boto3.client("lambda", region_name=settings.region)
    return Reconciler(
        ledger=open_ledger(settings.ledger_url, settings.region),
        lambda_client=lambda_client,
        function_name=settings.delivery_function,
        stuck_after_s=stuck_after_s,
        dispatched_after_s=settings.dispatched_stuck_after_s,
        held_since=local_service_start(lambda_client.meta.endpoint_url),
        queue_backlog=queue_backlog(settings),
        sqs=boto3.client("sqs", region_name=settings.region) if failure_queue else None,
        failure_queue_url=failure_queue,
    )


def local_service_start(endpoint: str) -> Callable[[], float | None]:
    """A probe of when the Lambda service at ``endpoint`` started, read from its /health
    (None when it does not answer, or for AWS's endpoint, whose events outlive any
    process)."""
    if urlsplit(endpoint).hostname not in ("127.0.0.1", "localhost", "::1"):
        return lambda: None

    def started_at() -> float | None:
        try:
            with urllib.request.urlopen(endpoint + "/health", timeout=HEALTH_TIMEOUT_S) as got:
                value = json.load(got).get("started_at")
        except (OSError, ValueError) as exc:
            log.info("the Lambda service's start is unknown: %s", exc)
            return None
        return float(value) if isinstance(value, int | float) else None

    return started_at


def run_loop(settings: Settings, every_s: float, stuck_after_s: float, failure_queue: str) -> None:
    """One pass every ``every_s`` seconds until SIGTERM/SIGINT (one pass if 0)."""
    reconciler = build_reconciler(settings, stuck_after_s, failure_queue)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        try:
            reconciler.run_once()
        except Exception:
            log.exception("reconciler pass failed; trying again next pass")
        if every_s <= 0 or stop.wait(every_s):
            return
