"""`courierflow up` and `down`: the local stack, for people who keep it running."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from courierflow.aws.cli import Mode, Transport, check_shape
from courierflow.cli import render
from courierflow.cli.options import (
    DuplicateRate,
    FailRate,
    Fleet,
    ModeOpt,
    TimeScale,
    TransportOpt,
    Warm,
)
from courierflow.config import Settings
from courierflow.local import stack


def stack_options(fleet: int, warm: bool, **options: Any) -> stack.StackOptions:
    """The stack the options ask for; ``warm`` provisions every delivery environment."""
    return stack.StackOptions(fleet=fleet, provisioned=fleet if warm else 0, **options)


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
    check_shape(transport, mode)
    wanted = stack_options(
        fleet, warm, time_scale=time_scale, fail_rate=fail_rate, duplicate_rate=duplicate_rate,
        managers=managers, transport=transport.value, mode=mode.value,
        dashboard_port=dashboard_port,
    )  # fmt: skip
    with render.starting_stack():
        info = stack.up(Settings.from_env(), wanted)
    render.stack(info)


def down() -> None:
    """Stop what `courierflow up` started, and nothing else."""
    stopped = stack.down(Settings.from_env().home)
    render.say(f"stopped: {', '.join(stopped) or 'nothing was running'}")
