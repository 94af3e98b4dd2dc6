"""`courierflow lambda serve` and `courierflow lambda logs`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from courierflow.config import Settings
from courierflow.local.lambda_service.config import account_limits, parse_flags

app = typer.Typer(
    help=(
        "Run Lambda handlers on this machine behind the real Lambda API (no Docker).\n\n"
        "Point boto3 or the AWS CLI at it: `export AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:9001`."
    ),
    no_args_is_help=True,
)


def _state_dir(state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    return Settings.from_env().home / "lambda"


@app.command()
def serve(
    function: Annotated[
        list[str], typer.Option("--function", help="NAME=MODULE:HANDLER (repeatable).")
    ] = [],  # noqa: B006 - typer needs a literal default
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="NAME.KEY=VALUE: timeout, memory, concurrency, retry_delays, max_retries, "
            "max_event_age, on_failure, idle_timeout, sqs_batch_size, sqs_batching_window, "
            "sqs_max_concurrency, report_batch_item_failures, code_dir, layers "
            "(comma-separated folders), runtime_python (run isolated under that "
            "interpreter), env.VAR.",
        ),
    ] = [],  # noqa: B006
    event_source_sqs: Annotated[
        list[str], typer.Option("--event-source-sqs", help="NAME=QUEUE_URL: poll SQS for NAME.")
    ] = [],  # noqa: B006
    code_dir: Annotated[
        list[Path], typer.Option("--code-dir", help="Put DIR on the import path (repeatable).")
    ] = [],  # noqa: B006
    config: Annotated[
        Path | None, typer.Option(help="TOML file with [functions.NAME] (and [account]).")
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9001,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    state_dir: Annotated[Path | None, typer.Option(help="Logs go under DIR/logs.")] = None,
    inject_latency_ms: Annotated[
        float, typer.Option(help="Delay every Invoke answer (benchmarks: AWS's round trip).")
    ] = 0.0,
    account_concurrency: Annotated[
        int | None,
        typer.Option(
            help="Executions at once across every function, as an account's concurrency "
            "(AWS Academy's Learner Lab: 10); events wait in their queue. Default: no cap.",
            envvar="COURIERFLOW_LAMBDA_ACCOUNT_CONCURRENCY",
        ),
    ] = None,
    async_invoke_rate: Annotated[
        float | None,
        typer.Option(
            help="Event invokes accepted per second; past it Invoke answers 429 "
            "TooManyRequestsException. Default: no limit.",
            envvar="COURIERFLOW_LAMBDA_ASYNC_INVOKE_RATE",
        ),
    ] = None,
    async_invoke_burst: Annotated[
        int | None,
        typer.Option(
            help="Event invokes accepted at once before the rate applies "
            "(default: one second's worth).",
            envvar="COURIERFLOW_LAMBDA_ASYNC_INVOKE_BURST",
        ),
    ] = None,
) -> None:
    """Serve the Invoke, GetFunction and ListFunctions APIs for the given handlers.

    Example:

        courierflow lambda serve --port 9001 \\
          --function lambda_delivery=courierflow.functions.delivery:lambda_handler \\
          --set lambda_delivery.timeout=15 --set lambda_delivery.concurrency=256

    Like a Learner Lab account: add --account-concurrency 10 --async-invoke-rate 50.
    """
    from courierflow.local.lambda_service.service import serve as run_service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    functions = parse_flags(function, set_, event_source_sqs, config)
    if not functions:
        raise typer.BadParameter("give at least one --function NAME=MODULE:HANDLER (or --config)")
    account = account_limits(config, account_concurrency, async_invoke_rate, async_invoke_burst)
    dirs = [str(d.absolute()) for d in code_dir]
    service = run_service(
        functions, host, port, _state_dir(state_dir), dirs, inject_latency_ms, account
    )
    try:
        import uvloop  # optional: roughly halves the HTTP path's CPU cost
    except ImportError:
        asyncio.run(service)
    else:
        uvloop.run(service)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Function name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(help="The service's --state-dir.")] = None,
) -> None:
    """Print a function's log (START / output / END / REPORT per invocation)."""
    path = _state_dir(state_dir) / "logs" / f"{name}.log"
    if not path.exists():
        raise typer.BadParameter(f"no log for {name!r} at {path}: has it been invoked?")
    with open(path, encoding="utf-8", errors="replace") as log:
        while True:
            chunk = log.read()
            if chunk:
                typer.echo(chunk, nl=False)
            elif not follow:
                return
            else:
                time.sleep(0.3)
