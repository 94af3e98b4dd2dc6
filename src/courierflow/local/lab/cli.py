"""`courierflow lab DIR`: the command. Parses arguments and delegates to the lab modules."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from courierflow.config import DEFAULT_DELIVERY_FUNCTION, DEFAULT_PUBLISHER_FUNCTION, Settings
from courierflow.exitcodes import ExitCode
from courierflow.local.lab.diagnose import Finding, diagnose
from courierflow.local.lab.follow import Observation, follow, order_records, summarize
from courierflow.local.lab.follow import wait_for_consumer as manager_listening
from courierflow.local.lab.stack import BUCKET, Lab, LabOptions
from courierflow.local.lab.starter import write_starter
from courierflow.report.html import render_report
from courierflow.report.summary import RunSummary

stdout = Console()
stderr = Console(stderr=True)

#: seconds the manager gets to start consuming before the upload goes ahead anyway
CONSUMER_WAIT_S = 20.0


def _say(text: str) -> None:
    stderr.print(escape(text), soft_wrap=True, highlight=False)


def lab(
    directory: Annotated[
        Path, typer.Argument(help="The folder with your three programs.", file_okay=False)
    ],
    init: Annotated[
        bool, typer.Option("--init", help="Write a starter trio into DIR and stop.")
    ] = False,
    upload: Annotated[
        Path | None,
        typer.Option(
            help="Upload this CSV to the bucket and follow its orders.", exists=True, dir_okay=False
        ),
    ] = None,
    report_json: Annotated[
        Path | None, typer.Option(help="Write the summary (the keys of run's) here.")
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave everything running at the end.")
    ] = False,
    publisher: Annotated[
        str, typer.Option(help="The publisher's function name (and module, NAME.py).")
    ] = DEFAULT_PUBLISHER_FUNCTION,
    delivery: Annotated[
        str, typer.Option(help="The delivery's function name (and module, NAME.py).")
    ] = DEFAULT_DELIVERY_FUNCTION,
    manager: Annotated[str, typer.Option(help="The manager script, run from DIR.")] = "manager.py",
    stall_timeout: Annotated[
        float, typer.Option(help="Seconds without progress before the run is called over.", min=1)
    ] = 45.0,
) -> None:
    """Run the AWS lab's own three programs, unmodified, on this machine.

    DIR holds `lambda_order_publisher.py` and `lambda_delivery.py` (handler
    `lambda_handler` each) and `manager.py`. They run against a private RabbitMQ (port
    5672 when free; guest/guest from this machine; its console's address is printed),
    moto's S3 with the upload bucket `lab-orders` (an upload invokes the publisher with
    the S3 event, as S3 does) and the local Lambda service (the two functions, timeouts
    30 s and 15 s, retries 1 and 2 s apart; DIR/requirements.txt installed as a layer).
    `python manager.py` runs in DIR.

    Your code (the manager and the functions) gets these variables: AWS_ENDPOINT_URL_LAMBDA
    (the local Lambda API), AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL_SQS (moto),
    AWS_ENDPOINT_URL, dummy AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_REGION and
    AWS_DEFAULT_REGION (us-east-1), and the broker's RABBITMQ_HOST, RABBITMQ_PORT,
    RABBITMQ_USER, RABBITMQ_PASSWORD and AMQP_URL. boto3 reads the endpoints by itself.

    With --upload FILE: upload, follow every order through the Lambda service's log and
    RabbitMQ's queues, print a summary and explain the mistakes seen (a wrong function
    name, acks before the invoke or none, nobody consuming, a handler that raises, a
    timeout); exit 0 only when every row was delivered and nothing looked wrong. Without
    --keep everything stops at the end (without --upload: at Ctrl-C).
    """
    if init:
        for path in write_starter(directory):
            _say(f"wrote {path}")
        _say(f"run it with: courierflow lab {directory} --upload examples/orders.csv")
        return
    home = Settings.from_env().home.absolute()
    options = LabOptions(directory.absolute(), home / "lab", publisher, delivery, manager)
    running = Lab(options, _say)
    kept = False
    code = ExitCode.OK
    try:
        running.start()
        _print_endpoints(running)
        if upload is not None:
            code = _run_upload(running, upload, report_json, stall_timeout)
        if keep:
            kept = True
            _print_kept(running)
        elif upload is None:
            _say("running; upload with `aws s3 cp FILE s3://lab-orders/` (the endpoints "
                 "above) and stop with Ctrl-C")  # fmt: skip
            signal.pause()
    finally:
        if not kept:
            running.close()
            _say("stopped everything the lab started")
    if code is not ExitCode.OK:
        raise typer.Exit(code)


def _run_upload(running: Lab, upload: Path, report_json: Path | None, stall: float) -> ExitCode:
    rows = count_rows(upload)
    if not manager_listening(running, CONSUMER_WAIT_S):
        _say("the manager consumes no queue yet; uploading anyway")
    started = time.time()
    key = running.upload(upload)
    _say(f"uploaded s3://{BUCKET}/{key} ({rows} rows); following its orders ...")
    seen = follow(running, rows, started, stall, _progress(rows))
    records = order_records(seen)
    summary = summarize(seen, f"s3://{BUCKET}/{key}", records)
    logs = {name: running.function_log(name) for name in (seen.publisher, seen.delivery)}
    findings = diagnose(seen, running.manager_log, logs)
    report = running.options.work / "report.html"
    report.write_text(render_report(summary, records, started), encoding="utf-8")
    document = report_document(summary, seen, findings, running, report)
    if report_json is not None:
        report_json.write_text(json.dumps(document, indent=2))
    stdout.print(_summary_table(summary))
    for finding in findings:
        stderr.print(f"[red]mistake:[/red] {escape(finding.text)}", soft_wrap=True)
    _say(f"report: file://{report}")
    _say(f"logs: {running.options.work / 'logs'}, {running.lambda_state / 'logs'}")
    if summary.delivered < rows or findings:
        return ExitCode.NOT_DELIVERED
    return ExitCode.OK


def count_rows(path: Path) -> int:
    """The file's data rows, as csv.DictReader reads them (blank lines skipped)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return sum(
            1 for row in csv.DictReader(handle) if any((v or "").strip() for v in row.values())
        )


