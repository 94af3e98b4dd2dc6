"""The SAM template, checked without an AWS account: cfn-lint, the SAM transform for every
parameter combination, and the wiring that matters (notification, timeouts, handlers,
queues, security groups)."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from courierflow.aws.deploy import DeployOptions, template_parameters
from courierflow.ledger.dynamodb import TABLE_KEY_SCHEMA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
#: what `courierflow deploy` puts in place of the local layer path
LAYER_URI = "s3://courierflow-artifacts-test/courierflow/layer_contents.zip"
LAB_ROLE = "arn:aws:iam::123456789012:role/LabRole"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation's short tags into their long form."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return doc


class NoManagedPolicies:
    """The managed-policy loader the translator asks for; the template names ARNs itself."""

    def load(self) -> dict[str, str]:
        return {}


def transformed(parameters: dict[str, str]) -> dict[str, Any]:
    """The template after the SAM transform, as CloudFormation would receive it."""
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(load_template())
    template["Resources"]["DependencyLayer"]["Properties"]["ContentUri"] = LAYER_URI
    result: dict[str, Any] = transform(template, parameters, NoManagedPolicies())
    return result

COMBINATIONS = [
    combo
    for combo in itertools.product(["rabbitmq", "sqs"], ["manager", "serverless"], ["", LAB_ROLE])
    if combo[:2] != ("rabbitmq", "serverless")  # refused by the template's rule
]


def _params(transport: str, mode: str, role: str) -> dict[str, str]:
    return {"Transport": transport, "Mode": mode, "RoleArn": role,
            "ArtifactBucket": "courierflow-artifacts-test"}  # fmt: skip


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def test_template_is_cfn_lint_clean() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("transport", "mode", "role"), COMBINATIONS)
def test_sam_transform_succeeds_for_every_combination(
    transport: str, mode: str, role: str
) -> None:
    resources = transformed(_params(transport, mode, role))["Resources"]
    functions = {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in _of_type(resources, "AWS::Lambda::Function").values()
    }
    assert set(functions) == {"lambda_order_publisher", "lambda_delivery", "courierflow_reconciler"}
    publisher, delivery = functions["lambda_order_publisher"], functions["lambda_delivery"]
    assert publisher["Timeout"] == 60
    assert publisher["Handler"] == "courierflow.functions.publisher.lambda_handler"
    assert delivery["Timeout"] == 15
    assert delivery["Handler"] == "courierflow.functions.delivery.lambda_handler"
    assert all(f["Runtime"] == "python3.11" for f in functions.values())
    assert all(f["Layers"] for f in functions.values())

    (invoke_config,) = _of_type(resources, "AWS::Lambda::EventInvokeConfig").values()
    assert invoke_config["Properties"]["MaximumRetryAttempts"] == 2
    on_failure = invoke_config["Properties"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Destination"] == {"Fn::GetAtt": ["DeliveryFailures", "Arn"]}

    (rule,) = _of_type(resources, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    (table,) = _of_type(resources, "AWS::DynamoDB::Table").values()
    assert table["Properties"]["KeySchema"] == TABLE_KEY_SCHEMA
    assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
    (layer,) = _of_type(resources, "AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["Content"]["S3Key"] == "courierflow/layer_contents.zip"
    # the S3 trigger: SAM adds the permission and the bucket's notification
    assert _of_type(resources, "AWS::Lambda::Permission")
    # conditions decide the rest at deploy time; they are all still in the template
    assert "BrokerInstance" in resources and "OrdersQueue" in resources


def test_the_template_wires_notification_queues_and_security_as_intended() -> None:
    resources = load_template()["Resources"]
    upload = resources["PublisherFunction"]["Properties"]["Events"]["Upload"]["Properties"]
    assert upload["Bucket"] == {"Ref": "UploadBucket"}
    assert upload["Events"] == "s3:ObjectCreated:*"
    bucket = resources["UploadBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    queue = resources["OrdersQueue"]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["OrdersDeadLetters", "Arn"]
    }
    mapping = resources["DeliveryFromQueue"]
    assert mapping["Condition"] == "Serverless"
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]

    ingress = resources["BrokerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    amqp = ingress[0]["Fn::If"][1]
    assert ingress[0]["Fn::If"][0] == "UseRabbit"
    assert amqp["FromPort"] == amqp["ToPort"] == 5672
    assert amqp["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"}
    assert "CidrIp" not in amqp
    ssh = ingress[1]
    assert (ssh["FromPort"], ssh["CidrIp"]) == (22, {"Ref": "SshCidr"})

    gateway_services = sorted(
        r["Properties"]["ServiceName"]["Fn::Sub"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"]["VpcEndpointType"] == "Gateway"
    )
    assert gateway_services == ["com.amazonaws.${AWS::Region}.dynamodb",
                                "com.amazonaws.${AWS::Region}.s3"]  # fmt: skip


def test_serverless_mode_with_rabbitmq_is_refused_by_a_rule() -> None:
    rule = load_template()["Rules"]["ServerlessNeedsSqs"]
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "Transport"}, "sqs"]}


def test_deploy_passes_only_parameters_the_template_declares() -> None:
    declared = set(load_template()["Parameters"])
    passed = template_parameters(DeployOptions(), artifact_bucket="b", secret_parameter="/p")
    assert set(passed) <= declared
    assert {"Transport", "Mode", "RoleArn", "InstanceProfileName", "SshCidr"} <= set(passed)
