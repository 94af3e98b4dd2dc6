"""Deploy, check and destroy courierflow on AWS with CloudFormation (server-side SAM
transform), from the same code the local stack runs."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.aws.layer import build_layer
from courierflow.errors import CourierflowError

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "infra" / "template.yaml"
BOOTSTRAP = ROOT / "infra" / "ec2" / "bootstrap.sh"
#: the broker's fixed private address in the template's public subnet
BROKER_IP = "10.42.0.10"
AMQP_USER = "courierflow"
AMQP_VHOST = "courierflow"
PARAMETER = "/courierflow/amqp-url"
#: the stack states that mean "finished" (successfully or not)
DONE = ("_COMPLETE", "_FAILED")


class DeployError(CourierflowError):
    """Raised when AWS refuses a step of a deployment; the message says which and why."""


@dataclass
class DeployOptions:
    stack_name: str = "courierflow"
    region: str = "us-east-1"
    transport: str = "rabbitmq"
    mode: str = "manager"
    role_arn: str = ""
    instance_profile: str = ""
    key_name: str = ""
    ssh_cidr: str = "127.0.0.1/32"


def _aws(call: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return call(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise DeployError(f"{getattr(call, '__name__', 'AWS call')}: {exc}") from None


def check(region: str) -> dict[str, str]:
    """Credentials, region, and whether this account may create IAM roles."""
    sts = boto3.client("sts", region_name=region)
    identity = _aws(sts.get_caller_identity)
    iam = boto3.client("iam", region_name=region)
    report = {"account": identity["Account"], "arn": identity["Arn"], "region": region}
    try:
        iam.get_role(RoleName="LabRole")
        report["lab_role"] = f"arn:aws:iam::{identity['Account']}:role/LabRole"
        report["advice"] = "Learner Lab detected: deploy with --role-arn " + report["lab_role"]
    except ClientError:
        report["advice"] = "no LabRole: the template creates least-privilege roles"
    return report


def _artifact_bucket(s3: Any, account: str, region: str) -> str:
    name = f"courierflow-artifacts-{account}-{region}"
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        _aws(s3.create_bucket, **kwargs)
    return name


def deploy(options: DeployOptions, say: Callable[[str], None] = print) -> dict[str, str]:
    """Build, upload, create or update the stack through a change set; returns outputs."""
    region = options.region
    account = _aws(boto3.client("sts", region_name=region).get_caller_identity)["Account"]
    s3 = boto3.client("s3", region_name=region)
    bucket = _artifact_bucket(s3, account, region)
    with tempfile.TemporaryDirectory() as tmp:
        say("building the layer (pika + courierflow for python3.11, x86_64) ...")
        layer = build_layer(Path(tmp) / "layer_contents.zip")
        _aws(
            s3.upload_file, Filename=str(layer), Bucket=bucket, Key="courierflow/layer_contents.zip"
        )
        if options.transport == "rabbitmq":
            say("building the courierflow wheel for the EC2 manager ...")
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp, str(ROOT)],
                check=True,
            )
            wheel = next(Path(tmp).glob("courierflow-*.whl"))
            _aws(
                s3.upload_file, Filename=str(wheel), Bucket=bucket, Key=f"courierflow/{wheel.name}"
            )
            _aws(
                s3.upload_file,
                Filename=str(BOOTSTRAP),
                Bucket=bucket,
                Key="courierflow/bootstrap.sh",
            )
            _store_broker_url(region, say)
    body = TEMPLATE.read_text().replace(
        "ContentUri: ../layer_contents.zip",
        f"ContentUri: s3://{bucket}/courierflow/layer_contents.zip",
    )
    return _apply_change_set(options, body, bucket, say)


def _store_broker_url(region: str, say: Callable[[str], None]) -> None:
    """A generated broker password, kept only in SSM Parameter Store (SecureString)."""
    ssm = boto3.client("ssm", region_name=region)
    try:
        ssm.get_parameter(Name=PARAMETER, WithDecryption=False)
        say(f"broker credentials already in SSM {PARAMETER}; kept")
        return
    except ClientError:
        pass
    password = secrets.token_urlsafe(24)
    url = f"amqp://{AMQP_USER}:{password}@{BROKER_IP}:5672/{AMQP_VHOST}"
    _aws(ssm.put_parameter, Name=PARAMETER, Value=url, Type="SecureString", Overwrite=False)
    say(f"generated broker credentials, stored in SSM {PARAMETER} (SecureString)")


def _apply_change_set(
    options: DeployOptions, body: str, bucket: str, say: Callable[[str], None]
) -> dict[str, str]:
    cfn = boto3.client("cloudformation", region_name=options.region)
    try:
        cfn.describe_stacks(StackName=options.stack_name)
        kind = "UPDATE"
    except ClientError:
        kind = "CREATE"
    params = {
        "Transport": options.transport,
        "Mode": options.mode,
        "RoleArn": options.role_arn,
        "InstanceProfileName": options.instance_profile,
        "KeyName": options.key_name,
        "SshCidr": options.ssh_cidr,
        "ArtifactBucket": bucket,
        "BrokerSecretParameter": PARAMETER,
    }
    name = f"courierflow-{int(time.time())}"
    _aws(
        cfn.create_change_set,
        StackName=options.stack_name,
        ChangeSetName=name,
        ChangeSetType=kind,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND", "CAPABILITY_NAMED_IAM"],
    )
    say(f"change set {name} ({kind}) created; waiting for it ...")
    _aws(
        cfn.get_waiter("change_set_create_complete").wait,
        StackName=options.stack_name,
        ChangeSetName=name,
    )
    _aws(cfn.execute_change_set, StackName=options.stack_name, ChangeSetName=name)
    status = _follow(cfn, options.stack_name, say)
    if not status.endswith("_COMPLETE") or "ROLLBACK" in status:
        raise DeployError(f"stack {options.stack_name} ended in {status}; see the events above")
    return outputs(options.stack_name, options.region)


def _follow(cfn: Any, stack: str, say: Callable[[str], None]) -> str:
    seen: set[str] = set()
    while True:
        events = _aws(cfn.describe_stack_events, StackName=stack)["StackEvents"]
        for event in reversed(events):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                reason = event.get("ResourceStatusReason", "")
                say(f"{event['LogicalResourceId']:<28} {event['ResourceStatus']:<22} {reason}")
        status = str(_aws(cfn.describe_stacks, StackName=stack)["Stacks"][0]["StackStatus"])
        if status.endswith(DONE) and "IN_PROGRESS" not in status:
            return status
        time.sleep(5)


def outputs(stack: str, region: str) -> dict[str, str]:
    cfn = boto3.client("cloudformation", region_name=region)
    described = _aws(cfn.describe_stacks, StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def destroy(stack: str, region: str, say: Callable[[str], None] = print) -> None:
    """Empty the upload bucket (it must be empty to go), then delete the stack."""
    out = outputs(stack, region)
    bucket = out.get("UploadBucketName")
    if bucket:
        s3 = boto3.resource("s3", region_name=region).Bucket(bucket)
        s3.object_versions.delete()
        s3.objects.all().delete()
        say(f"emptied s3://{bucket}")
    cfn = boto3.client("cloudformation", region_name=region)
    _aws(cfn.delete_stack, StackName=stack)
    status = _follow(cfn, stack, say) if _exists(cfn, stack) else "DELETE_COMPLETE"
    say(f"stack {stack}: {status}")


def _exists(cfn: Any, stack: str) -> bool:
    try:
        cfn.describe_stacks(StackName=stack)
    except ClientError:
        return False
    return True
