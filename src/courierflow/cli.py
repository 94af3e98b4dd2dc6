"""The `courierflow` command: parse arguments and delegate; no logic of its own."""

from __future__ import annotations

import typer

from courierflow.aws import cli as aws_cli
from courierflow.local.lambda_service import cli as lambda_cli

app = typer.Typer(
    help=(
        "courierflow: event-driven order processing (S3 -> publisher Lambda -> RabbitMQ -> "
        "manager -> a delivery Lambda per order), on AWS or on one machine.\n\n"
        "Start here: `courierflow run examples/orders.csv` runs the whole system locally."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(lambda_cli.app, name="lambda")
app.add_typer(aws_cli.app, name="aws")
aws_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
