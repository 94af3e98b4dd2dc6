"""`courierflow aws smoke`: after a deploy, prove the stack works on the real account.

Uploads a small file of fresh orders, follows them in the ledger, and when they do not
all arrive names the part that did not answer, with where to look: the publisher (the
file was never recorded: its logs, the upload-failures queue), the manager and broker
on the instance (orders queued, none dispatched: the instance's console output, which
holds the bootstrap's log), or the delivery function (dispatched, never delivered: its
logs, the delivery-failures queue).
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.aws.deploy import outputs, submit
from courierflow.ledger.dynamodb import DynamoDBLedger
from courierflow.orders import OrderState

#: orders in the smoke file, and how long to wait for them
SMOKE_ORDERS = 5
SMOKE_TIMEOUT_S = 600.0
#: seconds between two looks at the ledger
POLL_S = 5.0
#: lines of a log or console output quoted in a diagnosis
QUOTED_LINES = 15


@dataclass
class SmokeReport:
    """What the smoke test found."""

    stack: str
    orders: list[str]
    states: dict[str, str] = field(default_factory=dict)
    #: the part that did not answer, empty when every order was delivered
    failed_part: str = ""
    diagnosis: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_part

    def to_dict(self) -> dict[str, Any]:
        return {"stack": self.stack, "ok": self.ok, "orders": self.orders,
                "states": self.states, "failed_part": self.failed_part,
                "diagnosis": self.diagnosis}  # fmt: skip


def smoke_file(directory: Path, count: int = SMOKE_ORDERS) -> tuple[Path, list[str]]:
    """A CSV of ``count`` orders whose ids no earlier run used."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ids = [f"smoke-{stamp}-{i}" for i in range(1, count + 1)]
    path = directory / f"smoke-{stamp}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "customer", "address", "quantity"])
        writer.writerows([order, "smoke test", "1 Test Street", 1] for order in ids)
    return path, ids


def run_smoke(
    stack: str,
    region: str,
    count: int = SMOKE_ORDERS,
    timeout_s: float = SMOKE_TIMEOUT_S,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> SmokeReport:
    """Upload ``count`` fresh orders to the stack and wait for every one of them."""
    with tempfile.TemporaryDirectory(prefix="courierflow-smoke-") as tmp:
        path, ids = smoke_file(Path(tmp), count)
        upload = submit(path, stack, region)
    say(f"uploaded s3://{upload.bucket}/{upload.key} ({count} orders); waiting for them ...")
    ledger = DynamoDBLedger(upload.ledger_table, region=region)
    report = SmokeReport(stack, ids)
    deadline = clock() + timeout_s
    file_seen = False
    while True:
        records = {r.order_id: r for r in ledger.orders(f"s3://{upload.bucket}/{upload.key}")}
        report.states = {i: (records[i].state.value if i in records else "absent") for i in ids}
        file_seen = file_seen or ledger.get_file(upload.bucket, upload.key) is not None
        if all(state == OrderState.DELIVERED.value for state in report.states.values()):
            say(f"all {count} orders delivered")
            return report
        if clock() >= deadline:
            break
        sleep(POLL_S)
    diagnose(report, file_seen, stack, region)
    return report


def diagnose(report: SmokeReport, file_seen: bool, stack: str, region: str) -> None:
    """Name the first part on the orders' way that did not do its job."""
    found = outputs(stack, region)
    states = set(report.states.values())
    if not file_seen or states == {"absent"}:
        report.failed_part = "publisher (lambda_order_publisher)"
        report.diagnosis += _queue_depth(found.get("UploadFailuresQueueUrl", ""), region,
                                         "upload notifications that failed for good")  # fmt: skip
        report.diagnosis += _log_errors("/aws/lambda/lambda_order_publisher", region)
        report.diagnosis.append(
            "the file was never recorded: read the publisher's log "
            "(aws logs tail /aws/lambda/lambda_order_publisher), check the bucket's "
            "notification and, with RabbitMQ, that the broker answers from the publisher"
        )
    elif states <= {OrderState.QUEUED.value, "absent"}:
        report.failed_part = "manager (EC2)" if found.get("ManagerInstanceId") else "queue"
        report.diagnosis += _console_tail(found.get("ManagerInstanceId", ""), region)
        report.diagnosis.append(
            "orders were published but none dispatched: the manager is not consuming. "
            "Its bootstrap log is /var/log/courierflow-bootstrap.log, its service "
            "`journalctl -u courierflow-manager` (ssh admin@ManagerPublicDns)"
        )
    else:
        report.failed_part = "delivery (lambda_delivery)"
        report.diagnosis += _queue_depth(found.get("DeliveryFailuresQueueUrl", ""), region,
                                         "deliveries that failed for good")  # fmt: skip
        report.diagnosis += _log_errors("/aws/lambda/lambda_delivery", region)
        report.diagnosis.append(
            "orders were dispatched but not all delivered: read the delivery's log "
            "(aws logs tail /aws/lambda/lambda_delivery) and `courierflow status`"
        )


def _queue_depth(url: str, region: str, what: str) -> list[str]:
    if not url:
        return []
    try:
        attrs = boto3.client("sqs", region_name=region).get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
    except (ClientError, BotoCoreError) as exc:
        return [f"could not read {url}: {exc}"]
    return [f"{attrs.get('ApproximateNumberOfMessages', '?')} {what} in {url}"]


def _log_errors(group: str, region: str) -> list[str]:
    """The latest error lines of a function's log group (the last 30 minutes)."""
    try:
        found = boto3.client("logs", region_name=region).filter_log_events(
            logGroupName=group,
            startTime=int((time.time() - 1800) * 1000),
            filterPattern="?ERROR ?Error ?error ?Traceback",
            limit=QUOTED_LINES,
        )
    except (ClientError, BotoCoreError) as exc:
        return [f"could not read {group}: {exc}"]
    lines = [event["message"].rstrip() for event in found.get("events", [])]
    return [f"{group}: {line}" for line in lines] or [f"{group}: no error lines"]


def _console_tail(instance: str, region: str) -> list[str]:
    """The end of the instance's console output (the user data's log goes there)."""
    if not instance:
        return []
    try:
        output = (
            boto3.client("ec2", region_name=region)
            .get_console_output(InstanceId=instance, Latest=True)
            .get("Output", "")
        )
    except (ClientError, BotoCoreError) as exc:
        return [f"could not read {instance}'s console: {exc}"]
    lines = [line for line in output.splitlines() if line.strip()][-QUOTED_LINES:]
    return [f"{instance} console: {line}" for line in lines] or [f"{instance}: no console output"]
