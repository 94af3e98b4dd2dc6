"""Deploy, check and destroy courierflow on AWS with CloudFormation (server-side SAM
transform), from the same code the local stack runs."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import secrets
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.aws.layer import build_layer
from courierflow.errors import CourierflowError

ROOT = Path(__file__).resolve().parents[3]
#: the SAM template and the EC2 files, shipped inside the package (deploy works from an
#: installed wheel as from a source checkout)
INFRA = Path(__file__).resolve().parents[1] / "infra"
TEMPLATE = INFRA / "template.yaml"
BOOTSTRAP = INFRA / "ec2" / "bootstrap.sh"
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
#: the layer path in the template, replaced by the uploaded zip's S3 URI
LOCAL_LAYER = "ContentUri: ../layer_contents.zip"
#: key prefix of every artifact in the artifacts bucket; each build goes under a folder
#: named by the digest of its contents, so new code means new keys and a changed template
#: (the same key would leave CloudFormation nothing to update)
ARTIFACT_PREFIX = "courierflow/"
#: hex digits of the content digest in artifact keys
DIGEST_CHARS = 16
#: Lambda's limit on an asynchronous event's age, seconds (invocation-async-configuring)
MAX_EVENT_AGE_S = 21600
#: the shortest event age deploy picks: an hour for a failed delivery to surface
MIN_EVENT_AGE_S = 3600
#: orders in the file the sizing plans for, and their mean trip (randint(2, 10))
PLANNED_ORDERS = 10_000
MEAN_TRIP_S = 6.0
#: Lambda's default concurrency quota per region
DEFAULT_CONCURRENCY = 1000
#: what deploy plans for when the account will not say: a Learner Lab's limit, the
#: lowest seen, so nothing expires in Lambda's queue
ASSUMED_CONCURRENCY = 10
#: seconds between two looks at a stack in progress
POLL_S = 5.0
#: stack names become bucket names (lower case, digits, hyphens)
STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
TRANSPORTS = ("rabbitmq", "sqs")
PRIVATE_ACCESS = ("nat-instance", "endpoints")
MODES = ("manager", "serverless")


class DeployError(CourierflowError):
    """Raised when AWS refuses a step of a deployment; the message says which and why."""


@dataclass
class DeployOptions:
    """What `courierflow deploy` was asked for; ``validate()`` refuses impossible mixes."""

    stack_name: str = "courierflow"
    region: str = "us-east-1"
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


def size_for_concurrency(concurrency: int) -> dict[str, str]:
    """Template parameters sized from the account's Lambda concurrency.

    With C environments, a file of PLANNED_ORDERS orders drains from Lambda's queue in
    about PLANNED_ORDERS x MEAN_TRIP_S / C seconds (6,000 s at the 10 of a lab account);
    events must not expire before their turn, so the maximum event age is four times that,
    between an hour and Lambda's limit of 6 hours. The reconciler waits that long before it
    calls a dispatched order stuck: until then Lambda still holds it.
    """
    drain_s = PLANNED_ORDERS * MEAN_TRIP_S / max(1, concurrency)
    age = int(min(MAX_EVENT_AGE_S, max(MIN_EVENT_AGE_S, 4 * drain_s)))
    return {"DeliveryEventAgeS": str(age)}


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


def content_digest(paths: Iterable[Path]) -> str:
    """A digest of what the files hold, not of how they were packed: a zip's members are
    read by name and bytes (a rebuilt wheel has new timestamps but the same digest)."""
    digest = hashlib.sha256()
    for path in paths:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in sorted(archive.namelist()):
                    digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
        else:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def template_body(layer_uri: str) -> str:
    """The SAM template with the layer pointing at the uploaded zip."""
    text = TEMPLATE.read_text()
    if LOCAL_LAYER not in text:
        raise DeployError(f"{TEMPLATE} no longer has {LOCAL_LAYER!r}; update deploy.py")
    return text.replace(LOCAL_LAYER, f"ContentUri: {layer_uri}")


def _aws(call: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return call(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise DeployError(f"{getattr(call, '__name__', 'AWS call')}: {exc}") from None


def lambda_concurrency(region: str) -> int | None:
    """The account's Lambda concurrency (GetAccountSettings: AccountLimit
    .ConcurrentExecutions; 1,000 by default, lower in new and Learner Lab accounts), or
    None when the account does not let us read it."""
    try:
        settings = boto3.client("lambda", region_name=region).get_account_settings()
    except (ClientError, BotoCoreError):
        return None
    limit = settings.get("AccountLimit", {}).get("ConcurrentExecutions")
    return int(limit) if limit else None


def check(region: str) -> dict[str, str]:
    """Credentials, region, Lambda concurrency, and whether this account may create roles."""
    sts = boto3.client("sts", region_name=region)
    identity = _aws(sts.get_caller_identity)
    iam = boto3.client("iam", region_name=region)
    report = {"account": identity["Account"], "arn": identity["Arn"], "region": region}
    concurrency = lambda_concurrency(region)
    report["concurrency"] = (
        str(concurrency) if concurrency else "unknown (GetAccountSettings refused)"
    )
    planned = concurrency or ASSUMED_CONCURRENCY
    report["event_age_s"] = size_for_concurrency(planned)["DeliveryEventAgeS"]
    report["instance_types"] = _instance_types(region)
    try:
        iam.get_role(RoleName="LabRole")
        report["lab_role"] = f"arn:aws:iam::{identity['Account']}:role/LabRole"
        report["roles"] = "cannot be created here (Learner Lab): use LabRole"
        report["advice"] = (
            f"Learner Lab detected: deploy with --role-arn {report['lab_role']} "
            "--instance-profile LabInstanceProfile"
        )
    except ClientError:
        report["roles"] = "the template creates least-privilege roles (needs iam:CreateRole)"
        report["advice"] = "no LabRole: the template creates its own roles"
    return report


#: the instance types the template allows
INSTANCE_TYPES = ("t3.micro", "t2.micro", "t3.small")


def _instance_types(region: str) -> str:
    """Which of the template's instance types this region offers (or why unknown)."""
    try:
        found = boto3.client("ec2", region_name=region).describe_instance_type_offerings(
            Filters=[{"Name": "instance-type", "Values": list(INSTANCE_TYPES)}]
        )
    except (ClientError, BotoCoreError) as exc:
        return f"unknown ({exc})"
    offered = sorted({o["InstanceType"] for o in found.get("InstanceTypeOfferings", [])})
    return ", ".join(offered) or "none of " + ", ".join(INSTANCE_TYPES)


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
    """Build and upload the artifacts, store the broker secret, then create or update the
    stack through one change set. Returns the stack outputs.

    Raises:
        DeployError: a step was refused; the message names it.
    """
    options.validate()
    region = options.region
    account = _aws(boto3.client("sts", region_name=region).get_caller_identity)["Account"]
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
        _aws(s3.upload_file, Filename=str(layer), Bucket=bucket, Key=layer_key)
        if options.mode == "manager":
            files = _manager_artifacts(Path(tmp), say)
            prefix = f"{ARTIFACT_PREFIX}{content_digest(files)}/"
            for path in files:
                _aws(s3.upload_file, Filename=str(path), Bucket=bucket, Key=prefix + path.name)
    if options.transport == "rabbitmq":
        store_broker_url(boto3.client("ssm", region_name=region), say)
    body = template_body(f"s3://{bucket}/{layer_key}")
    params = template_parameters(options, bucket, artifact_prefix=prefix, concurrency=concurrency)
    if options.transform_locally:
        from courierflow.aws.template import transform_text

        say("running the SAM transform here (the stand-in account has none)")
        body = transform_text(body, params)
    return _apply_change_set(options, body, params, say)


