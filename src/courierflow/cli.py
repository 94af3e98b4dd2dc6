"""The `courierflow` command: parse arguments and delegate; no logic of its own."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import boto3
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from courierflow.aws import cli as aws_cli
from courierflow.aws.cli import Mode, Output, OutputOpt, Profile, Region, Transport, echo_json
from courierflow.config import Settings
from courierflow.errors import ConnectionLost, CourierflowError, StackError
from courierflow.exitcodes import ExitCode, exit_code_for, exit_code_for_run
from courierflow.ledger.base import Ledger, open_ledger
from courierflow.local import runner, stack
from courierflow.local.lab import cli as lab_cli
from courierflow.local.lambda_service import cli as lambda_cli
from courierflow.logs import setup_logging
from courierflow.manager.dispatcher import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PREFETCH
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary

if TYPE_CHECKING:
    from typer._click.core import Context  # what TyperGroup.invoke is declared with

#: the data a command produces (tables, lists, JSON): what a pipe or a script reads
stdout = Console()
#: progress, confirmations, warnings and errors: what a person watches
stderr = Console(stderr=True)


class _Commands(TyperGroup):
    """The root command: an error of courierflow's ends the command with one sentence on
    stderr and the exit code of its kind (courierflow.exitcodes), for every subcommand."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except CourierflowError as exc:
            stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
            if isinstance(exc, ConnectionLost):
                stderr.print(
                    "is the local stack up? Start it with `courierflow up`, or point "
                    "COURIERFLOW_QUEUE_URL (or COURIERFLOW_AMQP_URL) at your broker."
                )
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            ctx.exit(ExitCode.INTERRUPTED)


