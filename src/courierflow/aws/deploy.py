"""Deploy, check and destroy courierflow on AWS with CloudFormation (server-side SAM
transform), from the same code the local stack runs."""

from __future__ import annotations

import re
import secrets
import string
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.aws.account import (
    ASSUMED_CONCURRENCY,
    DEFAULT_CONCURRENCY,
    aws_call,
    lambda_concurrency,
    size_for_concurrency,
)
from courierflow.aws.artifacts import (
    ARTIFACT_PREFIX,
    content_digest,
    manager_artifacts,
    template_body,
)
from courierflow.aws.layer import build_layer
from courierflow.config import DEFAULT_REGION
from courierflow.errors import DeployError

#: the broker's host in the stored AMQP URL: the manager's own view (it runs beside the
#: broker); the publisher is given the instance's private address (COURIERFLOW_AMQP_HOST)
BROKER_HOST = "localhost"
#: the broker user `deploy` generates a password for
AMQP_USER = "courierflow"
#: the broker's virtual host
AMQP_VHOST = "courierflow"
#: the SSM SecureString parameter holding the AMQP URL (with the generated password)
PARAMETER = "/courierflow/amqp-url"
#: Debian's public SSM parameter for its latest Debian 12 AMI
DEBIAN_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
#: the stack states that mean "finished" (successfully or not)
DONE = ("_COMPLETE", "_FAILED")
#: seconds between two looks at a stack in progress
POLL_S = 5.0
#: stack names become bucket names (lower case, digits, hyphens)
STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
TRANSPORTS = ("rabbitmq", "sqs")
PRIVATE_ACCESS = ("nat-instance", "endpoints")
MODES = ("manager", "serverless")


@dataclass
class DeployOptions:
    """What `courierflow deploy` was asked for; ``validate()`` refuses impossible mixes."""

    stack_name: str = "courierflow"
    region: str = DEFAULT_REGION
    transport: str = "rabbitmq"
    mode: str = "manager"
    role_arn: str = ""
    instance_profile: str = ""
    key_name: str = ""
    ssh_cidr: str = "127.0.0.1/32"
    instance_type: str = "t3.micro"
    #: nat-instance (no hourly cost) or endpoints (an SSM interface endpoint)
    private_access: str = "nat-instance"
    #: the SSM parameter naming the instance's AMI (Debian 12's public parameter)
    ami_parameter: str = DEBIAN_AMI_PARAMETER
    #: multiplies the delivery's simulated trip (template parameter DeliveryTimeScale)
    time_scale: float = 1.0
    #: run the SAM transform here and send its output (for a CloudFormation stand-in
    #: that has no transform, such as moto's server in `courierflow rehearse`)
    transform_locally: bool = False

    def validate(self) -> None:
        """Raises DeployError naming the option when the combination cannot deploy."""
        if self.transport not in TRANSPORTS:
            raise DeployError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        if self.mode not in MODES:
            raise DeployError(f"--mode must be one of {', '.join(MODES)}")
        if not 0 < self.time_scale <= 10:
            raise DeployError("--time-scale must be above 0 and at most 10 (1: the lab's 2-10 s)")
        if self.private_access not in PRIVATE_ACCESS:
            raise DeployError(f"--private-access must be one of {', '.join(PRIVATE_ACCESS)}")
        if self.mode == "serverless" and self.transport != "sqs":
            raise DeployError("--mode serverless needs --transport sqs (SQS invokes the function)")
        if not STACK_NAME.match(self.stack_name):
            raise DeployError(
                f"--stack-name {self.stack_name!r}: use lower-case letters, digits and hyphens "
                "(it becomes part of the upload bucket's name)"
            )
        if self.role_arn and not self.instance_profile and self.mode == "manager":
            raise DeployError(
                "--role-arn given without --instance-profile: an account that cannot create "
                "roles cannot create the manager's either (Learner Lab: LabInstanceProfile)"
            )


def template_parameters(
    options: DeployOptions,
    artifact_bucket: str,
    secret_parameter: str = PARAMETER,
    artifact_prefix: str = ARTIFACT_PREFIX,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, str]:
    """The stack parameters for these options (names as the template declares them)."""
    params = {
        "Transport": options.transport,
        "Mode": options.mode,
        "RoleArn": options.role_arn,
        "InstanceProfileName": options.instance_profile,
        "InstanceType": options.instance_type,
        "KeyName": options.key_name,
        "SshCidr": options.ssh_cidr,
        "ArtifactBucket": artifact_bucket,
        "ArtifactPrefix": artifact_prefix,
        "BrokerSecretParameter": secret_parameter,
        "PrivateAccess": options.private_access,
        "DebianAmi": options.ami_parameter,
        "DeliveryTimeScale": f"{options.time_scale:g}",
        **size_for_concurrency(concurrency),
    }
    return params


