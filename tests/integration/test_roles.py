"""The template's least-privilege roles (the stack without ``--role-arn``) grant every AWS
call their functions make.

Each function runs once, as a process of its own, with exactly the environment the
template gives it (after the SAM transform, resource names filled in) and moto's server as
its AWS; ``call_recorder`` lists the calls botocore built. Each call becomes the IAM
action and resource AWS authorises it as (the Service Authorization Reference: a batch
call of SQS needs the action of its single form; ``Invoke`` is ``lambda:InvokeFunction``;
a DynamoDB index is ``<table ARN>/index/<name>``, as in "IAM policy to grant access to a
specific DynamoDB table and its indexes"), and must be allowed by a statement of the
role's inline policies. moto does not enforce IAM, so without this check a missing action
shows only on AWS, as an AccessDenied at the first upload.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pika
import pytest

from courierflow.aws.network import resolve
from courierflow.ledger.dynamodb import DynamoDBLedger, table_definition
from tests.integration.test_infra_template import transformed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION, STACK = "123456789012", "us-east-1", "cf"
#: the two stacks: the lab's (RabbitMQ on the instance, the manager) and the serverless one
STACKS = {
    "rabbitmq": {"Transport": "rabbitmq", "Mode": "manager", "ArtifactBucket": "artifacts"},
    "sqs": {"Transport": "sqs", "Mode": "serverless", "ArtifactBucket": "artifacts"},
}
BUCKET = f"{STACK}-uploads-{ACCOUNT}-{REGION}"
TABLE = f"{STACK}-ledger"
#: the stack's queues, by logical id, with the names the template gives them
QUEUES = {
    "OrdersDeadLetters": f"{STACK}-orders-dlq",
    "OrdersQueue": f"{STACK}-orders",
    "DeliveryFailures": f"{STACK}-delivery-failures",
    "UploadFailures": f"{STACK}-upload-failures",
}

#: API operations whose IAM action has another name
ACTION_OF = {
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
}


def resource_arns(service: str, params: dict[str, Any]) -> list[str]:
    """The resources one call acts on, as IAM names them."""
    if service == "dynamodb":
        tables = [params["TableName"]] if "TableName" in params else list(params["RequestItems"])
        index = f"/index/{params['IndexName']}" if "IndexName" in params else ""
        return [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{t}{index}" for t in tables]
    if service == "s3":
        key = f"/{params['Key']}" if "Key" in params else ""
        return [f"arn:aws:s3:::{params['Bucket']}{key}"]
    if service == "sqs":
        name = params.get("QueueName") or params["QueueUrl"].rstrip("/").rsplit("/", 1)[-1]
        return [f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"]
    if service == "lambda":
        return [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{params['FunctionName']}"]
    if service == "ssm":
        return [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{params['Name']}"]
    raise AssertionError(f"a call of {service} the test cannot name a resource for: {params}")


class Stack:
    """The transformed template's resources with the names this test gave them."""

    def __init__(self, moto_url: str, params: dict[str, str], amqp_url: str = "") -> None:
        self.template = transformed(params)
        self.resources = resolve(self.template, params)
        self.moto_url = moto_url
        #: the test's RabbitMQ node, standing in for the instance's broker ("" for SQS)
        self.amqp_url = amqp_url
        self.parameters = {
            name: params.get(name, str(spec.get("Default", "")))
            for name, spec in self.template.get("Parameters", {}).items()
        }

    def ref(self, name: str) -> str:
        if name in QUEUES:
            return f"{self.moto_url}/{ACCOUNT}/{QUEUES[name]}"
        refs = {
            "Ledger": TABLE,
            "UploadBucket": BUCKET,
            "AWS::StackName": STACK,
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
        }
        if name in refs:
            return refs[name]
        if name in self.parameters:
            return self.parameters[name]
        raise AssertionError(f"the test has no value for Ref {name}")

    def attribute(self, name: str, attribute: str) -> str:
        if attribute == "Arn" and name == "Ledger":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}"
        if attribute == "Arn" and name in QUEUES:
            return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUES[name]}"
        if (name, attribute) == ("BrokerInstance", "PrivateIp"):
            node = urlsplit(self.amqp_url)  # host:port, as `with_host` takes it
            return f"{node.hostname}:{node.port}"
        raise AssertionError(f"the test has no value for GetAtt {name}.{attribute}")

    def value(self, node: Any) -> Any:
        """A resolved property value with ``Ref``, ``Fn::GetAtt`` and ``Fn::Sub`` filled in."""
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if not isinstance(node, dict):
            return node
        if list(node) == ["Ref"]:
            return self.ref(node["Ref"])
        if list(node) == ["Fn::GetAtt"]:
            return self.attribute(*node["Fn::GetAtt"])
        if list(node) == ["Fn::Sub"]:
            text = node["Fn::Sub"]

            def fill(match: re.Match[str]) -> str:
                name = match.group(1)
                return self.attribute(*name.split(".", 1)) if "." in name else self.ref(name)

            return re.sub(r"\$\{([^}]+)\}", fill, text)
        return {k: self.value(v) for k, v in node.items()}

    def function(self, name: str) -> tuple[str, dict[str, str], str]:
        """A function's handler, environment variables and role's logical id."""
        props = self.resources[name]["Properties"]
        env = self.value(props.get("Environment", {}).get("Variables", {}))
        role = props["Role"]["Fn::GetAtt"][0]
        return props["Handler"], {k: str(v) for k, v in env.items()}, role

    def allows(self, role: str, action: str, arn: str) -> bool:
        for policy in self.resources[role]["Properties"].get("Policies", []):
            for statement in self.value(policy["PolicyDocument"]["Statement"]):
                actions = statement["Action"]
                resources = statement["Resource"]
                actions = [actions] if isinstance(actions, str) else actions
                resources = [resources] if isinstance(resources, str) else resources
                if (
                    statement["Effect"] == "Allow"
                    and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions)
                    and any(fnmatch.fnmatchcase(arn, r) for r in resources)
                ):
                    return True
        return False