app = typer.Typer(
    cls=_Commands,
    help=(
        "courierflow: event-driven order processing (S3 -> publisher Lambda -> RabbitMQ -> "
        "manager -> a delivery Lambda per order), on AWS or on one machine.\n\n"
        "Start here: `courierflow run examples/orders.csv` runs the whole system locally "
        "and prints what happened to every order."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
app.add_typer(lambda_cli.app, name="lambda")
app.add_typer(aws_cli.app, name="aws")
aws_cli.register(app)
app.command("lab")(lab_cli.lab)
dlq_app = typer.Typer(help="Dead-lettered orders: look at them, put them back after a fix.")
app.add_typer(dlq_app, name="dlq")

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


def _show_version(value: bool) -> None:
    if value:
        from courierflow import __version__

        typer.echo(f"courierflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """courierflow: event-driven order processing, on AWS or on one machine."""


def _settings() -> Settings:
    return Settings.from_env()


def _running_stack(settings: Settings) -> stack.StackInfo:
    info = stack.load(settings.home)
    if info is None or not info.alive():
        raise StackError(
            f"no local stack is running from {settings.home}: start one with `courierflow up`"
        )
    return info


def _use_stack_env(info: stack.StackInfo) -> Settings:
    os.environ.update(info.client_env())
    return Settings.from_env()


@app.command()
def up(
    fleet: Fleet = 128,
    warm: Warm = False,
    time_scale: TimeScale = 1.0,
    fail_rate: FailRate = 0.0,
    duplicate_rate: DuplicateRate = 0.0,
    managers: Annotated[int, typer.Option(help="Manager processes consuming the queue.")] = 1,
    transport: TransportOpt = Transport.RABBITMQ,
    mode: ModeOpt = Mode.MANAGER,
    dashboard_port: Annotated[
        int, typer.Option(help="Live dashboard port on 127.0.0.1 (0: no dashboard).", min=0)
    ] = 8765,
) -> None:
    """Start the local stack: RabbitMQ, moto (S3, SQS), the Lambda service, the manager,
    the reconciler and the live dashboard. Then `courierflow submit FILE`.

    The stack's addresses go to stdout, with `export` lines for boto3 and the AWS CLI."""
    aws_cli.check_shape(transport, mode)
    info = _start_stack(
        _settings(),
        fleet,
        warm,
        time_scale=time_scale,
        fail_rate=fail_rate,
        duplicate_rate=duplicate_rate,
        managers=managers,
        transport=transport.value,
        mode=mode.value,
        dashboard_port=dashboard_port,
    )
    _print_stack(info)


def _start_stack(settings: Settings, fleet: int, warm: bool, **options: Any) -> stack.StackInfo:
    """Bring the local stack up; ``warm`` provisions every delivery environment."""
    wanted = stack.StackOptions(fleet=fleet, provisioned=fleet if warm else 0, **options)
    with stderr.status("starting the local stack (RabbitMQ takes ~20 s on first start)"):
        return stack.up(settings, wanted)


def _print_stack(info: stack.StackInfo) -> None:
    table = Table(title="courierflow local stack", show_header=False)
    table.add_row("queue", (info.queue_url or info.amqp_url).split("@")[-1])
    table.add_row("S3 / SQS (moto)", info.moto_url)
    table.add_row("Lambda API", info.lambda_url)
    table.add_row("bucket", info.bucket)
    table.add_row("ledger", info.ledger_url)
    table.add_row("logs", f"{info.home}/logs, `courierflow lambda logs lambda_delivery`")
    if info.dashboard_url:
        table.add_row("dashboard", info.dashboard_url)
    if info.console_url:
        table.add_row("RabbitMQ console", f"{info.console_url} (user guest, password guest)")
    stdout.print(table)
    stderr.print("Point boto3 or the AWS CLI at it with:")
    for key, value in info.client_env().items():
        if key.startswith("AWS_ENDPOINT") or key == "COURIERFLOW_AMQP_URL":
            stdout.print(f"export {key}={value}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def down() -> None:
    """Stop what `courierflow up` started, and nothing else."""
    stopped = stack.down(_settings().home)
    stderr.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def run(
    file: CsvFile,
    output: OutputOpt = Output.TABLE,
    report_json: ReportJson = None,
    fleet: Fleet = 128,
    warm: Warm = False,
    time_scale: TimeScale = 1.0,
    fail_rate: FailRate = 0.0,
    duplicate_rate: DuplicateRate = 0.0,
    stall_timeout: Annotated[
        float, typer.Option(help="Seconds without progress before remaining orders count lost.")
    ] = 180.0,
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
    settings = _settings()
    info = stack.load(settings.home)
    started_here = info is None or not info.alive()
    if started_here:
        info = _start_stack(
            settings, fleet, warm, time_scale=time_scale, fail_rate=fail_rate,
            duplicate_rate=duplicate_rate, transport=transport.value, mode=mode.value,
        )  # fmt: skip
    assert info is not None
    try:
        started = time.time()
        summary = _upload_and_follow(info, file, stall_timeout, started)
        rejects = _rejects(summary)  # read while the stack's bucket is still up
        report = None
        if summary.file:  # the publisher recorded the file
            out = report_html or settings.home / "report.html"
            report = _write_report(out, summary.file, started, plot, rejects)
    finally:
        if started_here and not keep_up:
            stack.down(settings.home)
    _print_summary(summary, rejects, output)
    if report is not None:
        stderr.print(f"report: {report.absolute().as_uri()}", soft_wrap=True)
        if plot:
            stderr.print(f"timeline: {plot}", soft_wrap=True)
    _finish(summary, report_json)


def _finish(summary: RunSummary, report_json: Path | None) -> None:
    """Write the summary as JSON if asked; exit with the run's code (exitcodes)."""
    if report_json:
        report_json.parent.mkdir(parents=True, exist_ok=True)
        report_json.write_text(json.dumps(summary.to_json(), indent=2))
        stderr.print(f"summary written to {report_json}", soft_wrap=True)
    code = exit_code_for_run(summary)
    if code is not ExitCode.OK:
        raise typer.Exit(code)


def _write_report(
    out: Path,
    source: str,
    started: float | None,
    plot: Path | None,
    rejects: list[tuple[int, str]],
) -> Path:
    from courierflow.report.run import write_run_report

    ledger = open_ledger(_settings().ledger_url)
    try:
        return write_run_report(ledger, out, source or None, started, plot, rejects)
    finally:
        ledger.close()


def _upload_and_follow(
    info: stack.StackInfo, file: Path, stall_timeout: float, started: float
) -> RunSummary:
    settings = _use_stack_env(info)
    ledger = open_ledger(settings.ledger_url)
    key, etag = runner.upload(info, file)
    return _follow(ledger, info.bucket, key, etag, stall_timeout, started)


def _follow(
    ledger: Ledger, bucket: str, key: str, etag: str, stall_timeout: float, started: float
) -> RunSummary:
    """Follow one uploaded file's orders through the ledger, with progress bars."""
    columns = (
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bars:
        tasks = {
            name: bars.add_task(name, total=None, note="")
            for name in ("published", "dispatched", "delivered")
        }

        def show(p: runner.Progress) -> None:
            c = p.counts
            total = p.file.published if p.file and p.file.state.value != "processing" else None
            delivered = c[OrderState.DELIVERED]
            on_road = c[OrderState.DELIVERING]
            dispatched = delivered + on_road + c[OrderState.DISPATCHED] + c[OrderState.FAILED]
            bars.update(tasks["published"], completed=p.total, total=total or p.total or None)
            bars.update(tasks["dispatched"], completed=dispatched, total=total)
            note = f"in flight {on_road}, failed {c[OrderState.FAILED]}"
            bars.update(tasks["delivered"], completed=delivered, total=total, note=note)

        return runner.follow(ledger, bucket, key, etag, started, stall_timeout, show)


#: rejected rows, failed and lost orders named in the terminal (each); the rest are in
#: report.html, the rejects file and `courierflow status`
SHOWN_REJECTS = 20


def _rejects(summary: RunSummary) -> list[tuple[int, str]]:
    """(line, reason) of the rows the publisher rejected, from its rejects file."""
    if not (summary.file and summary.rejected):
        return []
    from courierflow.report.run import fetch_rejects

    return fetch_rejects(summary.file)


def _print_summary(s: RunSummary, rejects: list[tuple[int, str]], output: Output) -> None:
    """The summary on stdout (a table, or the JSON of --report-json); what went wrong with
    which order on stderr, as diagnostics."""
    if output is Output.JSON:
        echo_json(s.to_json())
    else:
        stdout.print(_summary_table(s))
    if s.refused:
        stderr.print(f"[red]file refused:[/red] {escape(s.refused)}", soft_wrap=True)
    if s.note:
        stderr.print(f"[yellow]note:[/yellow] {escape(s.note)}", soft_wrap=True)
    _print_first(
        [f"[red]failed[/red] {escape(order)}: {escape(why)}" for order, why in s.failures],
        len(s.failures),
        "failed orders (courierflow status)",
    )
    if s.lost_orders:
        shown = ", ".join(s.lost_orders[:SHOWN_REJECTS])
        more = f" and {s.lost - SHOWN_REJECTS} more" if s.lost > SHOWN_REJECTS else ""
        stderr.print(f"[red]not finished (lost)[/red]: {shown}{more}", soft_wrap=True)
    if s.rejected:
        name = s.file.rpartition("/")[2]
        _print_first(
            [
                f"[yellow]rejected[/yellow] {escape(name)} line {n}: {escape(why)}"
                for n, why in rejects
            ],
            s.rejected,
            "rejected rows",
        )
        bucket = s.file.removeprefix("s3://").partition("/")[0]
        stderr.print(
            f"rejected rows are listed in s3://{bucket}/rejects/ (line, reason, row)",
            soft_wrap=True,
        )


def _summary_table(s: RunSummary) -> Table:
    table = Table(title=f"run summary: {s.file}", show_header=False)
    rows = [
        ("rows read", s.rows),
        ("rejected", s.rejected),
        ("published", s.published),
        ("already delivered (left alone)", s.skipped),
        ("delivered", s.delivered),
        ("failed", s.failed),
        ("unaccounted for (lost)", s.lost),
        ("duplicate deliveries skipped", s.duplicates),
        ("makespan", f"{s.makespan_s:.2f} s"),
        ("peak concurrent deliveries", s.peak_concurrency),
        ("throughput", f"{s.throughput_per_s:.1f} deliveries/s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _print_first(lines: list[str], total: int, what: str) -> None:
    """The first SHOWN_REJECTS of ``lines``, then how many of ``total`` were not shown."""
    for line in lines[:SHOWN_REJECTS]:
        stderr.print(line, soft_wrap=True)
    shown = min(len(lines), SHOWN_REJECTS)
    if total > shown:
        stderr.print(f"... {total - shown} more {what}")


@app.command()
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
    stall_timeout: Annotated[
        float, typer.Option(help="Seconds without progress before remaining orders count lost.")
    ] = 180.0,
    report_json: ReportJson = None,
) -> None:
    """Upload FILE to the running local stack (`courierflow up`), or with --aws to the
    deployed one, and follow its orders through the ledger until they finish.

    Output and exit codes as `run`'s; --region and --profile apply with --aws."""
    started = time.time()
    if aws:
        from courierflow.aws.deploy import submit as upload_to_aws
        from courierflow.ledger.dynamodb import DynamoDBLedger

        region = aws_cli.aws_region(region, profile)
        uploaded = upload_to_aws(file, stack_name, region)
        _uploaded(uploaded.bucket, uploaded.key, None if wait else output)
        if not wait:
            return
        ledger: Ledger = DynamoDBLedger(
            uploaded.ledger_table, client=boto3.client("dynamodb", region_name=region)
        )
        summary = _follow(
            ledger, uploaded.bucket, uploaded.key, uploaded.etag, stall_timeout, started
        )
    else:
        info = _running_stack(_settings())
        if not wait:
            key, _ = runner.upload(info, file)
            _uploaded(info.bucket, key, output)
            return
        summary = _upload_and_follow(info, file, stall_timeout, started)
    _print_summary(summary, _rejects(summary), output)
    _finish(summary, report_json)


def _uploaded(bucket: str, key: str, output: Output | None) -> None:
    """Say where the file went, on stderr; with --no-wait and --output json, its address
    is the command's one document (``output`` is None when the summary follows)."""
    stderr.print(f"uploaded s3://{bucket}/{key}", soft_wrap=True, highlight=False)
    if output is Output.JSON:
        echo_json({"file": f"s3://{bucket}/{key}"})


#: failed orders `courierflow status` lists in its table form (--output json lists all)
SHOWN_FAILURES = 50


@app.command()
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
    ledger = open_ledger(_readable_ledger_url())

    def render() -> Table:
        counts = ledger.counts()
        table = Table(title="orders by state")
        table.add_column("state")
        table.add_column("orders", justify="right")
        for state, n in counts.items():
            table.add_row(state.value, str(n))
        return table

    if watch:
        with Live(render(), console=stdout, refresh_per_second=2) as live:
            while True:
                time.sleep(1)
                live.update(render())
    failed = [r for r in ledger.orders() if r.state is OrderState.FAILED]
    if output is Output.JSON:
        counts = {state.value: n for state, n in ledger.counts().items()}
        failures = [{"order_id": r.order_id, "reason": r.reason} for r in failed]
        echo_json({"counts": counts, "failures": failures})
        return
    stdout.print(render())
    for record in failed[:SHOWN_FAILURES]:
        line = f"[red]failed[/red] {escape(record.order_id)}: {escape(record.reason)}"
        stdout.print(line, soft_wrap=True)
    if len(failed) > SHOWN_FAILURES:
        stderr.print(f"... {len(failed) - SHOWN_FAILURES} more failed orders (--output json)")


def _readable_ledger_url() -> str:
    """The ledger `status` reads: the stack's, or COURIERFLOW_LEDGER_URL's.

    Raises:
        StackError: no stack and no ledger file where the settings point (a fresh home).
    """
    settings = _settings()
    info = stack.load(settings.home)
    if info is not None:
        return _use_stack_env(info).ledger_url
    path = settings.ledger_url.removeprefix("sqlite:///")
    if path != settings.ledger_url and not Path(path).exists():
        raise StackError(
            f"no local stack is running from {settings.home} and no ledger is there yet: "
            "start one with `courierflow up` (or run a file with `courierflow run FILE`), "
            "or point COURIERFLOW_LEDGER_URL at a ledger"
        )
    return settings.ledger_url


@app.command()
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
    serve(_settings().with_secrets(), max_in_flight=workers, prefetch=prefetch)


@app.command()
def reconcile(
    every: Annotated[float, typer.Option(help="Seconds between passes; 0 runs one pass.")] = 5.0,
    stuck_after: Annotated[float, typer.Option(help="Seconds before an order is stuck.")] = 60.0,
    failure_queue: Annotated[str, typer.Option(help="On-failure destination queue URL.")] = "",
) -> None:
    """Find orders stuck past a deadline and re-dispatch them; record final failures."""
    from courierflow.local.reconcile_loop import run_loop

    setup_logging()
    run_loop(_settings(), every, stuck_after, failure_queue)


@app.command()
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

    settings = _settings()
    info = stack.load(settings.home)
    if info is not None and info.alive():
        settings = _use_stack_env(info)  # rejected rows are read from the stack's bucket
    book = open_ledger(ledger or settings.ledger_url)
    try:
        written = write_run_report(book, out, source, None, plot)
    finally:
        book.close()
    stderr.print(f"report: {written.absolute().as_uri()}", soft_wrap=True)
    if plot:
        stderr.print(f"timeline: {plot}", soft_wrap=True)


@app.command()
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

    settings = _settings()
    if stack.load(settings.home) is None and not ledger:
        ledger = settings.ledger_url
    stderr.print(f"dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    serve_dashboard(ledger, settings.home, host, port, token, source)


@dlq_app.command("list")
def dlq_list(output: OutputOpt = Output.TABLE) -> None:
    """Dead-lettered orders with their reason and attempt count."""
    from courierflow.transports.base import open_transport

    settings = _settings()
    info = stack.load(settings.home)
    if info is not None:
        settings = _use_stack_env(info)
    letters = open_transport(settings.queue_url, settings.queue).dead_letters()
    ledger = open_ledger(settings.ledger_url)
    rows = []
    for letter in letters:
        record = ledger.get_order(letter.order_id)
        rows.append(
            {
                "order_id": letter.order_id,
                "broker_reason": letter.reason,
                "attempts": letter.attempts,
                "ledger_reason": record.reason if record else "",
            }
        )
    if output is Output.JSON:
        echo_json({"queue": settings.queue, "dead_letters": rows})
        return
    table = Table(title=f"dead letters of {settings.queue}")
    for col in ("order", "broker reason", "attempts", "ledger reason"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    stdout.print(table)


@dlq_app.command("replay")
def dlq_replay(
    order: Annotated[str | None, typer.Option(help="Only this order id.")] = None,
) -> None:
    """Put dead-lettered orders back on the queue (after fixing the cause)."""
    from courierflow.transports.base import open_transport

    settings = _settings()
    info = stack.load(settings.home)
    if info is not None:
        settings = _use_stack_env(info)
    moved = open_transport(settings.queue_url, settings.queue).replay_dead_letters(order)
    stderr.print(f"replayed {moved} message(s)")


def main() -> None:
    """The `courierflow` command. Its errors exit with the codes of courierflow.exitcodes:
    courierflow's own through the root command (:class:`_Commands`), an unexpected one
    here, after its traceback, so that 1 always means "not every order delivered"."""
    logging.basicConfig(level=logging.WARNING)
    # pika logs every failed connection attempt as an ERROR with a traceback; the
    # commands say it once, in a sentence (services re-enable it with setup_logging)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        app()
    except Exception:
        sys.excepthook(*sys.exc_info())  # typer's: the traceback, without locals
        raise SystemExit(ExitCode.FAILED) from None


if __name__ == "__main__":
    main()
