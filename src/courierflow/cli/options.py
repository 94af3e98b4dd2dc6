"""The options several commands share, each with its help and environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from courierflow.aws.cli import Mode, Transport

Fleet = Annotated[
    int,
    typer.Option(help="Concurrent delivery environments (the courier fleet).", min=1),
]
Warm = Annotated[
    bool,
    typer.Option(
        help="Start every delivery environment with the stack (Lambda's provisioned "
        "concurrency): no ramp-up when the first orders arrive, ~2.3 MB of RAM per "
        "environment kept."
    ),
]
TimeScale = Annotated[
    float,
    typer.Option(
        envvar="COURIERFLOW_TIME_SCALE",
        min=0.0,
        help="Multiplies delivery delays: 0.01 turns 2-10 s into 20-100 ms.",
    ),
]
FailRate = Annotated[
    float,
    typer.Option(
        envvar="COURIERFLOW_FAIL_RATE",
        min=0.0,
        max=1.0,
        help="Fraction of orders whose delivery fails (fault injection).",
    ),
]
DuplicateRate = Annotated[
    float,
    typer.Option(
        envvar="COURIERFLOW_DUPLICATE_RATE",
        min=0.0,
        max=1.0,
        help="Fraction of orders the manager invokes twice (fault injection: the claim "
        "must skip each second attempt; the summary counts them as duplicates).",
    ),
]
TransportOpt = Annotated[
    Transport, typer.Option("--transport", help="Queue: rabbitmq, or sqs (moto's SQS locally).")
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode", help="manager (a consumer invokes each delivery) or serverless (sqs only)."
    ),
]
CsvFile = Annotated[
    Path,
    typer.Argument(
        help="CSV file of orders (see README: CSV schema).", exists=True, dir_okay=False
    ),
]
ReportHtml = Annotated[
    Path | None,
    typer.Option(help="Where to write report.html [default: COURIERFLOW_HOME/report.html]."),
]
ReportJson = Annotated[
    Path | None,
    typer.Option(help="Also write the summary as JSON here (the keys of --output json)."),
]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Also draw the delivery timeline to this PNG.")
]
StallTimeout = Annotated[
    float, typer.Option(help="Seconds without progress before remaining orders count lost.")
]