@pytest.fixture(params=list(STACKS))
def stack(request: pytest.FixtureRequest, moto_server: str) -> Stack:
    """The stack's data resources on moto, named as the template names them; with
    RabbitMQ, the broker's URL in SSM as `courierflow deploy` writes it, pointing at the
    test's node."""
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server)
    if TABLE not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(**table_definition(TABLE))
    s3 = boto3.client("s3", endpoint_url=moto_server)
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    amqp_url = request.getfixturevalue("amqp_url") if request.param == "rabbitmq" else ""
    stack = Stack(moto_server, STACKS[request.param], amqp_url)
    if amqp_url:
        _purge(amqp_url, "orders")
        node = urlsplit(amqp_url)  # the secret holds the instance's own view: localhost
        boto3.client("ssm", endpoint_url=moto_server).put_parameter(
            Name=stack.parameters["BrokerSecretParameter"], Type="SecureString",
            Value=node._replace(netloc=f"{node.username}:{node.password}@localhost").geturl(),
            Overwrite=True,
        )  # fmt: skip
    sqs = boto3.client("sqs", endpoint_url=moto_server)
    for logical, name in QUEUES.items():  # with the template's attributes (the transport
        if logical not in stack.resources:
            continue
        props = stack.value(stack.resources[logical]["Properties"])  # declares them too)
        attributes = {
            k: json.dumps(v) if isinstance(v, dict) else str(v)
            for k, v in props.items()
            if k != "QueueName"
        }
        sqs.create_queue(QueueName=name, Attributes=attributes)
    return stack


def run_function(stack: Stack, name: str, event: dict[str, Any], tmp_path: Path) -> list[list[Any]]:
    """Run the function once as the template sets it up; the calls it made."""
    handler, variables, _ = stack.function(name)
    out = tmp_path / f"{name}.json"
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ACCESS_KEY_ID": "role-check",
        "AWS_SECRET_ACCESS_KEY": "role-check",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        **{f"AWS_ENDPOINT_URL_{s}": stack.moto_url for s in ("S3", "SQS", "DYNAMODB", "SSM")},
        # no function by that name on moto: the re-dispatch is refused, after it is built
        "AWS_ENDPOINT_URL_LAMBDA": stack.moto_url,
        **variables,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.call_recorder", handler, str(out)],
        input=json.dumps(event), capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "handler raised" not in done.stderr, done.stderr[-3000:]
    calls: list[list[Any]] = json.loads(out.read_text())
    return calls


