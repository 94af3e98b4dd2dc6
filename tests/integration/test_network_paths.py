"""Every compute resource of the stack has a network path to what it uses, for every
parameter combination, checked on the template after the SAM transform (no account)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from courierflow.aws.network import missing_paths, resolve
from tests.integration.test_infra_template import LAB_ROLE, load_template, transformed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COMBINATIONS = [
    {
        "Transport": transport,
        "Mode": mode,
        "RoleArn": role,
        "PrivateAccess": access,
        "InstanceProfileName": "LabInstanceProfile" if role else "",
        "ArtifactBucket": "courierflow-artifacts-test",
    }
    for transport, mode, role, access in itertools.product(
        ["rabbitmq", "sqs"],
        ["manager", "serverless"],
        ["", LAB_ROLE],
        ["nat-instance", "endpoints"],
    )
    if (transport, mode) != ("rabbitmq", "serverless")  # refused by the template's rule
]


def _id(params: dict[str, str]) -> str:
    role = "lab" if params["RoleArn"] else "own-roles"
    return f"{params['Transport']}-{params['Mode']}-{role}-{params['PrivateAccess']}"


@pytest.mark.parametrize("params", COMBINATIONS, ids=_id)
def test_every_resource_reaches_what_it_uses(params: dict[str, str]) -> None:
    resources = resolve(transformed(params), params)
    assert missing_paths(resources, params["Transport"]) == []


def _rabbitmq(access: str) -> tuple[dict[str, Any], dict[str, str]]:
    params = {**COMBINATIONS[0], "PrivateAccess": access}
    return transformed(params), params


def test_the_check_finds_an_endpoint_that_refuses_the_instance() -> None:
    """Defect 2 as it was: the SSM endpoint admitted only the functions' group, while its
    private DNS name took over SSM for the instance as well."""
    template, params = _rabbitmq("endpoints")
    group = template["Resources"]["InterfaceEndpointSecurityGroup"]["Properties"]
    group["SecurityGroupIngress"] = [
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "SourceSecurityGroupId": {"Ref": "FunctionSecurityGroup"}}
    ]  # fmt: skip
    missing = missing_paths(resolve(template, params), "rabbitmq")
    assert missing == [
        "BrokerInstance -> ssm: SsmEndpoint takes its DNS name but its security group refuses 443"
    ]


def test_the_check_finds_a_function_with_no_way_out_of_its_private_subnet() -> None:
    template, params = _rabbitmq("nat-instance")
    del template["Resources"]["PrivateDefaultRoute"]
    missing = missing_paths(resolve(template, params), "rabbitmq")
    assert missing and all(line.startswith("PublisherFunction -> ssm") for line in missing)


def test_the_check_finds_a_nat_instance_that_does_not_forward() -> None:
    template, params = _rabbitmq("nat-instance")
    broker = copy.deepcopy(template["Resources"]["BrokerInstance"])
    broker["Properties"]["SourceDestCheck"] = True
    template["Resources"]["BrokerInstance"] = broker
    assert any(
        "SourceDestCheck" in line for line in missing_paths(resolve(template, params), "rabbitmq")
    )


def test_the_check_finds_a_broker_closed_to_the_publisher() -> None:
    template, params = _rabbitmq("nat-instance")
    del template["Resources"]["BrokerFromFunctions"]
    missing = missing_paths(resolve(template, params), "rabbitmq")
    assert missing == [
        "PublisherFunction -> BrokerInstance:5672: no security group of BrokerInstance "
        "admits port 5672 from it"
    ]


def test_the_template_as_written_declares_private_access_with_a_free_default() -> None:
    declared = load_template()["Parameters"]["PrivateAccess"]
    assert declared["Default"] == "nat-instance"