def _artifact_bucket(s3: Any, account: str, region: str) -> str:
    name = f"courierflow-artifacts-{account}-{region}"
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != DEFAULT_REGION:  # the one region CreateBucket takes no location for
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        aws_call(s3.create_bucket, **kwargs)
    return name


def deploy(options: DeployOptions, say: Callable[[str], None] = print) -> dict[str, str]:
    """Build and upload the artifacts, store the broker secret, then create or update the
    stack through one change set. Returns the stack outputs.

    Raises:
        DeployError: a step was refused; the message names it.
    """
    options.validate()
    region = options.region
    account = aws_call(boto3.client("sts", region_name=region).get_caller_identity)["Account"]
    s3 = boto3.client("s3", region_name=region)
    bucket = _artifact_bucket(s3, account, region)
    say(f"artifacts go to s3://{bucket}/{ARTIFACT_PREFIX}")
    concurrency = lambda_concurrency(region)
    if concurrency is None:
        concurrency = ASSUMED_CONCURRENCY
        say(f"Lambda concurrency unknown (GetAccountSettings refused): planning for {concurrency}")
    else:
        say(f"Lambda concurrency of this account: {concurrency}")
    prefix = ARTIFACT_PREFIX
    with tempfile.TemporaryDirectory() as tmp:
        say("building the layer (pika + courierflow for python3.11, x86_64) ...")
        layer = build_layer(Path(tmp) / "layer_contents.zip")
        layer_key = f"{ARTIFACT_PREFIX}layer-{content_digest([layer])}.zip"
        aws_call(s3.upload_file, Filename=str(layer), Bucket=bucket, Key=layer_key)
        if options.mode == "manager":
            files = manager_artifacts(Path(tmp), say)
            prefix = f"{ARTIFACT_PREFIX}{content_digest(files)}/"
            for path in files:
                aws_call(s3.upload_file, Filename=str(path), Bucket=bucket, Key=prefix + path.name)
    if options.transport == "rabbitmq":
        store_broker_url(boto3.client("ssm", region_name=region), say)
    body = template_body(f"s3://{bucket}/{layer_key}")
    params = template_parameters(options, bucket, artifact_prefix=prefix, concurrency=concurrency)
    if options.transform_locally:
        from courierflow.aws.template import transform_text

        say("running the SAM transform here (the stand-in account has none)")
        body = transform_text(body, params)
    return _apply_change_set(options, body, params, say)


def store_broker_url(ssm: Any, say: Callable[[str], None] = print) -> str:
    """Generate the broker password once and keep the AMQP URL only in SSM (SecureString).

    CloudFormation cannot create SecureString parameters, so this runs before the stack;
    a parameter that already exists is kept (the broker already has that password).
    Returns the parameter name.
    """
    try:
        ssm.get_parameter(Name=PARAMETER, WithDecryption=False)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise DeployError(f"cannot read SSM {PARAMETER}: {exc}") from None
    else:
        say(f"broker credentials already in SSM {PARAMETER}; kept")
        return PARAMETER
    password = generate_password()
    url = f"amqp://{AMQP_USER}:{password}@{BROKER_HOST}:5672/{AMQP_VHOST}"
    aws_call(ssm.put_parameter, Name=PARAMETER, Value=url, Type="SecureString", Overwrite=False)
    say(f"generated broker credentials, stored in SSM {PARAMETER} (SecureString)")
    return PARAMETER


#: the broker password's characters and length: letters and digits only (~190 bits), so
#: it needs no quoting in a URL or a shell and never looks like an option to rabbitmqctl
#: (token_urlsafe's "-" first, 1 time in 64, failed the instance's boot)
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32