def _purge(amqp_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):  # none yet
            connection.channel().queue_purge(queue)
    finally:
        connection.close()


def delivery_event(stack: Stack) -> dict[str, Any]:
    """The published order as the delivery function gets it: from the manager, the
    message's body as the payload; from the SQS trigger, a batch of one record."""
    if stack.amqp_url:
        connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
        try:
            _, _, body = connection.channel().basic_get("orders", auto_ack=True)
        finally:
            connection.close()
        assert body is not None, "the publisher published nothing"
        order: dict[str, Any] = json.loads(body)
        return order
    sqs = boto3.client("sqs", endpoint_url=stack.moto_url)
    got = sqs.receive_message(
        QueueUrl=stack.ref("OrdersQueue"), MaxNumberOfMessages=1, WaitTimeSeconds=5
    )
    (message,) = got["Messages"]  # one published; one rejected
    record = {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
              "body": message["Body"], "eventSource": "aws:sqs",
              "eventSourceARN": stack.attribute("OrdersQueue", "Arn")}  # fmt: skip
    return {"Records": [record]}


def refused(stack: Stack, function: str, calls: list[list[Any]]) -> list[str]:
    _, _, role = stack.function(function)
    missing = []
    for service, operation, params in calls:
        action = ACTION_OF.get((service, operation), f"{service}:{operation}")
        for arn in resource_arns(service, params):
            if not stack.allows(role, action, arn):
                missing.append(f"{role} lacks {action} on {arn}")
    return sorted(set(missing))


def test_each_function_role_allows_every_call_its_function_makes(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]  # the ledger is moto's, shared by both stacks' runs
    csv = (  # one order, and one row rejected (so the rejects report is written)
        "order_id,customer,address,items,quantity\n"
        f"R-{run},Ann,1 Main St,book,1\n"
        f"X-{run},Bo,2 Main St,pen,x\n"
    )
    s3 = boto3.client("s3", endpoint_url=stack.moto_url)
    key = f"orders-{run}.csv"
    s3.put_object(Bucket=BUCKET, Key=key, Body=csv.encode())
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    upload = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                           "s3": {"bucket": {"name": BUCKET},
                                  "object": {"key": key, "eTag": etag}}}]}  # fmt: skip
    published = run_function(stack, "PublisherFunction", upload, tmp_path)

    delivered = run_function(stack, "DeliveryFunction", delivery_event(stack), tmp_path)

    sqs = boto3.client("sqs", endpoint_url=stack.moto_url)
    ledger = DynamoDBLedger(TABLE, client=boto3.client("dynamodb", endpoint_url=stack.moto_url))
    ledger.add_queued(["stuck-1"], "s3://elsewhere/old.csv", now=time.time() - 86_400)
    failure = {"requestPayload": {"order_id": "lost-1"}, "requestContext": {
        "condition": "RetriesExhausted", "approximateInvokeCount": 3}}  # fmt: skip
    sqs.send_message(QueueUrl=stack.ref("DeliveryFailures"), MessageBody=json.dumps(failure))
    reconciled = run_function(stack, "ReconcilerFunction", {}, tmp_path)

    # the runs did their work (so the calls are the real path's, not an early error's)
    r1 = ledger.get_order(f"R-{run}")
    assert r1 is not None and r1.state.value == "delivered"
    assert ledger.get_order("lost-1") is not None
    operations = {(s, o) for s, o, _ in published + delivered + reconciled}
    assert {("s3", "GetObject"), ("s3", "PutObject"), ("dynamodb", "Query"),
            ("lambda", "Invoke"), ("sqs", "ReceiveMessage")} <= operations  # fmt: skip
    assert (("ssm", "GetParameter") in operations) == bool(stack.amqp_url)

    missing = (
        refused(stack, "PublisherFunction", published)
        + refused(stack, "DeliveryFunction", delivered)
        + refused(stack, "ReconcilerFunction", reconciled)
    )
    assert missing == [], "\n".join(missing)
