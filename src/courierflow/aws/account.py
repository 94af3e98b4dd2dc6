"""What the account allows, and how deploy sizes the stack for it: the caller's identity,
Lambda's concurrency quota (GetAccountSettings), whether roles can be created (the
Learner Lab has only LabRole), which instance types the region offers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.errors import DeployError

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
#: environments left to the publisher and the reconciler when the SQS trigger's
#: deliveries are capped (services-sqs-scaling: MaximumConcurrency takes 2-1000)
OTHER_FUNCTIONS = 2
MIN_QUEUE_CONCURRENCY, MAX_QUEUE_CONCURRENCY = 2, 1000


def size_for_concurrency(concurrency: int) -> dict[str, str]:
    """Template parameters sized from the account's Lambda concurrency.

    With C environments, a file of PLANNED_ORDERS orders drains from Lambda's queue in
    about PLANNED_ORDERS x MEAN_TRIP_S / C seconds (6,000 s at the 10 of a lab account);
    events must not expire before their turn, so the maximum event age is four times that,
    between an hour and Lambda's limit of 6 hours. The reconciler waits that long before it
    calls a dispatched order stuck: until then Lambda still holds it.

    With SQS as the trigger (serverless mode), Lambda's pollers take messages off the
    queue whatever the function's concurrency, and a message whose invoke is throttled
    goes back to the queue when its visibility timeout ends, one receive closer to the
    dead-letter queue (AWS's "Configuring scaling behavior for SQS event source mappings"
    and its knowledge-center note on SQS scaling). So the trigger's maximum concurrency is
    the account's, less what the publisher and the reconciler need, within SQS's 2-1000.
    """
    drain_s = PLANNED_ORDERS * MEAN_TRIP_S / max(1, concurrency)
    age = int(min(MAX_EVENT_AGE_S, max(MIN_EVENT_AGE_S, 4 * drain_s)))
    queue_concurrency = concurrency - OTHER_FUNCTIONS
    queue_concurrency = max(MIN_QUEUE_CONCURRENCY, min(MAX_QUEUE_CONCURRENCY, queue_concurrency))
    return {"DeliveryEventAgeS": str(age), "DeliveryQueueConcurrency": str(queue_concurrency)}


def aws_call(call: Callable[..., Any], **kwargs: Any) -> Any:
    """``call(**kwargs)``, an AWS refusal raised as DeployError naming the call."""
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
    identity = aws_call(sts.get_caller_identity)
    iam = boto3.client("iam", region_name=region)
    report = {"account": identity["Account"], "arn": identity["Arn"], "region": region}
    concurrency = lambda_concurrency(region)
    report["concurrency"] = (
        str(concurrency) if concurrency else "unknown (GetAccountSettings refused)"
    )
    planned = size_for_concurrency(concurrency or ASSUMED_CONCURRENCY)
    report["event_age_s"] = planned["DeliveryEventAgeS"]
    report["sqs_trigger_concurrency"] = planned["DeliveryQueueConcurrency"]
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
