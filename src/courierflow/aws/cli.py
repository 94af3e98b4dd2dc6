"""`courierflow aws check`, `deploy`, `destroy`, `build-layer`: parse and delegate.

`courierflow submit FILE --aws` lives with the local submit in the root CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from courierflow.errors import CourierflowError

app = typer.Typer(
    help="Check that this AWS account is ready for courierflow.", no_args_is_help=True
)
Region = Annotated[str, typer.Option(help="AWS region.")]
Stack = Annotated[str, typer.Option(help="CloudFormation stack name.")]


def _fail(exc: CourierflowError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command()
def check(region: Region = "us-east-1") -> None:
    """Credentials, region, and what the account allows (can roles be created?)."""
    from courierflow.aws.deploy import check as run_check

    try:
        report = run_check(region)
    except CourierflowError as exc:
        raise _fail(exc) from None
    for key, value in report.items():
        typer.echo(f"{key:>8}: {value}")


@app.command()
def smoke(
    stack_name: Stack = "courierflow",
    region: Region = "us-east-1",
    orders: Annotated[int, typer.Option(help="Orders in the smoke file.", min=1)] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for them.")] = 600.0,
    report_json: Annotated[Path | None, typer.Option(help="Also write the report here.")] = None,
) -> None:
    """After a deploy: upload a few fresh orders and wait for every one. On failure, name
    the part that did not answer (publisher, manager, delivery) and quote its logs."""
    from courierflow.aws.smoke import run_smoke

    try:
        report = run_smoke(stack_name, region, orders, timeout,
                           say=lambda line: typer.echo(line, err=True))  # fmt: skip
    except CourierflowError as exc:
        raise _fail(exc) from None
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_dict(), indent=2))
    for order, state in report.states.items():
        typer.echo(f"{order}: {state}")
    if not report.ok:
        typer.echo(f"not delivered: {report.failed_part} did not answer", err=True)
        for line in report.diagnosis:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


def build_layer(
    out: Annotated[Path, typer.Option(help="Zip to write.")] = Path("layer_contents.zip"),
    python_version: Annotated[str, typer.Option(help="Lambda runtime's Python.")] = "3.11",
) -> None:
    """Build layer_contents.zip (python/ with pika and courierflow) for the Lambda runtime."""
    from courierflow.aws.layer import build_layer as run_build

    typer.echo(f"wrote {run_build(out, python_version)}")


def deploy(
    transport: Annotated[
        str, typer.Option(help="rabbitmq (broker + manager on EC2) or sqs.")
    ] = "rabbitmq",
    mode: Annotated[
        str, typer.Option(help="manager (EC2), or serverless (sqs only: SQS invokes Lambda).")
    ] = "manager",
    role_arn: Annotated[str, typer.Option(help="Existing role (Learner Lab: LabRole's ARN).")] = "",
    instance_profile: Annotated[str, typer.Option(help="Learner Lab: LabInstanceProfile.")] = "",
    instance_type: Annotated[str, typer.Option(help="t3.micro or t2.micro.")] = "t3.micro",
    key_name: Annotated[str, typer.Option(help="EC2 key pair for SSH.")] = "",
    ssh_cidr: Annotated[str, typer.Option(help="Who may SSH to the instance.")] = "127.0.0.1/32",
    private_access: Annotated[
        str,
        typer.Option(
            help="RabbitMQ: how the publisher reaches SSM: nat-instance (through the manager's "
            "instance, no hourly cost) or endpoints (an SSM interface endpoint, billed hourly)."
        ),
    ] = "nat-instance",
    ami_parameter: Annotated[
        str, typer.Option(help="SSM parameter naming the instance's AMI (Debian 12's).")
    ] = "/aws/service/debian/release/12/latest/amd64",
    transform_locally: Annotated[
        bool,
        typer.Option(
            help="Run the SAM transform here and send the result: for a CloudFormation "
            "stand-in without it (courierflow rehearse uses this against moto).",
            hidden=True,
        ),
    ] = False,
    stack_name: Stack = "courierflow",
    region: Region = "us-east-1",
) -> None:
    """Build and deploy the whole system with one CloudFormation change set."""
    from courierflow.aws.deploy import DeployOptions
    from courierflow.aws.deploy import deploy as run_deploy

    options = DeployOptions(
        stack_name=stack_name, region=region, transport=transport, mode=mode,
        role_arn=role_arn, instance_profile=instance_profile, key_name=key_name,
        ssh_cidr=ssh_cidr, instance_type=instance_type, private_access=private_access,
        ami_parameter=ami_parameter, transform_locally=transform_locally,
    )  # fmt: skip
    try:
        out = run_deploy(options, say=typer.echo)
    except CourierflowError as exc:
        raise _fail(exc) from None
    for key, value in out.items():
        typer.echo(f"{key}: {value}")


def destroy(stack_name: Stack = "courierflow", region: Region = "us-east-1") -> None:
    """Empty the upload bucket and delete the stack."""
    from courierflow.aws.deploy import destroy as run_destroy

    try:
        run_destroy(stack_name, region, say=typer.echo)
    except CourierflowError as exc:
        raise _fail(exc) from None


def rehearse(
    transport: Annotated[str, typer.Option(help="rabbitmq or sqs.")] = "rabbitmq",
    mode: Annotated[str, typer.Option(help="manager or serverless (sqs only).")] = "manager",
    orders: Annotated[Path, typer.Option(help="The CSV file to submit.")] = Path(
        "examples/orders.csv"
    ),
    report_json: Annotated[
        Path | None, typer.Option(help="Write the summary (the keys of run's) here.")
    ] = None,
    redeploy: Annotated[
        bool, typer.Option(help="Deploy again with a changed handler and check it runs.")
    ] = True,
) -> None:
    """Deploy to a stand-in account on this machine (moto) and run what deploy ships:
    the functions from their layer alone, the instance's user data and the manager's
    unit; submit FILE --aws must deliver every order. Exit 0 only when it does."""
    from courierflow.aws.rehearsal import RehearsalOptions, succeeded
    from courierflow.aws.rehearsal import rehearse as run_rehearsal
    from courierflow.config import Settings

    options = RehearsalOptions(transport=transport, mode=mode, orders=orders,
                               home=Settings.from_env().home, redeploy=redeploy)  # fmt: skip
    try:
        summary = run_rehearsal(options, say=lambda line: typer.echo(line, err=True))
    except CourierflowError as exc:
        raise _fail(exc) from None
    if report_json is not None:
        report_json.write_text(json.dumps(summary, indent=2))
    details = summary.get("rehearsal", {})
    typer.echo(
        f"rehearsal {transport}/{mode}: {summary.get('delivered', 0)} delivered, "
        f"{summary.get('failed', 0)} failed, {summary.get('lost', 0)} lost"
        + (
            f"; second deploy: {details.get('second_delivered', 0)} delivered, changed "
            f"handler {'running' if details.get('change_running') else 'NOT seen'}"
            if "change_running" in details
            else ""
        )
    )
    if not succeeded(summary):
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add the top-level AWS commands to the root app."""
    root.command("rehearse")(rehearse)
    root.command("deploy")(deploy)
    root.command("destroy")(destroy)
    root.command("build-layer")(build_layer)
