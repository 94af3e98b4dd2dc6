"""`courierflow run`, `submit`, `status`, `report` and `dashboard`: a file's orders
through the system, and what became of them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from courierflow.aws import cli as aws_cli
from courierflow.aws.cli import Mode, Output, OutputOpt, Profile, Region, Transport
from courierflow.cli import render
from courierflow.cli.options import (
    CsvFile,
    DuplicateRate,
    FailRate,
    Fleet,
    ModeOpt,
    PlotOpt,
    ReportHtml,
    ReportJson,
    StallTimeout,
    TimeScale,
    TransportOpt,
    Warm,
)
from courierflow.cli.stack import stack_options
from courierflow.config import Settings
from courierflow.exitcodes import ExitCode, exit_code_for_run
from courierflow.ledger.base import open_ledger
from courierflow.local import runner, stack
from courierflow.orders import OrderState


def run(
    file: CsvFile,
    output: OutputOpt = Output.TABLE,
    report_json: ReportJson = None,
    fleet: Fleet = 128,
    warm: Warm = False,
    time_scale: TimeScale = 1.0,
    fail_rate: FailRate = 0.0,
    duplicate_rate: DuplicateRate = 0.0,
    stall_timeout: StallTimeout = 180.0,
    keep_up: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
    transport: TransportOpt = Transport.RABBITMQ,
    mode: ModeOpt = Mode.MANAGER,
    report_html: ReportHtml = None,
    plot: PlotOpt = None,
) -> None:
    """Run FILE through the whole system on this machine and report every order.

    Brings the local stack up (or uses the one running), uploads FILE to the bucket,
    shows progress until every order is delivered or failed, prints a summary and
    writes report.html (timeline, latencies, failures, rejected rows).
    The summary goes to stdout (`--output json`: as one JSON document), progress and
    the failed, lost and rejected orders to stderr. Exits 1 if an order failed or was
    lost, 2 if the file was refused (README: Exit codes).
    """
    aws_cli.check_shape(transport, mode)
    wanted = stack_options(
        fleet, warm, time_scale=time_scale, fail_rate=fail_rate,
        duplicate_rate=duplicate_rate, transport=transport.value, mode=mode.value,
    )  # fmt: skip
    with render.progress_bars() as show:
        finished = runner.run_file(
            Settings.from_env(), file, wanted, stall_timeout, keep_up=keep_up,
            report_html=report_html, plot=plot, starting=render.starting_stack, on_progress=show,
        )  # fmt: skip
    render.run_summary(finished.summary, finished.rejects or [], output)
    if finished.report is not None:
        render.report_written(finished.report, plot)
    _finish(finished, report_json)


def submit(
    file: CsvFile,
    output: OutputOpt = Output.TABLE,
    wait: Annotated[bool, typer.Option(help="Follow the orders until they finish.")] = True,
    aws: Annotated[
        bool,
        typer.Option(
            "--aws", help="Upload to the stack deployed with `courierflow deploy` instead."
        ),
    ] = False,
    stack_name: Annotated[str, typer.Option(help="With --aws: the stack's name.")] = "courierflow",
    region: Region = None,
    profile: Profile = None,
    stall_timeout: StallTimeout = 180.0,
    report_json: ReportJson = None,
) -> None:
    """Upload FILE to the running local stack (`courierflow up`), or with --aws to the
    deployed one, and follow its orders through the ledger until they finish.

    Output and exit codes as `run`'s; --region and --profile apply with --aws."""
    started = time.time()
    if aws:
        import boto3

        from courierflow.aws.deploy import submit as upload_to_aws
        from courierflow.ledger.dynamodb import DynamoDBLedger

        region = aws_cli.aws_region(region, profile)
        uploaded = upload_to_aws(file, stack_name, region)
        render.uploaded(uploaded.bucket, uploaded.key, None if wait else output)
        if not wait:
            return
        ledger = DynamoDBLedger(
            uploaded.ledger_table, client=boto3.client("dynamodb", region_name=region)
        )
        with render.progress_bars() as show:
            finished = runner.follow_file(
                ledger, uploaded.bucket, uploaded.key, uploaded.etag, started, stall_timeout,
                on_progress=show,
            )  # fmt: skip
    else:
        settings = Settings.from_env()
        info = stack.running(settings.home)
        if not wait:
            key, _ = runner.upload(info, file)
            render.uploaded(info.bucket, key, output)
            return
        with render.progress_bars() as show:
            finished = runner.submit_file(info, file, started, stall_timeout, settings, show)
    render.run_summary(finished.summary, finished.rejects or [], output)
    _finish(finished, report_json)


def _finish(finished: runner.FollowedRun, report_json: Path | None) -> None:
    """Write the summary as JSON if asked; exit with the run's code (exitcodes)."""
    if report_json:
        render.write_summary_json(finished.summary, report_json)
    code = exit_code_for_run(finished.summary)
    if code is not ExitCode.OK:
        raise typer.Exit(code)


def status(
    watch: Annotated[bool, typer.Option(help="Keep refreshing every second.")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Orders by state, from the ledger (and failures with their reasons).

    Reads the running stack's ledger, or the last run's when the stack is down; with
    neither, says so and exits 3 (README: Exit codes)."""
    if watch and output is Output.JSON:
        raise typer.BadParameter(
            "--watch refreshes a table: use it without --output json", param_hint="'--watch'"
        )
    ledger = open_ledger(stack.readable_ledger_url(Settings.from_env()))
    if watch:
        render.watch_counts(ledger.counts)
    failed = ledger.in_state(OrderState.FAILED)
    render.status(ledger.counts(), failed, output)


def report(
    source: Annotated[
        str | None,
        typer.Argument(help="The run's file as s3://BUCKET/KEY [default: the latest one]."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it.")] = Path(
        "report.html"
    ),
    plot: PlotOpt = None,
    ledger: Annotated[
        str | None,
        typer.Option(help="Ledger URL: sqlite:///PATH or dynamodb://TABLE [default: the stack's]."),
    ] = None,
) -> None:
    """Write report.html for a past run from the ledger: figures, the delivery timeline
    (one bar per delivery, one lane per busy courier), in-flight, throughput and queue
    depth over time, latency percentiles, failures and rejected rows. Self-contained:
    it opens offline. Works after `courierflow run` and against AWS (`--ledger dynamodb://...`).
    """
    from courierflow.report.run import write_run_report

    base = Settings.from_env()
    settings = stack.settings_for(base.home, base)  # rejected rows are in the stack's bucket
    book = open_ledger(ledger or settings.ledger_url)
    try:
        written = write_run_report(book, out, source, None, plot, settings=settings)
    finally:
        book.close()
    render.report_written(written, plot)


def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="COURIERFLOW_DASHBOARD_TOKEN",
            help="Required from clients (?token=...); mandatory off 127.0.0.1.",
        ),
    ] = None,
    ledger: Annotated[
        str | None, typer.Option(help="Ledger URL to follow [default: the stack's].")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Follow only this file (s3://BUCKET/KEY).")
    ] = None,
) -> None:
    """Serve the live dashboard: counts by state, deliveries in flight, throughput, queue
    depth, dead letters and the latest events, pushed to the page as they happen.
    `courierflow up` starts one on http://127.0.0.1:8765 for you."""
    from courierflow.report.dashboard import serve_dashboard

    settings = Settings.from_env()
    running = stack.load(settings.home)
    if running is None and not ledger:
        ledger = settings.ledger_url
    render.say(f"dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    serve_dashboard(ledger, running, host, port, token, source)
