"""Run the manager as a service: build clients from settings, stop cleanly on signals."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import boto3

from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.manager.dispatcher import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PREFETCH, Dispatcher
from courierflow.manager.event_invoker import EventInvoker
from courierflow.transports.base import open_transport

log = logging.getLogger(__name__)


def build_dispatcher(
    settings: Settings, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, prefetch: int = DEFAULT_PREFETCH
) -> Dispatcher:
    """A dispatcher wired to the services the settings and boto3's endpoints name."""
    session = boto3.Session(region_name=settings.region)
    lambda_client = session.client("lambda")
    return Dispatcher(
        transport=open_transport(
            settings.queue_url, settings.queue, settings.region, sqs_wait_s=settings.sqs_wait_s
        ),
        invoker=EventInvoker(lambda_client, max_connections=max_in_flight, session=session),
        ledger=open_ledger(settings.ledger_url, settings.region),
        function_name=settings.delivery_function,
        max_in_flight=max_in_flight,
        prefetch=prefetch,
        duplicate_rate=settings.duplicate_rate,
    )


def serve(
    settings: Settings, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, prefetch: int = DEFAULT_PREFETCH
) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight invokes, ack, and close."""
    dispatcher = build_dispatcher(settings, max_in_flight, prefetch)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing in-flight orders", signal.Signals(signum).name)
        dispatcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher.run()
