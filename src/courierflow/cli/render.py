"""Everything the commands show: tables, summaries and JSON on stdout (what a pipe or a
script reads), progress, confirmations and diagnostics on stderr (what a person watches).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.status import Status
from rich.table import Table

from courierflow.aws.cli import Output, echo_json
from courierflow.dead_letters import DeadLetterView
from courierflow.errors import ConnectionLost, CourierflowError
from courierflow.ledger.base import FileState, OrderRecord, split_source
from courierflow.local import runner
from courierflow.local.stack import StackInfo
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary

#: the data a command produces (tables, lists, JSON): what a pipe or a script reads
stdout = Console()
#: progress, confirmations, warnings and errors: what a person watches
stderr = Console(stderr=True)

#: rejected rows, failed and lost orders named in the terminal (each); the rest are in
#: report.html, the rejects file and `courierflow status`
SHOWN_REJECTS = 20
#: failed orders `courierflow status` lists in its table form (--output json lists all)
SHOWN_FAILURES = 50


def say(line: str) -> None:
    """A confirmation or a note for the person at the terminal, on stderr."""
    stderr.print(line)


def error(exc: CourierflowError) -> None:
    """The one sentence an error of courierflow's ends a command with, and for a lost
    connection, what to do about it."""
    stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    if isinstance(exc, ConnectionLost):
        stderr.print(
            "is the local stack up? Start it with `courierflow up`, or point "
            "COURIERFLOW_QUEUE_URL (or COURIERFLOW_AMQP_URL) at your broker."
        )


# --- the local stack ----------------------------------------------------------------------


def starting_stack() -> Status:
    """A spinner while the local stack starts."""
    return stderr.status("starting the local stack (RabbitMQ takes ~20 s on first start)")


def stack(info: StackInfo) -> None:
    """The stack's addresses on stdout, with `export` lines for boto3 and the AWS CLI."""
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


# --- a run --------------------------------------------------------------------------------


@contextmanager
def progress_bars() -> Iterator[Callable[[runner.Progress], None]]:
    """Bars for published, dispatched and delivered orders on stderr, drawn from the first
    snapshot the body of the ``with`` passes to the yielded function (their clocks start
    then, after any spinner before it) until the ``with`` ends."""
    columns = (
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    bars = Progress(*columns, console=stderr, transient=False)
    tasks: dict[str, TaskID] = {}

    def show(p: runner.Progress) -> None:
        if not tasks:
            bars.start()
            for name in ("published", "dispatched", "delivered"):
                tasks[name] = bars.add_task(name, total=None, note="")
        c = p.counts
        total = p.file.published if p.file and p.file.state is not FileState.PROCESSING else None
        delivered = c[OrderState.DELIVERED]
        on_road = c[OrderState.DELIVERING]
        dispatched = delivered + on_road + c[OrderState.DISPATCHED] + c[OrderState.FAILED]
        bars.update(tasks["published"], completed=p.total, total=total or p.total or None)
        bars.update(tasks["dispatched"], completed=dispatched, total=total)
        note = f"in flight {on_road}, failed {c[OrderState.FAILED]}"
        bars.update(tasks["delivered"], completed=delivered, total=total, note=note)

    try:
        yield show
    finally:
        if tasks:
            bars.stop()


def uploaded(bucket: str, key: str, output: Output | None) -> None:
    """Say where the file went, on stderr; with --no-wait and --output json, its address
    is the command's one document (``output`` is None when the summary follows)."""
    stderr.print(f"uploaded s3://{bucket}/{key}", soft_wrap=True, highlight=False)
    if output is Output.JSON:
        echo_json({"file": f"s3://{bucket}/{key}"})


def run_summary(s: RunSummary, rejects: list[tuple[int, str]], output: Output) -> None:
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
        len(s.failures) + s.failures_not_listed,
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
        bucket, _ = split_source(s.file)
        stderr.print(
            f"rejected rows are listed in s3://{bucket}/rejects/ (line, reason, row)",
            soft_wrap=True,
        )


def _summary_table(s: RunSummary) -> Table:
    table = Table(title=f"run summary: {s.file}", show_header=False)
    for name, value in s.labelled():
        table.add_row(name, str(value))
    return table


def _print_first(lines: list[str], total: int, what: str) -> None:
    """The first SHOWN_REJECTS of ``lines``, then how many of ``total`` were not shown."""
    for line in lines[:SHOWN_REJECTS]:
        stderr.print(line, soft_wrap=True)
    shown = min(len(lines), SHOWN_REJECTS)
    if total > shown:
        stderr.print(f"... {total - shown} more {what}")


def report_written(report: Path, plot: Path | None) -> None:
    """Where report.html (and the timeline PNG) went, on stderr."""
    stderr.print(f"report: {report.absolute().as_uri()}", soft_wrap=True)
    if plot:
        stderr.print(f"timeline: {plot}", soft_wrap=True)


def write_summary_json(summary: RunSummary, path: Path) -> None:
    """The summary as JSON in ``path`` (the keys of --output json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.to_json(), indent=2))
    stderr.print(f"summary written to {path}", soft_wrap=True)


# --- the ledger and the queue -------------------------------------------------------------


def _counts_table(counts: Mapping[OrderState, int]) -> Table:
    table = Table(title="orders by state")
    table.add_column("state")
    table.add_column("orders", justify="right")
    for state, n in counts.items():
        table.add_row(state.value, str(n))
    return table


def watch_counts(counts: Callable[[], Mapping[OrderState, int]]) -> None:
    """The counts by state as a table refreshed every second, until Ctrl-C."""
    with Live(_counts_table(counts()), console=stdout, refresh_per_second=2) as live:
        while True:
            time.sleep(1)
            live.update(_counts_table(counts()))


def status(counts: Mapping[OrderState, int], failed: list[OrderRecord], output: Output) -> None:
    """Orders by state and the failed ones with their reasons: one JSON document, or a
    table and the first SHOWN_FAILURES failures."""
    if output is Output.JSON:
        echo_json(
            {
                "counts": {state.value: n for state, n in counts.items()},
                "failures": [{"order_id": r.order_id, "reason": r.reason} for r in failed],
            }
        )
        return
    stdout.print(_counts_table(counts))
    for record in failed[:SHOWN_FAILURES]:
        line = f"[red]failed[/red] {escape(record.order_id)}: {escape(record.reason)}"
        stdout.print(line, soft_wrap=True)
    if len(failed) > SHOWN_FAILURES:
        stderr.print(f"... {len(failed) - SHOWN_FAILURES} more failed orders (--output json)")


def dead_letters(queue: str, letters: list[DeadLetterView], output: Output) -> None:
    """Dead-lettered orders: one JSON document naming the queue, or a table."""
    rows = [
        {
            "order_id": letter.order_id,
            "broker_reason": letter.broker_reason,
            "attempts": letter.attempts,
            "ledger_reason": letter.ledger_reason,
        }
        for letter in letters
    ]
    if output is Output.JSON:
        echo_json({"queue": queue, "dead_letters": rows})
        return
    table = Table(title=f"dead letters of {queue}")
    for col in ("order", "broker reason", "attempts", "ledger reason"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    stdout.print(table)
