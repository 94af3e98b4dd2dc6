"""The SAM template, checked without an AWS account: cfn-lint, the SAM transform for every
parameter combination, and the wiring that matters (notification, timeouts, handlers,
queues, security groups)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from courierflow.aws import artifacts, template
from courierflow.aws.deploy import DeployOptions, template_parameters
from courierflow.ledger.dynamodb import TABLE_PROPERTIES, table_definition

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = artifacts.TEMPLATE
#: what `courierflow deploy` puts in place of the local layer path
LAYER_URI = "s3://courierflow-artifacts-test/courierflow/layer_contents.zip"
LAB_ROLE = "arn:aws:iam::123456789012:role/LabRole"


def load_template() -> dict[str, Any]:
    return template.parse(TEMPLATE.read_text())


def transformed(parameters: dict[str, str], layer_uri: str = LAYER_URI) -> dict[str, Any]:
    """The template after the SAM transform, as CloudFormation would receive it."""
    doc = load_template()
    doc["Resources"]["DependencyLayer"]["Properties"]["ContentUri"] = layer_uri
    return template.transform(doc, parameters)


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
def test_sam_transform_succeeds_for_every_combination(transport: str, mode: str, role: str) -> None:
    resources = transformed(_params(transport, mode, role))["Resources"]
    functions = {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in _of_type(resources, "AWS::Lambda::Function").values()
    }
    assert set(functions) == {"lambda_order_publisher", "lambda_delivery", "courierflow_reconciler"}
    publisher, delivery = functions["lambda_order_publisher"], functions["lambda_delivery"]
    assert publisher["Timeout"] == 900  # Lambda's maximum; a longer file resumes on retry
    assert publisher["Handler"] == "courierflow.functions.publisher.lambda_handler"
    assert delivery["Timeout"] == 15
    assert delivery["Handler"] == "courierflow.functions.delivery.lambda_handler"
    assert all(f["Runtime"] == "python3.11" for f in functions.values())
    assert all(f["Layers"] for f in functions.values())

    invoke_configs = {
        r["Properties"]["FunctionName"]["Ref"]: r["Properties"]
        for r in _of_type(resources, "AWS::Lambda::EventInvokeConfig").values()
    }
    # both asynchronously invoked functions keep what fails: S3 invokes the publisher,
    # the manager the delivery
    destinations = {"PublisherFunction": "UploadFailures", "DeliveryFunction": "DeliveryFailures"}
    assert set(invoke_configs) == set(destinations)
    for function, queue in destinations.items():
        assert invoke_configs[function]["MaximumRetryAttempts"] == 2
        on_failure = invoke_configs[function]["DestinationConfig"]["OnFailure"]
        assert on_failure["Destination"] == {"Fn::GetAtt": [queue, "Arn"]}
    # the transform resolves the parameter: its default is Lambda's maximum, 6 hours
    assert invoke_configs["DeliveryFunction"]["MaximumEventAgeInSeconds"] == 21600

    (rule,) = _of_type(resources, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    (table,) = _of_type(resources, "AWS::DynamoDB::Table").values()
    # the table the code expects, index and all (tests create theirs from the same)
    assert table["Properties"] == TABLE_PROPERTIES
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
    # no more deliveries at once than the account may run (`deploy` sizes the parameter)
    assert mapping["Properties"]["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "DeliveryQueueConcurrency"}
    }

    ingress = resources["BrokerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(rule["FromPort"], rule["CidrIp"]) for rule in ingress] == [(22, {"Ref": "SshCidr"})]
    amqp = resources["BrokerFromFunctions"]
    assert amqp["Condition"] == "UseRabbit"
    assert amqp["Properties"]["FromPort"] == amqp["Properties"]["ToPort"] == 5672
    assert amqp["Properties"]["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"}
    assert "CidrIp" not in amqp["Properties"]
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


# --- the transformed template on moto's CloudFormation --------------------------------------
# moto creates every resource type here except AWS::Lambda::EventInvokeConfig (skipped with
# a warning), and it does not apply a bucket's NotificationConfiguration: both are checked on
# the transformed template instead; so are the functions' Layers (moto's Lambda drops them
# when CloudFormation creates a function). The Debian AMI parameter (an SSM public parameter)
# is replaced by a fixed AMI id, as moto has no /aws/service/debian/... parameters.

DEPLOYED = [("rabbitmq", "manager", ""), ("sqs", "serverless", ""), ("sqs", "manager", LAB_ROLE)]


def _deploy_on_moto(transport: str, mode: str, role: str) -> dict[str, str]:
    import boto3

    params = _params(transport, mode, role)
    template = transformed(params)
    template["Parameters"]["DebianAmi"] = {"Type": "String", "Default": "ami-12c6146b"}
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=params["ArtifactBucket"])
    s3.put_object(
        Bucket=params["ArtifactBucket"], Key="courierflow/layer_contents.zip", Body=b"PK\x05\x06"
    )
    if role:  # Learner Lab: the role and the instance profile exist before the stack
        iam = boto3.client("iam", region_name="us-east-1")
        principal = {"Service": ["lambda.amazonaws.com", "ec2.amazonaws.com"]}
        statement = {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": principal}
        trust = {"Version": "2012-10-17", "Statement": [statement]}
        iam.create_role(RoleName="LabRole", AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName="LabInstanceProfile")
        iam.add_role_to_instance_profile(
            InstanceProfileName="LabInstanceProfile", RoleName="LabRole"
        )
        params["InstanceProfileName"] = "LabInstanceProfile"
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    cfn.create_stack(
        StackName="courierflow",
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    (stack,) = cfn.describe_stacks(StackName="courierflow")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


@pytest.mark.filterwarnings("ignore:Tried to parse AWS.Lambda.EventInvokeConfig")
@pytest.mark.parametrize(("transport", "mode", "role"), DEPLOYED)
def test_transformed_template_deploys_on_moto_with_resources_wired(
    transport: str, mode: str, role: str
) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        out = _deploy_on_moto(transport, mode, role)
        awslambda = boto3.client("lambda", region_name="us-east-1")
        table = out["LedgerTable"]
        functions = {
            name: awslambda.get_function_configuration(FunctionName=name)
            for name in ("lambda_order_publisher", "lambda_delivery", "courierflow_reconciler")
        }
        assert functions["lambda_order_publisher"]["Timeout"] == 900
        assert functions["lambda_delivery"]["Timeout"] == 15
        for name, config in functions.items():
            env = config["Environment"]["Variables"]
            assert env["COURIERFLOW_LEDGER_URL"] == f"dynamodb://{table}", name
            assert env["COURIERFLOW_DELIVERY_FUNCTION"] == "lambda_delivery"
            assert config["Handler"].startswith("courierflow.functions.")
            if role:
                assert config["Role"] == LAB_ROLE
        publisher_env = functions["lambda_order_publisher"]["Environment"]["Variables"]
        if transport == "rabbitmq":
            assert publisher_env["COURIERFLOW_AMQP_SECRET"] == "/courierflow/amqp-url"
            assert "OrdersQueueUrl" not in out
        else:
            assert publisher_env["COURIERFLOW_QUEUE_URL"] == out["OrdersQueueUrl"]

        policy = json.loads(awslambda.get_policy(FunctionName="lambda_order_publisher")["Policy"])
        (s3_grant,) = [
            s for s in policy["Statement"] if s["Principal"] == {"Service": "s3.amazonaws.com"}
        ]
        assert s3_grant["Action"] == "lambda:InvokeFunction"
        assert s3_grant["Condition"] == {"StringEquals": {"AWS:SourceAccount": "123456789012"}}

        described = boto3.client("dynamodb", region_name="us-east-1").describe_table(
            TableName=table
        )
        assert described["Table"]["KeySchema"] == table_definition(table)["KeySchema"]
        (index,) = described["Table"]["GlobalSecondaryIndexes"]
        (wanted_index,) = table_definition(table)["GlobalSecondaryIndexes"]
        assert {k: index[k] for k in wanted_index} == wanted_index

        events = boto3.client("events", region_name="us-east-1")
        (rule,) = events.list_rules()["Rules"]
        assert rule["ScheduleExpression"] == "rate(1 minute)"
        (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert target["Arn"] == functions["courierflow_reconciler"]["FunctionArn"]

        sqs = boto3.client("sqs", region_name="us-east-1")
        if transport == "sqs":
            attrs = sqs.get_queue_attributes(QueueUrl=out["OrdersQueueUrl"], AttributeNames=["All"])
            redrive = json.loads(attrs["Attributes"]["RedrivePolicy"])
            dlq = sqs.get_queue_attributes(
                QueueUrl=out["OrdersDeadLetterQueueUrl"], AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            assert (redrive["deadLetterTargetArn"], int(redrive["maxReceiveCount"])) == (dlq, 5)
            assert attrs["Attributes"]["VisibilityTimeout"] == "60"
        # (the SQS event source mapping is not checked here: moto's CloudFormation neither
        # creates it in Lambda nor names it in the stack's resources; see the wiring test)

        ec2 = boto3.client("ec2", region_name="us-east-1")
        reservations = ec2.describe_instances()["Reservations"]
        assert bool(reservations) == (mode == "manager")
        if mode == "manager":
            (instance,) = reservations[0]["Instances"]
            assert out["ManagerInstanceId"] == instance["InstanceId"]
            if transport == "rabbitmq":  # the publisher is told where the broker is
                assert publisher_env["COURIERFLOW_AMQP_HOST"] == instance["PrivateIpAddress"]
        if transport == "rabbitmq":
            groups = {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
            broker = next(g for g in groups.values() if "RabbitMQ" in g["Description"])
            amqp = [p for p in broker["IpPermissions"] if p.get("FromPort") == 5672]
            assert [ip for p in amqp for ip in p.get("IpRanges", [])] == []
            sources = [pair["GroupId"] for p in amqp for pair in p["UserIdGroupPairs"]]
            assert len(sources) == 1
            assert "no inbound" in groups[sources[0]]["Description"]  # the functions' group
            gateway = {
                e["ServiceName"].rsplit(".", 1)[-1]
                for e in ec2.describe_vpc_endpoints()["VpcEndpoints"]
                if e["VpcEndpointType"] == "Gateway"
            }
            assert gateway == {"s3", "dynamodb"}
            vpc = functions["lambda_order_publisher"].get("VpcConfig", {})
            assert len(vpc.get("SubnetIds", [])) == 2


def test_the_bucket_notification_and_on_failure_destination_are_in_the_transformed_template() -> (
    None
):
    """The two pieces moto does not apply, checked where CloudFormation would read them."""
    resources = transformed(_params("sqs", "manager", ""))["Resources"]
    notification = resources["UploadBucket"]["Properties"]["NotificationConfiguration"]
    (target,) = notification["LambdaConfigurations"]
    assert target["Event"] == "s3:ObjectCreated:*"
    assert target["Function"] == {"Fn::GetAtt": ["PublisherFunction", "Arn"]}
    assert "PublisherFunctionUploadPermission" in resources["UploadBucket"]["DependsOn"]
    configs = {
        r["Properties"]["FunctionName"]["Ref"]: r["Properties"]
        for r in _of_type(resources, "AWS::Lambda::EventInvokeConfig").values()
    }
    on_failure = configs["DeliveryFunction"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Destination"] == {"Fn::GetAtt": ["DeliveryFailures", "Arn"]}
    assert configs["DeliveryFunction"]["MaximumRetryAttempts"] == 2


@pytest.mark.filterwarnings("ignore:Tried to parse AWS.Lambda.EventInvokeConfig")
def test_one_command_deploy_on_moto_uploads_stores_the_secret_and_applies_a_change_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`courierflow deploy`'s own path on moto: artifacts bucket and uploads (the real wheel
    build), the broker secret, a change set created, executed and followed. A second deploy
    of the same code changes nothing (a rebuilt wheel has the same content digest); a
    deploy of new code puts it under new keys, so the stack sees a new layer and new user
    data. Moto's CloudFormation does not run the SAM transform, so it gets the template
    the transform makes; the layer is a stub zip whose content the test changes (its
    build is tested on its own)."""
    import boto3
    from moto import mock_aws

    from courierflow.aws import deploy as deployer
    from courierflow.local.moto_gaps import layer_version_ref_is_its_arn

    layer_version_ref_is_its_arn()
    bucket = "courierflow-artifacts-123456789012-us-east-1"
    options = deployer.DeployOptions()
    layer_members = {"python/courierflow/functions/delivery.py": b"# version 1\n"}
    bodies: list[str] = []

    def transformed_body(layer_uri: str) -> str:
        template = transformed(template_parameters(options, bucket), layer_uri)
        template["Parameters"]["DebianAmi"] = {"Type": "String", "Default": "ami-12c6146b"}
        bodies.append(json.dumps(template))
        return bodies[-1]

    def stub_layer(out: Path, python_version: str = "3.11") -> Path:
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in layer_members.items():
                archive.writestr(name, data)
        return out

    monkeypatch.setattr(deployer, "template_body", transformed_body)
    monkeypatch.setattr(deployer, "build_layer", stub_layer)
    monkeypatch.setattr(deployer, "POLL_S", 0.1)
    said: list[str] = []
    with mock_aws():
        deployer.deploy(options, say=said.append)
        s3 = boto3.client("s3", region_name="us-east-1")
        keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        (layer_key,) = [k for k in keys if k.startswith("courierflow/layer-")]
        (wheel_key,) = [k for k in keys if k.endswith(".whl")]
        prefix = wheel_key.rsplit("/", 1)[0] + "/"
        assert re.fullmatch(r"courierflow/[0-9a-f]{16}/", prefix), prefix
        assert {prefix + "bootstrap.sh", prefix + "courierflow-manager.service"} <= keys
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        (stack,) = cfn.describe_stacks(StackName="courierflow")["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        assert params["ArtifactPrefix"] == prefix
        assert f'"S3Key": "{layer_key}"' in bodies[-1]
        resources = cfn.list_stack_resources(StackName="courierflow")["StackResourceSummaries"]
        by_name = {r["LogicalResourceId"]: r for r in resources}
        for name in ("UploadBucket", "PublisherFunction", "DeliveryFunction", "Ledger",
                     "BrokerInstance"):  # fmt: skip
            assert by_name[name]["ResourceStatus"] == "CREATE_COMPLETE", name
        ssm = boto3.client("ssm", region_name="us-east-1")
        secret = ssm.get_parameter(Name=deployer.PARAMETER, WithDecryption=True)["Parameter"]
        assert secret["Type"] == "SecureString"
        assert not any(secret["Value"] in line for line in said), "the password was printed"
        assert any("(CREATE) created" in line for line in said)
        assert any("CREATE_COMPLETE" in line for line in said), "stack events were not shown"

        (first_layer,) = [r["LogicalResourceId"] for r in resources
                          if r["ResourceType"] == "AWS::Lambda::LayerVersion"]  # fmt: skip
        said.clear()
        deployer.deploy(options, say=said.append)  # the same code, wheel rebuilt
        assert any("nothing to change" in line for line in said), said
        assert any("kept" in line for line in said), "the broker's password must be kept"
        again = ssm.get_parameter(Name=deployer.PARAMETER, WithDecryption=True)["Parameter"]
        assert again["Value"] == secret["Value"]

        layer_members["python/courierflow/functions/delivery.py"] = b"# version 2\n"
        said.clear()
        deployer.deploy(options, say=said.append)  # new code: a new layer key, an update
        assert any("(UPDATE) created" in line for line in said), said
        keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        (new_layer_key,) = {k for k in keys if k.startswith("courierflow/layer-")} - {layer_key}
        assert f'"S3Key": "{new_layer_key}"' in bodies[-1]
        (stack,) = cfn.describe_stacks(StackName="courierflow")["Stacks"]
        assert stack["StackStatus"] == "UPDATE_COMPLETE"
        # SAM names the layer version after its content URI: a new resource, and every
        # function that lists it is updated to the new version
        resources = cfn.list_stack_resources(StackName="courierflow")["StackResourceSummaries"]
        (layer,) = [r for r in resources if r["ResourceType"] == "AWS::Lambda::LayerVersion"]
        assert layer["LogicalResourceId"] != first_layer
        awslambda = boto3.client("lambda", region_name="us-east-1")
        for name in ("lambda_order_publisher", "lambda_delivery"):
            (attached,) = awslambda.get_function_configuration(FunctionName=name)["Layers"]
            assert attached["Arn"] == layer["PhysicalResourceId"]


def test_destroy_empties_the_upload_bucket_deletes_the_stack_and_the_secret() -> None:
    """On moto, with a stack holding the bucket the real one outputs (moto cannot delete
    the full template's VPC: it does not order the deletions as CloudFormation does)."""
    import boto3
    from moto import mock_aws

    from courierflow.aws import deploy as deployer

    template = {
        "Resources": {"UploadBucket": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {"UploadBucketName": {"Value": {"Ref": "UploadBucket"}}},
    }
    said: list[str] = []
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(StackName="courierflow", TemplateBody=json.dumps(template))
        bucket = deployer.outputs("courierflow", "us-east-1")["UploadBucketName"]
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.put_object(Bucket=bucket, Key="orders.csv", Body=b"order_id\nA-1\n")
        ssm = boto3.client("ssm", region_name="us-east-1")
        ssm.put_parameter(Name=deployer.PARAMETER, Value="amqp://x:y@h/v", Type="SecureString")
        deployer.destroy("courierflow", "us-east-1", say=said.append)
        assert deployer._status(cfn, "courierflow") is None
        with pytest.raises(ssm.exceptions.ParameterNotFound):
            ssm.get_parameter(Name=deployer.PARAMETER)
        deployer.destroy("courierflow", "us-east-1", say=said.append)  # twice: harmless
    assert f"emptied s3://{bucket}" in said
    assert said[-1] == "no stack courierflow in us-east-1: nothing to delete"
