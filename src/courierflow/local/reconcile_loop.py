"""The reconciler as a loop in the local stack (on AWS it is a scheduled Lambda)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import boto3

from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.reconciler import Reconciler

log = logging.getLogger(__name__)


def run_loop(settings: Settings, every_s: float, stuck_after_s: float, failure_queue: str) -> None:
    """One pass every ``every_s`` seconds until SIGTERM/SIGINT (one pass if 0)."""
    reconciler = Reconciler(
        ledger=open_ledger(settings.ledger_url, settings.region),
        lambda_client=boto3.client("lambda", region_name=settings.region),
        function_name=settings.delivery_function,
        stuck_after_s=stuck_after_s,
        sqs=boto3.client("sqs", region_name=settings.region) if failure_queue else None,
        failure_queue_url=failure_queue,
    )
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
