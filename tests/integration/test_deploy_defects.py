"""Defects 6, 7, 9, 10 and 11 of issue 12, each checked where it lived: the template after
the SAM transform (as CloudFormation runs it) and docs/aws.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from courierflow.aws.network import resolve
from tests.integration.test_infra_template import load_template, transformed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"Transport": "rabbitmq", "Mode": "manager", "ArtifactBucket": "artifacts"}


def _instance() -> dict[str, Any]:
    return dict(transformed(DEFAULTS)["Resources"]["BrokerInstance"])


def test_6_the_stack_completes_only_when_the_instance_signals_and_uploads_are_kept() -> None:
    instance = _instance()
    assert instance["CreationPolicy"]["ResourceSignal"]["Count"] == 1
    script = load_template()["Resources"]["BrokerInstance"]["Properties"]["UserData"]
    text = script["Fn::Base64"]["Fn::Sub"][0]
    assert "signal-resource" in text and "signal SUCCESS" in text and "signal FAILURE" in text
    publisher_failures = [
        r["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        for r in transformed(DEFAULTS)["Resources"].values()
        if r["Type"] == "AWS::Lambda::EventInvokeConfig"
        and r["Properties"]["FunctionName"] == {"Ref": "PublisherFunction"}
    ]
    assert publisher_failures == [{"Fn::GetAtt": ["UploadFailures", "Arn"]}]


def test_7_the_instance_boots_only_once_it_has_a_way_out() -> None:
    depends = set(_instance()["DependsOn"])
    assert {"GatewayAttachment", "PublicDefaultRoute", "PublicSubnetRoutes"} <= depends
    text = load_template()["Resources"]["BrokerInstance"]["Properties"]["UserData"]
    assert "retry apt-get update" in text["Fn::Base64"]["Fn::Sub"][0]


def test_9_the_default_stack_has_no_hourly_interface_endpoint() -> None:
    resources = resolve(transformed(DEFAULTS), DEFAULTS)
    interface = [
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
        and r["Properties"]["VpcEndpointType"] == "Interface"
    ]
    assert interface == []
    with_endpoints = {**DEFAULTS, "PrivateAccess": "endpoints"}
    assert "SsmEndpoint" in resolve(transformed(with_endpoints), with_endpoints)


def test_10_the_instance_has_no_fixed_private_address() -> None:
    assert "PrivateIpAddress" not in _instance()["Properties"]


def test_11_docs_price_dynamodb_at_the_current_rates_and_list_the_idle_costs() -> None:
    text = (ROOT / "docs" / "aws.md").read_text()
    assert "$0.625 per 1M write and $0.125 per 1M read" in text
    assert "$1.25 per 1M write" not in text
    for line in ("CloudWatch Logs", "EBS root volume"):
        assert line in text