def report_document(
    summary: RunSummary, seen: Observation, findings: list[Finding], running: Lab, report: Path
) -> dict[str, Any]:
    """`run --report-json`'s keys, and under ``lab`` what the stand-ins recorded."""
    return {
        **summary.to_json(),
        "lab": {
            "findings": [{"mistake": f.mistake.value, "text": f.text} for f in findings],
            "stalled": seen.stalled,
            "manager_exit_code": seen.manager_exit,
            "delivery_invocations": len(seen.attempts(seen.delivery)),
            "publisher_invocations": len(seen.attempts(seen.publisher)),
            "functions": seen.health.get("functions", {}),
            "queues": [
                {
                    "name": q.get("name"),
                    "messages_ready": q.get("messages_ready", 0),
                    "messages_unacknowledged": q.get("messages_unacknowledged", 0),
                    "consumers": q.get("consumers", 0),
                    "published": (q.get("message_stats") or {}).get("publish", 0),
                    "acknowledged": (q.get("message_stats") or {}).get("ack", 0),
                }
                for q in seen.queues
            ],
            "report_html": str(report),
            "console_url": running.console_url,
        },
    }


def _progress(rows: int) -> Any:
    shown = [-1, 0.0]

    def show(seen: Observation) -> None:
        done = len(seen.delivered())
        if done != shown[0] and (done == rows or time.monotonic() - shown[1] >= 1.0):
            shown[0], shown[1] = done, time.monotonic()
            _say(f"delivered {done}/{rows}")

    return show


def _summary_table(s: RunSummary) -> Table:
    table = Table(title=f"lab run summary: {s.file}", show_header=False)
    for name, value in s.labelled(lab=True):
        table.add_row(name, str(value))
    return table


def _print_endpoints(running: Lab) -> None:
    table = Table(title="courierflow lab", show_header=False)
    env = running.code_env()
    table.add_row("RabbitMQ", f"{env['AMQP_URL']}")
    table.add_row("RabbitMQ console", f"{running.console_url} (user guest, password guest)")
    table.add_row("S3 (moto)", f"{running.moto_url}, bucket {BUCKET}")
    table.add_row("Lambda API", running.lambda_url)
    table.add_row("your code", str(running.options.directory))
    stderr.print(table)


def _print_kept(running: Lab) -> None:
    _say("left running (--keep); your shell can reach it with:")
    for key, value in running.code_env().items():
        if key != "PYTHONUNBUFFERED":
            stdout.print(f"export {key}={value}", soft_wrap=True, markup=False, highlight=False)
    groups = " ".join(f"-{pid}" for pid in running.pids().values())
    _say(f"stop it with: kill -TERM -- {groups}")
