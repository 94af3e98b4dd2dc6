"""`courierflow submit FILE --aws`: upload to the deployed stack's bucket and follow the
orders through its DynamoDB ledger. The "deployed stack" is a CloudFormation stack on
moto's server with the two outputs submit reads; a thread plays the deployed functions,
writing the ledger the way the publisher and the deliveries do."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from courierflow.ledger.base import FileState
from courierflow.ledger.dynamodb import DynamoDBLedger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
COURIERFLOW = Path(sys.executable).parent / "courierflow"
STACK_TEMPLATE = {
    "Resources": {
        "UploadBucket": {"Type": "AWS::S3::Bucket"},
        "Ledger": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            },
        },
    },
    "Outputs": {
        "UploadBucketName": {"Value": {"Ref": "UploadBucket"}},
        "LedgerTable": {"Value": {"Ref": "Ledger"}},
    },
}


def play_the_deployed_functions(
    moto_server: str, stack: dict[str, str], orders: Path, stop: threading.Event
) -> None:
    """Wait for the upload, then record it the way the publisher and couriers would."""
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    ledger = DynamoDBLedger(stack["LedgerTable"], client=dynamodb)
    bucket, key = stack["UploadBucketName"], orders.name
    while not stop.is_set():
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        if any(item["Key"] == key for item in listed):
            break
        time.sleep(0.1)
    else:
        return
    etag = hashlib.md5(orders.read_bytes()).hexdigest()  # S3's ETag of a single PUT
    ids = [line.split(",")[0] for line in orders.read_text().splitlines()[1:]]
    now = time.time()
    ledger.begin_file(bucket, key, etag, now)
    ledger.add_queued(ids, f"s3://{bucket}/{key}", now)
    ledger.finish_file(
        bucket, key, etag, FileState.DONE, rows=len(ids), published=len(ids), rejected=0,
        now=now,
    )  # fmt: skip
    for n, order_id in enumerate(ids):
        started = time.time()
        ledger.claim_delivery(order_id, f"req-{n}", 15, started)
        ledger.complete_delivery(order_id, f"req-{n}", 2, started, time.time())


def test_submit_aws_uploads_to_the_stacks_bucket_and_follows_its_ledger(
    tmp_path: Path, moto_server: str
) -> None:
    name = f"courierflow-{uuid.uuid4().hex[:8]}"
    cfn = boto3.client("cloudformation", endpoint_url=moto_server, region_name="us-east-1")
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(STACK_TEMPLATE))
    described = cfn.describe_stacks(StackName=name)["Stacks"][0]
    stack = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,customer\n" + "".join(f"AWS-{n},c{n}\n" for n in range(5)))
    stop = threading.Event()
    functions = threading.Thread(
        target=play_the_deployed_functions, args=(moto_server, stack, orders, stop)
    )
    functions.start()
    env = {
        **os.environ, "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "COURIERFLOW_HOME": str(tmp_path / "home"),
    }  # fmt: skip
    try:
        done = subprocess.run(
            [str(COURIERFLOW), "submit", str(orders), "--aws", "--stack-name", name,
             "--stall-timeout", "20", "--report-json", str(tmp_path / "summary.json")],
            capture_output=True, text=True, env=env, timeout=90,
        )  # fmt: skip
    finally:
        stop.set()
        functions.join(10)
    assert done.returncode == 0, done.stderr
    assert f"uploaded s3://{stack['UploadBucketName']}/orders.csv" in done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["published"], summary["delivered"], summary["lost"]) == (5, 5, 0)


def test_submit_aws_without_a_deployed_stack_says_what_to_do(
    tmp_path: Path, moto_server: str
) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\n1\n")
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip
    done = subprocess.run(
        [str(COURIERFLOW), "submit", str(orders), "--aws", "--stack-name", "not-deployed"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "not-deployed" in done.stderr and "courierflow deploy" in done.stderr