def _manager_artifacts(tmp: Path, say: Callable[[str], None]) -> list[Path]:
    """The courierflow wheel, bootstrap.sh and the unit file the EC2 user data fetches."""
    say("building the courierflow wheel for the EC2 manager ...")
    if (ROOT / "pyproject.toml").is_file() and (ROOT / "src" / "courierflow").is_dir():
        try:  # a source checkout: the wheel of its code
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp),
                 str(ROOT)],
                check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise DeployError(f"could not build the courierflow wheel: {exc}") from None
        wheel = next(tmp.glob("courierflow-*.whl"))
    else:  # installed from a wheel: the same files, packed again
        wheel = wheel_from_installed(tmp)
    return [wheel, BOOTSTRAP, BOOTSTRAP.parent / "courierflow-manager.service"]


#: files of an installed distribution that are the installer's, not the wheel's
_INSTALLER_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def wheel_from_installed(out_dir: Path, name: str = "courierflow") -> Path:
    """The wheel of the installed distribution ``name``, packed from the files its RECORD
    lists (the package, its data and its .dist-info; not scripts, caches or what the
    installer added), with a new RECORD. For a deploy from an installed wheel, where no
    source tree exists to build one from."""
    dist = importlib.metadata.distribution(name)
    version = dist.version
    base = Path(str(dist.locate_file("")))
    members: list[tuple[str, bytes]] = []
    for entry in dist.files or []:
        path = str(entry)
        parts = Path(path).parts
        if (path.startswith("..") or "__pycache__" in parts or path.endswith(".pyc")
                or (".dist-info" in parts[0] and parts[-1] in _INSTALLER_FILES)):  # fmt: skip
            continue
        members.append((path, (base / path).read_bytes()))
    if not members:
        raise DeployError(f"the installed {name} lists no files to pack into a wheel")
    info = f"{name}-{version}.dist-info"
    record = [f"{path},sha256={_b64_digest(data)},{len(data)}" for path, data in members]
    record.append(f"{info}/RECORD,,")
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members:
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


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
    password = secrets.token_urlsafe(24)
    url = f"amqp://{AMQP_USER}:{password}@{BROKER_HOST}:5672/{AMQP_VHOST}"
    _aws(ssm.put_parameter, Name=PARAMETER, Value=url, Type="SecureString", Overwrite=False)
    say(f"generated broker credentials, stored in SSM {PARAMETER} (SecureString)")
    return PARAMETER


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
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=options.stack_name, ChangeSetName=name, WaiterConfig={"Delay": int(POLL_S)}
        )
    except (ClientError, BotoCoreError):
        described = _aws(cfn.describe_change_set, StackName=options.stack_name, ChangeSetName=name)
        reason = str(described.get("StatusReason", ""))
        if "didn't contain changes" in reason or "No updates" in reason:
            say("nothing to change: the stack is up to date")
            _aws(cfn.delete_change_set, StackName=options.stack_name, ChangeSetName=name)
            return outputs(options.stack_name, options.region)
        raise DeployError(f"change set {name} failed: {reason}") from None
    _aws(cfn.execute_change_set, StackName=options.stack_name, ChangeSetName=name)
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
    described = _aws(cfn.describe_stacks, StackName=stack)["Stacks"][0]
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
    _aws(cfn.delete_stack, StackName=stack)
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
        put = _aws(s3.put_object, Bucket=bucket, Key=file.name, Body=body)
    return Upload(bucket, file.name, put["ETag"].strip('"'), table)
