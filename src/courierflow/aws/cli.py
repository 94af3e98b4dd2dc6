"""`courierflow aws check`, `deploy`, `destroy`, `build-layer`: parse and delegate.

`courierflow submit FILE --aws` lives with the local submit in the root CLI, which also
uses the choices and AWS options defined here. Errors are not caught here: the root
command reports them with their exit code (courierflow.exitcodes)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from courierflow.config import DEFAULT_REGION, resolve_region
from courierflow.exitcodes import ExitCode

app = typer.Typer(
    help="Check that this AWS account is ready for courierflow.", no_args_is_help=True
)


class Transport(StrEnum):
    """The order queue (`--transport`)."""

    #: a RabbitMQ quorum queue (locally a private node; on AWS the EC2 instance's)
    RABBITMQ = "rabbitmq"
    #: Amazon SQS (locally moto's)
    SQS = "sqs"


class Mode(StrEnum):
    """Who invokes the delivery function (`--mode`)."""

    #: the manager consumes the queue and invokes one delivery per order
    MANAGER = "manager"
    #: an SQS event source mapping invokes it (SQS only)
    SERVERLESS = "serverless"


class PrivateAccess(StrEnum):
    """How the publisher reaches SSM in a RabbitMQ deploy (`--private-access`)."""

    #: through the manager's instance, no hourly cost
    NAT_INSTANCE = "nat-instance"
    #: an SSM interface endpoint, billed hourly
    ENDPOINTS = "endpoints"


class Output(StrEnum):
    """What a command writes on stdout (`--output`)."""

    #: tables and lines for people
    TABLE = "table"
    #: exactly one JSON document, for scripts
    JSON = "json"


Region = Annotated[
    str | None,
    typer.Option(
        envvar=["AWS_REGION", "AWS_DEFAULT_REGION"],
        help=f"AWS region [default: the profile's region, else {DEFAULT_REGION}].",
        show_default=False,
    ),
]
Profile = Annotated[
    str | None,
    typer.Option(
        envvar="AWS_PROFILE",
        help="AWS profile (in ~/.aws/config) for credentials and region [default: boto3's].",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Output, typer.Option("--output", help="table (for people) or json (one document).")
]
Stack = Annotated[str, typer.Option(help="CloudFormation stack name.")]


def aws_region(region: str | None, profile: str | None) -> str:
    """Point boto3's default session at ``profile`` (when given) and return the region:
    ``region``, else as boto3 resolves it (the profile's, then us-east-1).

    Raises:
        typer.BadParameter: no such profile.
    """
    if region is None:
        region = resolve_region({"AWS_PROFILE": profile or ""})
    if profile:
        import boto3
        from botocore.exceptions import ProfileNotFound

        try:
            boto3.setup_default_session(profile_name=profile, region_name=region)
        except ProfileNotFound as exc:
            raise typer.BadParameter(str(exc), param_hint="'--profile' / AWS_PROFILE") from None
    return region


def check_shape(transport: Transport, mode: Mode) -> None:
    """Refuse a serverless mode without SQS before anything starts.

    Raises:
        typer.BadParameter: ``--mode serverless`` with ``--transport rabbitmq``.
    """
    if mode is Mode.SERVERLESS and transport is not Transport.SQS:
        raise typer.BadParameter(
            "serverless needs --transport sqs (SQS invokes the function)", param_hint="'--mode'"
        )


def echo_json(document: Any) -> None:
    """Write ``document`` as the only thing on stdout."""
    typer.echo(json.dumps(document, indent=2, default=str))


def _say(line: str) -> None:
    """Progress of a long AWS command, on stderr."""
    typer.echo(line, err=True)


@app.command()
def check(region: Region = None, profile: Profile = None, output: OutputOpt = Output.TABLE) -> None:
    """Credentials, region, and what the account allows (can roles be created?)."""
    from courierflow.aws.account import check as run_check

    report = run_check(aws_region(region, profile))
    if output is Output.JSON:
        echo_json(report)
        return
    for key, value in report.items():
        typer.echo(f"{key:>8}: {value}")


@app.command()
def smoke(
    stack_name: Stack = "courierflow",
    region: Region = None,
    profile: Profile = None,
    orders: Annotated[int, typer.Option(help="Orders in the smoke file.", min=1)] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for them.")] = 600.0,
    report_json: Annotated[Path | None, typer.Option(help="Also write the report here.")] = None,
) -> None:
    """After a deploy: upload a few fresh orders and wait for every one. On failure, name
    the part that did not answer (publisher, manager, delivery) and quote its logs."""
    from courierflow.aws.smoke import run_smoke

    report = run_smoke(stack_name, aws_region(region, profile), orders, timeout, say=_say)
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_dict(), indent=2))
    for order, state in report.states.items():
        typer.echo(f"{order}: {state}")
    if not report.ok:
        typer.echo(f"not delivered: {report.failed_part} did not answer", err=True)
        for line in report.diagnosis:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(ExitCode.NOT_DELIVERED)


def build_layer(
    out: Annotated[Path, typer.Option(help="Zip to write.")] = Path("layer_contents.zip"),
    python_version: Annotated[str, typer.Option(help="Lambda runtime's Python.")] = "3.11",
) -> None:
    """Build layer_contents.zip (python/ with pika and courierflow) for the Lambda runtime."""
    from courierflow.aws.layer import build_layer as run_build

    typer.echo(f"wrote {run_build(out, python_version)}", err=True)


def deploy(
    transport: Annotated[
        Transport, typer.Option(help="rabbitmq (broker + manager on EC2) or sqs.")
    ] = Transport.RABBITMQ,
    mode: Annotated[
        Mode, typer.Option(help="manager (EC2), or serverless (sqs only: SQS invokes Lambda).")
    ] = Mode.MANAGER,
    role_arn: Annotated[str, typer.Option(help="Existing role (Learner Lab: LabRole's ARN).")] = "",
    instance_profile: Annotated[str, typer.Option(help="Learner Lab: LabInstanceProfile.")] = "",
    instance_type: Annotated[str, typer.Option(help="t3.micro or t2.micro.")] = "t3.micro",
    key_name: Annotated[str, typer.Option(help="EC2 key pair for SSH.")] = "",
    ssh_cidr: Annotated[str, typer.Option(help="Who may SSH to the instance.")] = "127.0.0.1/32",
    private_access: Annotated[
        PrivateAccess,
        typer.Option(
            help="RabbitMQ: how the publisher reaches SSM: nat-instance (through the manager's "
            "instance, no hourly cost) or endpoints (an SSM interface endpoint, billed hourly)."
        ),
    ] = PrivateAccess.NAT_INSTANCE,
    ami_parameter: Annotated[
        str, typer.Option(help="SSM parameter naming the instance's AMI (Debian 12's).")
    ] = "/aws/service/debian/release/12/latest/amd64",
    time_scale: Annotated[
        float,
        typer.Option(
            help="Multiplies the delivery's simulated trip (1: the lab's 2-10 s; above 0, "
            "at most 10)."
        ),
    ] = 1.0,
    transform_locally: Annotated[
        bool,
        typer.Option(
            help="Run the SAM transform here and send the result: for a CloudFormation "
            "stand-in without it (courierflow rehearse uses this against moto).",
            hidden=True,
        ),
    ] = False,
    stack_name: Stack = "courierflow",
    region: Region = None,
    profile: Profile = None,
) -> None:
    """Build and deploy the whole system with one CloudFormation change set. Progress
    goes to stderr; the stack's outputs (KEY: VALUE) to stdout."""
    from courierflow.aws.deploy import DeployOptions
    from courierflow.aws.deploy import deploy as run_deploy
    from courierflow.errors import DeployError

    options = DeployOptions(
        stack_name=stack_name, region=aws_region(region, profile), transport=transport.value,
        mode=mode.value, role_arn=role_arn, instance_profile=instance_profile,
        key_name=key_name, ssh_cidr=ssh_cidr, instance_type=instance_type,
        private_access=private_access.value, ami_parameter=ami_parameter,
        time_scale=time_scale, transform_locally=transform_locally,
    )  # fmt: skip
    try:
        options.validate()
    except DeployError as exc:  # an impossible mix of options: a usage error
        raise typer.BadParameter(str(exc)) from None
    out = run_deploy(options, say=_say)
    for key, value in out.items():
        typer.echo(f"{key}: {value}")


def destroy(
    stack_name: Stack = "courierflow", region: Region = None, profile: Profile = None
) -> None:
    """Empty the upload bucket and delete the stack."""
    from courierflow.aws.deploy import destroy as run_destroy

    run_destroy(stack_name, aws_region(region, profile), say=_say)


def rehearse(
    transport: Annotated[Transport, typer.Option(help="rabbitmq or sqs.")] = Transport.RABBITMQ,
    mode: Annotated[Mode, typer.Option(help="manager or serverless (sqs only).")] = Mode.MANAGER,
    orders: Annotated[
        Path, typer.Option(help="The CSV file to submit.", exists=True, dir_okay=False)
    ] = Path("examples/orders.csv"),
    report_json: Annotated[
        Path | None, typer.Option(help="Write the summary (the keys of run's) here.")
    ] = None,
    redeploy: Annotated[
        bool, typer.Option(help="Deploy again with a changed handler and check it runs.")
    ] = True,
    time_scale: Annotated[
        float,
        typer.Option(
            help="The stack's DeliveryTimeScale: 0.1 makes the lab's 2-10 s trips "
            "0.2-1 s; 1 as in the lab.",
            min=0.001,
            max=10,
        ),
    ] = 0.1,
) -> None:
    """Deploy to a stand-in account on this machine (moto) and run what deploy ships:
    the functions from their layer alone, the instance's user data and the manager's
    unit; submit FILE --aws must deliver every order. Exit 0 only when it does."""
    from courierflow.aws.rehearsal import RehearsalOptions, succeeded
    from courierflow.aws.rehearsal import rehearse as run_rehearsal
    from courierflow.config import Settings

    check_shape(transport, mode)
    options = RehearsalOptions(transport=transport.value, mode=mode.value, orders=orders,
                               home=Settings.from_env().home, redeploy=redeploy,
                               time_scale=time_scale)  # fmt: skip
    summary = run_rehearsal(options, say=_say)
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
        raise typer.Exit(ExitCode.NOT_DELIVERED)


def register(root: typer.Typer) -> None:
    """Add the top-level AWS commands to the root app."""
    root.command("rehearse")(rehearse)
    root.command("deploy")(deploy)
    root.command("destroy")(destroy)
    root.command("build-layer")(build_layer)
