"""The `courierflow` command: parse arguments and delegate; no logic of its own.

One module per audience, each command a thin call into a library function:
:mod:`~courierflow.cli.pipeline` (run, submit, status, report, dashboard),
:mod:`~courierflow.cli.stack` (up, down), :mod:`~courierflow.cli.dlq`,
:mod:`~courierflow.cli.service` (manager, reconcile); everything shown is drawn by
:mod:`~courierflow.cli.render`. The AWS, Lambda and lab commands come from their own
packages (``courierflow.aws.cli``, ``courierflow.local.lambda_service.cli``,
``courierflow.local.lab.cli``).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from courierflow.aws import cli as aws_cli
from courierflow.cli import dlq, pipeline, render, service
from courierflow.cli import stack as stack_commands
from courierflow.errors import CourierflowError
from courierflow.exitcodes import ExitCode, exit_code_for
from courierflow.local.lab import cli as lab_cli
from courierflow.local.lambda_service import cli as lambda_cli

if TYPE_CHECKING:
    from typer._click.core import Context  # what TyperGroup.invoke is declared with


class _Commands(TyperGroup):
    """The root command: an error of courierflow's ends the command with one sentence on
    stderr and the exit code of its kind (courierflow.exitcodes), for every subcommand."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except CourierflowError as exc:
            render.error(exc)
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
# the order of `courierflow --help`: commands as registered here, then the groups
app.add_typer(lambda_cli.app, name="lambda")
app.add_typer(aws_cli.app, name="aws")
aws_cli.register(app)
app.command("lab")(lab_cli.lab)
app.command()(stack_commands.up)
app.command()(stack_commands.down)
app.command()(pipeline.run)
app.command()(pipeline.submit)
app.command()(pipeline.status)
app.command()(service.manager)
app.command()(service.reconcile)
app.command()(pipeline.report)
app.command()(pipeline.dashboard)
app.add_typer(dlq.app, name="dlq")


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
