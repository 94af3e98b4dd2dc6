"""The bridges of ``courierflow.local.moto_gaps`` on moto's server (in process, so a test
can hold moto inside an update): the DynamoDB behaviour the ledger relies on."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.parsing.validators import UpdateExpressionValidator
from moto.server import ThreadedMotoServer

from courierflow.local.moto_gaps import dynamodb_requests_are_atomic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HELD_S = 0.5  # how long moto is held inside each update


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A client of an in-process moto server whose updates each take ``HELD_S``: the
    windows in which moto's unbridged server shows a half-written item or lets a second
    conditional create through."""
    dynamodb_requests_are_atomic()
    validate = UpdateExpressionValidator.validate

    def slow_validate(self: Any) -> Any:
        time.sleep(HELD_S / 2)  # moto validates between its check and its store, and again
        return validate(self)  # between its store of the bare key and the update

    monkeypatch.setattr(UpdateExpressionValidator, "validate", slow_validate)
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        urllib.request.urlopen(
            urllib.request.Request(  # a clean moto (its state is global)
                f"http://{host}:{port}/moto-api/reset", method="POST"
            ),
            timeout=10,
        ).close()
        client = boto3.client(
            "dynamodb",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_table(
            TableName="bridged",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client
    finally:
        server.stop()


def _create(client: Any, key: str, who: str) -> bool:
    """The ledger's conditional create (``begin_file``'s shape); False when it lost."""
    try:
        client.update_item(
            TableName="bridged",
            Key={"pk": {"S": key}},
            UpdateExpression="SET obucket = :b, okey = :k, who = :w",
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={
                ":b": {"S": "uploads"},
                ":k": {"S": "o.csv"},
                ":w": {"S": who},
            },
        )
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
        return False
    return True


def _in_background(after: float, target: Any, *args: Any) -> threading.Thread:
    """``target(*args)`` on a thread; returns ``after`` seconds into it."""
    thread = threading.Thread(target=target, args=args)
    thread.start()
    time.sleep(after)
    return thread


def test_a_reader_never_sees_an_item_half_written(dynamodb: Any) -> None:
    # unbridged, moto has stored the bare key by then and not yet applied the update
    writer = _in_background(HELD_S * 0.7, _create, dynamodb, "FILE#a", "first")
    item = dynamodb.get_item(TableName="bridged", Key={"pk": {"S": "FILE#a"}}).get("Item")
    writer.join(timeout=10)
    assert item is not None and set(item) == {"pk", "obucket", "okey", "who"}, item


def test_of_two_conditional_creates_of_one_key_one_wins(dynamodb: Any) -> None:
    won: list[str] = []
    # unbridged, the first has passed its condition and not yet stored anything by then
    first = _in_background(
        HELD_S * 0.2, lambda: _create(dynamodb, "FILE#b", "first") and won.append("first")
    )
    if _create(dynamodb, "FILE#b", "second"):
        won.append("second")
    first.join(timeout=10)
    assert won == ["first"]
    item = dynamodb.get_item(TableName="bridged", Key={"pk": {"S": "FILE#b"}})["Item"]
    assert item["who"] == {"S": "first"}
