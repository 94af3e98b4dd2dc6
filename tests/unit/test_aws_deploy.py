"""Deploy logic that needs no AWS account: option checks, the template body, the broker
secret (on moto's SSM, in process), submit, and the CLI contract."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from courierflow.aws.deploy import (
    PARAMETER,
    DeployError,
    DeployOptions,
    store_broker_url,
    submit,
    template_body,
    template_parameters,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (DeployOptions(transport="kafka"), "--transport"),
        (DeployOptions(mode="serverless", transport="rabbitmq"), "needs --transport sqs"),
        (DeployOptions(stack_name="Courier_Flow"), "--stack-name"),
        (DeployOptions(private_access="nat-gateway"), "--private-access"),
        (DeployOptions(role_arn="arn:aws:iam::1:role/LabRole"), "--instance-profile"),
    ],
)
def test_impossible_options_are_refused_before_any_aws_call(
    options: DeployOptions, complaint: str
) -> None:
    with pytest.raises(DeployError, match=complaint):
        options.validate()


def test_learner_lab_options_are_accepted_and_passed_as_parameters() -> None:
    options = DeployOptions(role_arn="arn:aws:iam::1:role/LabRole",
                            instance_profile="LabInstanceProfile")  # fmt: skip
    options.validate()
    params = template_parameters(options, artifact_bucket="artifacts")
    assert params["RoleArn"] == "arn:aws:iam::1:role/LabRole"
    assert params["InstanceProfileName"] == "LabInstanceProfile"
    assert params["BrokerSecretParameter"] == PARAMETER


def test_template_body_points_the_layer_at_the_uploaded_zip() -> None:
    body = template_body("s3://artifacts/courierflow/layer_contents.zip")
    assert "ContentUri: s3://artifacts/courierflow/layer_contents.zip" in body
    assert "../layer_contents.zip" not in body


def test_broker_secret_is_a_secure_string_generated_once() -> None:
    said: list[str] = []
    with mock_aws():
        ssm = boto3.client("ssm", region_name="us-east-1")
        assert store_broker_url(ssm, said.append) == PARAMETER
        stored = ssm.get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]
        assert stored["Type"] == "SecureString"
        assert stored["Value"].startswith("amqp://courierflow:")
        # the manager's view of the broker beside it; the publisher gets the instance's
        # address from the stack (COURIERFLOW_AMQP_HOST), so a replaced instance works
        assert stored["Value"].endswith("@localhost:5672/courierflow")
        store_broker_url(ssm, said.append)  # a second deploy keeps the broker's password
        again = ssm.get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]["Value"]
        assert again == stored["Value"]
    assert "kept" in said[-1]
    assert not any(stored["Value"] in line for line in said)  # never printed


def test_submit_without_a_deployed_stack_says_so(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\n1\n")
    with mock_aws(), pytest.raises(DeployError, match="courierflow deploy"):
        submit(orders, "courierflow", "us-east-1")


def test_cli_exposes_deploy_destroy_build_layer_and_aws_check() -> None:
    from courierflow.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("deploy", "destroy", "build-layer", "aws"):
        assert command in top.output
    deploy_help = runner.invoke(app, ["deploy", "--help"], terminal_width=200)
    for option in ("--transport", "--mode", "--role-arn", "--stack-name", "--region"):
        assert option in deploy_help.output
    assert "check" in runner.invoke(app, ["aws", "--help"]).output


def test_cli_deploy_refuses_serverless_rabbitmq_with_a_message() -> None:
    from courierflow.cli import app

    result = CliRunner().invoke(app, ["deploy", "--mode", "serverless"])
    assert result.exit_code == 2  # a usage error (README: exit codes)
    assert "needs --transport sqs" in result.output


@pytest.mark.parametrize(
    ("concurrency", "age", "trigger"),
    [(10, 21600, 8), (100, 3600, 98), (1000, 3600, 998), (25, 9600, 23), (3, 21600, 2),
     (5000, 3600, 1000)],
)  # fmt: skip
def test_the_event_age_and_the_sqs_triggers_concurrency_follow_the_accounts(
    concurrency: int, age: int, trigger: int
) -> None:
    """The event age covers a file's drain time; the SQS trigger runs no more deliveries
    than the account may, less the publisher and the reconciler (within SQS's 2-1000)."""
    from courierflow.aws.account import size_for_concurrency

    assert size_for_concurrency(concurrency) == {
        "DeliveryEventAgeS": str(age),
        "DeliveryQueueConcurrency": str(trigger),
    }


def test_aws_check_reports_concurrency_instance_types_and_roles_of_a_lab_account() -> None:
    from courierflow.aws.account import check

    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="LabRole", AssumeRolePolicyDocument="{}")
        report = check("us-east-1")
    assert report["lab_role"].endswith(":role/LabRole")
    assert "LabInstanceProfile" in report["advice"]
    assert "t3.micro" in report["instance_types"]
    # moto does not implement GetAccountSettings: deploy plans for a lab's 10
    assert report["concurrency"].startswith("unknown")
    assert report["event_age_s"] == "21600"


def test_generated_broker_passwords_are_letters_and_digits_only() -> None:
    """No "-" to be taken for an option, nothing to quote in the AMQP URL."""
    from courierflow.aws.deploy import PASSWORD_LENGTH, generate_password

    passwords = {generate_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(len(p) == PASSWORD_LENGTH and p.isalnum() and p.isascii() for p in passwords)
