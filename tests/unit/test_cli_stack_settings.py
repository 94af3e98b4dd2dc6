"""The commands that read a local stack reach it through the Settings it describes
(``local.stack.settings_for``): its ledger, its queue, and moto's S3 and SQS with the
stand-ins' dummy credentials; the process environment is left as it was."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner, Result

from courierflow import cli
from courierflow.config import Settings
from courierflow.exitcodes import ExitCode
from courierflow.ledger.base import open_ledger
from courierflow.local import stack
from courierflow.local.processes import free_port
from courierflow.local.stack_parts import LOCAL_SQS_WAIT_S, function_env
from courierflow.transports.base import OutgoingMessage, open_transport
from courierflow.transports.sqs import SQSTransport

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

#: what the stack's processes find in their environment, and this process must not gain
STACK_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "COURIERFLOW_LEDGER_URL")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    try:
        yield f"http://127.0.0.1:{server._port}"
    finally:
        server.stop()


def describe_stack(home: Path, moto_url: str, queue_url: str = "") -> stack.StackInfo:
    """stack.json as `courierflow up` writes it, for a stack whose only live part is moto."""
    home.mkdir(parents=True, exist_ok=True)
    info = stack.StackInfo(
        home=str(home),
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        moto_url=moto_url,
        lambda_url="",
        ledger_url=f"sqlite:///{home / 'stack-ledger.db'}",
        queue="stack-orders",
        queue_url=queue_url,
    )
    (home / stack.STACK_FILE).write_text(json.dumps(asdict(info)))
    return info


def invoke(home: Path, *args: str) -> Result:
    """`courierflow ARGS` with no AWS credentials and no endpoint in the environment."""
    env: dict[str, str | None] = {
        "COURIERFLOW_HOME": str(home),
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_CONFIG_FILE": str(home / "no-config"),
    }
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_settings_for_points_the_base_settings_at_the_described_stack(
    tmp_path: Path, clean_environment: None
) -> None:
    base = Settings.from_env({"COURIERFLOW_HOME": str(tmp_path), "COURIERFLOW_TIME_SCALE": "0.5"})
    assert stack.settings_for(tmp_path, base) is base, "no stack described: the base as is"

    info = describe_stack(tmp_path, "http://127.0.0.1:4566")
    settings = stack.settings_for(tmp_path, base)

    assert (settings.ledger_url, settings.queue, settings.amqp_url) == (
        info.ledger_url,
        "stack-orders",
        info.amqp_url,
    )
    assert settings.queue_url == info.amqp_url, "RabbitMQ: the queue is on the broker"
    assert settings.local_aws_url == "http://127.0.0.1:4566"
    assert settings.region == "us-east-1"
    assert settings.time_scale == 0.5, "what the stack does not describe stays the base's"
    assert not any(name in os.environ for name in STACK_VARIABLES)


def test_a_settings_client_reaches_the_stacks_moto_and_elsewhere_aws(
    tmp_path: Path,
) -> None:
    info = describe_stack(tmp_path, "http://127.0.0.1:4566")
    local = info.settings(Settings()).aws_client("s3")
    assert local.meta.endpoint_url == "http://127.0.0.1:4566"

    aws = Settings(region="eu-west-1").aws_client("s3")
    assert aws.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_dlq_list_reads_the_stacks_sqs_queue_and_ledger_without_endpoint_variables(
    tmp_path: Path, moto_url: str, clean_environment: None
) -> None:
    queue = SQSTransport("sqs://dlq-orders", client=stack.local_client("sqs", moto_url))
    queue_url, dead_url = queue.ensure_queues()
    queue.publish([OutgoingMessage(b'{"order_id": "A-7"}', "A-7", "m-7")])
    message = queue._client.receive_message(QueueUrl=queue_url, MessageAttributeNames=["All"])
    queue._client.send_message(
        QueueUrl=dead_url,
        MessageBody=message["Messages"][0]["Body"],
        MessageAttributes={
            **message["Messages"][0]["MessageAttributes"],
            "courierflow_reason": {"DataType": "String", "StringValue": "rejected"},
        },
    )
    home = tmp_path / "home"
    info = describe_stack(home, moto_url, queue_url=queue_url)
    ledger = open_ledger(info.ledger_url)
    ledger.add_queued(["A-7"], "s3://courierflow-orders/orders.csv", time.time())
    ledger.mark_failed("A-7", "courier lost the parcel", time.time())
    ledger.close()

    result = invoke(home, "dlq", "list", "--output", "json")

    assert result.exit_code == ExitCode.OK, result.output
    document = json.loads(result.stdout)
    assert document["queue"] == "stack-orders"
    assert document["dead_letters"] == [
        {
            "order_id": "A-7",
            "broker_reason": "rejected",
            "attempts": 1,
            "ledger_reason": "courier lost the parcel",
        }
    ]
    assert not any(name in os.environ for name in STACK_VARIABLES)


def test_report_reads_rejected_rows_from_the_stacks_bucket(
    tmp_path: Path, moto_url: str, clean_environment: None
) -> None:
    home = tmp_path / "home"
    info = describe_stack(home, moto_url)
    s3 = stack.local_client("s3", moto_url)
    s3.create_bucket(Bucket="report-orders")
    s3.put_object(
        Bucket="report-orders",
        Key="rejects/orders.csv",
        Body=b"line,reason,raw\n3,quantity is not a whole number: 'two',\"B-2,two\"\n",
    )
    ledger = open_ledger(info.ledger_url)
    ledger.add_queued(["B-1"], "s3://report-orders/orders.csv", time.time())
    ledger.close()
    out = tmp_path / "report.html"

    result = invoke(home, "report", "--out", str(out))

    assert result.exit_code == ExitCode.OK, result.output
    page = out.read_text()
    assert "Rejected rows (1)" in page
    assert "quantity is not a whole number" in page
    assert not any(name in os.environ for name in STACK_VARIABLES)


def test_the_sqs_wait_is_read_clamped_to_what_sqs_takes_and_reaches_the_transport() -> None:
    """COURIERFLOW_SQS_WAIT_S: 20 unset (long polling), 0-20 as SQS's ReceiveMessage takes;
    the local stack's managers get a short one so that `down` stops them cleanly."""
    assert Settings.from_env({}).sqs_wait_s == 20
    assert Settings.from_env({"COURIERFLOW_SQS_WAIT_S": "3"}).sqs_wait_s == 3
    assert Settings.from_env({"COURIERFLOW_SQS_WAIT_S": "60"}).sqs_wait_s == 20
    assert Settings.from_env({"COURIERFLOW_SQS_WAIT_S": "-1"}).sqs_wait_s == 0
    env = function_env(stack.StackOptions())
    assert Settings.from_env(env).sqs_wait_s == LOCAL_SQS_WAIT_S < 15  # inside down's grace
    transport = open_transport("sqs://orders", "orders", "us-east-1", sqs_wait_s=3)
    assert isinstance(transport, SQSTransport) and transport.wait_time_s == 3
    default = open_transport("sqs://orders", "orders", "us-east-1")
    assert isinstance(default, SQSTransport) and default.wait_time_s == 20
