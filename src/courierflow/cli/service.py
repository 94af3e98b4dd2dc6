"""`courierflow manager` and `reconcile`: the long-running services (on EC2, or as
children of the local stack), configured from the environment."""

from __future__ import annotations

from typing import Annotated

import typer

from courierflow.config import Settings
from courierflow.logs import setup_logging
from courierflow.manager.dispatcher import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PREFETCH


def manager(
    workers: Annotated[
        int, typer.Option(help="Invoke calls in flight at once.", min=1)
    ] = DEFAULT_MAX_IN_FLIGHT,
    prefetch: Annotated[
        int, typer.Option(help="Unacked messages the broker hands us.", min=1)
    ] = DEFAULT_PREFETCH,
) -> None:
    """Consume the order queue and invoke `lambda_delivery` once per order (runs on EC2).

    Settings come from the environment: COURIERFLOW_AMQP_URL, COURIERFLOW_QUEUE,
    COURIERFLOW_LEDGER_URL, AWS_ENDPOINT_URL_LAMBDA (unset on AWS). Stops cleanly on
    SIGTERM/SIGINT after settling what is in flight.
    """
    from courierflow.manager.service import serve

    setup_logging()
    serve(Settings.from_env().with_secrets(), max_in_flight=workers, prefetch=prefetch)


def reconcile(
    every: Annotated[float, typer.Option(help="Seconds between passes; 0 runs one pass.")] = 5.0,
    stuck_after: Annotated[float, typer.Option(help="Seconds before an order is stuck.")] = 60.0,
    failure_queue: Annotated[str, typer.Option(help="On-failure destination queue URL.")] = "",
) -> None:
    """Find orders stuck past a deadline and re-dispatch them; record final failures."""
    from courierflow.local.reconcile_loop import run_loop

    setup_logging()
    run_loop(Settings.from_env(), every, stuck_after, failure_queue)