def generate_password() -> str:
    """A new broker password (``secrets``: the OS's random source)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _apply_change_set(
    options: DeployOptions, body: str, params: dict[str, str], say: Callable[[str], None]
) -> dict[str, str]:
    cfn = boto3.client("cloudformation", region_name=options.region)
    current = _status(cfn, options.stack_name)
    if current == "ROLLBACK_COMPLETE":
        raise DeployError(
            f"stack {options.stack_name} failed to create and can only be deleted: "
            "run `courierflow destroy` and deploy again"
        )
    kind = "CREATE" if current is None else "UPDATE"
    name = f"courierflow-{int(time.time())}"
    started = time.time()
    aws_call(
        cfn.create_change_set,
        StackName=options.stack_name,
        ChangeSetName=name,
        ChangeSetType=kind,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND", "CAPABILITY_NAMED_IAM"],
    )
    say(f"change set {name} ({kind}) created; waiting for it ...")
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=options.stack_name, ChangeSetName=name, WaiterConfig={"Delay": int(POLL_S)}
        )
    except (ClientError, BotoCoreError):
        described = aws_call(
            cfn.describe_change_set, StackName=options.stack_name, ChangeSetName=name
        )
        reason = str(described.get("StatusReason", ""))
        if "didn't contain changes" in reason or "No updates" in reason:
            say("nothing to change: the stack is up to date")
            aws_call(cfn.delete_change_set, StackName=options.stack_name, ChangeSetName=name)
            return outputs(options.stack_name, options.region)
        raise DeployError(f"change set {name} failed: {reason}") from None
    aws_call(cfn.execute_change_set, StackName=options.stack_name, ChangeSetName=name)
    status = _follow(cfn, options.stack_name, say, since=started)
    if not status.endswith("_COMPLETE") or "ROLLBACK" in status:
        raise DeployError(f"stack {options.stack_name} ended in {status}; see the events above")
    return outputs(options.stack_name, options.region)


def _follow(cfn: Any, stack: str, say: Callable[[str], None], since: float = 0.0) -> str:
    """Print each new stack event until the stack settles; returns the final status
    (``DELETE_COMPLETE`` once a deleted stack is gone)."""
    seen: set[str] = set()
    while True:
        status = _status(cfn, stack)
        if status is None:
            return "DELETE_COMPLETE"
        try:
            events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
        except ClientError:
            events = []  # deleted between the two calls
        for event in reversed(events):
            stamp = event.get("Timestamp")
            if event["EventId"] in seen or (stamp is not None and stamp.timestamp() < since - 1):
                continue
            seen.add(event["EventId"])
            reason = event.get("ResourceStatusReason", "")
            say(f"{event['LogicalResourceId']:<28} {event['ResourceStatus']:<22} {reason}")
        if status.endswith(DONE) and "IN_PROGRESS" not in status:
            return status
        time.sleep(POLL_S)


def outputs(stack: str, region: str) -> dict[str, str]:
    """The stack's outputs by key."""
    cfn = boto3.client("cloudformation", region_name=region)
    described = aws_call(cfn.describe_stacks, StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def destroy(stack: str, region: str, say: Callable[[str], None] = print) -> None:
    """Empty the upload bucket (it must be empty to go), delete the stack, then the broker
    secret. The artifacts bucket is kept for the next deploy."""
    cfn = boto3.client("cloudformation", region_name=region)
    if not _exists(cfn, stack):
        say(f"no stack {stack} in {region}: nothing to delete")
        return
    bucket = outputs(stack, region).get("UploadBucketName")
    if bucket:
        try:
            contents = boto3.resource("s3", region_name=region).Bucket(bucket)
            contents.object_versions.delete()
            contents.objects.all().delete()
        except (ClientError, BotoCoreError) as exc:
            raise DeployError(f"cannot empty s3://{bucket}: {exc}") from None
        say(f"emptied s3://{bucket}")
    started = time.time()
    aws_call(cfn.delete_stack, StackName=stack)
    status = _follow(cfn, stack, say, since=started)
    say(f"stack {stack}: {status}")
    if status != "DELETE_COMPLETE":
        raise DeployError(f"stack {stack} ended in {status}; see the events above")
    ssm = boto3.client("ssm", region_name=region)
    try:
        ssm.delete_parameter(Name=PARAMETER)
        say(f"deleted SSM {PARAMETER}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise DeployError(f"cannot delete SSM {PARAMETER}: {exc}") from None


def _status(cfn: Any, stack: str) -> str | None:
    """The stack's status, or None when there is no such stack."""
    try:
        described = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise DeployError(f"describe_stacks {stack}: {exc}") from None
    return str(described[0]["StackStatus"]) if described else None


def _exists(cfn: Any, stack: str) -> bool:
    return _status(cfn, stack) is not None


@dataclass(frozen=True)
class Upload:
    """An order file put in the deployed stack's bucket, and where its orders are recorded."""

    bucket: str
    key: str
    etag: str
    ledger_table: str


def submit(file: Path, stack: str, region: str) -> Upload:
    """Upload an order CSV to the deployed stack's bucket (this triggers the publisher).

    Raises:
        DeployError: the stack is not deployed, or the upload failed.
    """
    try:
        found = outputs(stack, region)
    except DeployError as exc:
        raise DeployError(
            f"no stack {stack} in {region} to upload to ({exc}): deploy it first "
            "(courierflow deploy)"
        ) from None
    bucket, table = found.get("UploadBucketName"), found.get("LedgerTable")
    if not bucket or not table:
        raise DeployError(
            f"stack {stack} in {region} has no UploadBucketName/LedgerTable output: "
            "deploy it first (courierflow deploy)"
        )
    s3 = boto3.client("s3", region_name=region)
    with open(file, "rb") as body:
        put = aws_call(s3.put_object, Bucket=bucket, Key=file.name, Body=body)
    return Upload(bucket, file.name, put["ETag"].strip('"'), table)
