"""`courierflow aws smoke` on moto (in process): it finds its orders in the deployed
stack's ledger, and names the part that did not answer when they do not all arrive."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from courierflow.aws.smoke import POLL_S, run_smoke
from courierflow.ledger.dynamodb import TABLE_PROPERTIES, DynamoDBLedger

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

STACK = {
    "Resources": {
        "UploadBucket": {"Type": "AWS::S3::Bucket"},
        "Ledger": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": TABLE_PROPERTIES,
        },
    },
    "Outputs": {
        "UploadBucketName": {"Value": {"Ref": "UploadBucket"}},
        "LedgerTable": {"Value": {"Ref": "Ledger"}},
    },
}


@pytest.fixture
def stack() -> Iterator[str]:
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(StackName="smoke", TemplateBody=json.dumps(STACK))
        outputs = cfn.describe_stacks(StackName="smoke")["Stacks"][0]["Outputs"]
        yield {o["OutputKey"]: o["OutputValue"] for o in outputs}["LedgerTable"]


def test_a_stack_whose_publisher_never_answers_is_named(stack: str) -> None:
    report = run_smoke("smoke", "us-east-1", count=3, timeout_s=0, say=lambda _: None)
    assert not report.ok
    assert report.failed_part == "publisher (lambda_order_publisher)"
    assert set(report.states.values()) == {"absent"}
    assert any("lambda_order_publisher" in line for line in report.diagnosis)


def test_orders_published_but_never_dispatched_point_at_the_queue(stack: str) -> None:
    ledger = DynamoDBLedger(stack, region="us-east-1")

    now = [0.0]  # the smoke's clock, moved by its sleeps only

    def publish(seconds: float) -> None:  # the stand-in for a publisher that works
        now[0] += seconds
        bucket = boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"][0]
        key = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=bucket["Name"])[
            "Contents"
        ][0]["Key"]
        source = f"s3://{bucket['Name']}/{key}"
        ledger.begin_file(bucket["Name"], key, "etag", 0.0)
        ids = [f"{key.removesuffix('.csv')}-{i}" for i in (1, 2)]
        ledger.add_queued(ids, source, 0.0)

    # one look before the publisher ran, one sleep (it runs), one look after: then time's up
    report = run_smoke("smoke", "us-east-1", count=2, timeout_s=POLL_S, say=lambda _: None,
                       sleep=publish, clock=lambda: now[0])  # fmt: skip
    assert not report.ok
    assert set(report.states.values()) == {"queued"}
    assert report.failed_part == "queue"  # this stack has no manager instance
