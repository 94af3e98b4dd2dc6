"""Publisher ledger: client CPU per order of ``add_queued`` on the DynamoDB ledger.

The publisher records every order of a file through ``add_queued``, ``LEDGER_BATCH`` at a
time; on a 256 MB Lambda (a seventh of a vCPU) the client's CPU is what bounds the rows
one invocation can publish. Measured with ``time.process_time()`` of this process
against moto's standalone server, whose CPU is its own: the batched ledger, and beside
it the one conditional write per order it replaced. Each run writes new orders into a
new table. The per-order path costs the same for every order, so it runs on fewer.
Standalone: ``python -m bench.publisher_ledger [ORDERS] [RUNS]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3

from bench.common import summary
from courierflow.config import LOCAL_CREDENTIALS
from courierflow.ledger.dynamodb import (
    CLIENT_CONFIG,
    DynamoDBLedger,
    table_definition,
)
from courierflow.local.processes import start_moto_server
from courierflow.publishing import LEDGER_BATCH

#: orders the per-order path writes per run (at ~2 ms each it would dominate the bench)
PER_ORDER_ORDERS = 1000
SOURCE = "s3://bench/orders.csv"

AddQueued = Callable[[Sequence[str], str, float], list[str]]


def client(moto_url: str) -> Any:
    """A DynamoDB client configured as the ledger configures its own."""
    make: Any = boto3.client
    return make(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        config=CLIENT_CONFIG,
        **LOCAL_CREDENTIALS,
    )


def new_table(dynamodb: Any) -> str:
    table = f"bench-ledger-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(**table_definition(table))
    return table


def per_order_writes(dynamodb: Any, table: str) -> AddQueued:
    """The replaced path: one conditional UpdateItem per order."""

    def add_queued(order_ids: Sequence[str], source: str, now: float) -> list[str]:
        fresh = []
        for order_id in order_ids:
            try:
                dynamodb.update_item(
                    TableName=table,
                    Key={"pk": {"S": f"ORDER#{order_id}"}},
                    UpdateExpression="SET #s = :queued, order_id = :id, #src = :src, "
                    "queued_at = :now, updated_at = :now, reason = :empty",
                    ConditionExpression="attribute_not_exists(pk) OR #s <> :delivered",
                    ExpressionAttributeValues={
                        ":queued": {"S": "queued"},
                        ":id": {"S": order_id},
                        ":src": {"S": source},
                        ":now": {"N": repr(now)},
                        ":empty": {"S": ""},
                        ":delivered": {"S": "delivered"},
                    },
                    ExpressionAttributeNames={"#s": "state", "#src": "source"},
                )
            except dynamodb.exceptions.ConditionalCheckFailedException:
                continue
            fresh.append(order_id)
        return fresh

    return add_queued


def cpu_ms_per_order(add_queued: AddQueued, orders: int) -> float:
    """Client CPU per order of recording ``orders`` new orders, a publisher batch a call."""
    ids = [f"B-{i:08d}" for i in range(orders)]
    started = time.process_time()
    for at in range(0, orders, LEDGER_BATCH):
        fresh = add_queued(ids[at : at + LEDGER_BATCH], SOURCE, 1.0)
        assert len(fresh) == len(ids[at : at + LEDGER_BATCH])
    return (time.process_time() - started) * 1000 / orders


def run(moto_url: str, orders: int, repeats: int) -> dict[str, Any]:
    dynamodb = client(moto_url)
    batched = [
        cpu_ms_per_order(DynamoDBLedger(new_table(dynamodb), client=dynamodb).add_queued, orders)
        for _ in range(repeats)
    ]
    per_order_count = min(orders, PER_ORDER_ORDERS)
    per_order = [
        cpu_ms_per_order(per_order_writes(dynamodb, new_table(dynamodb)), per_order_count)
        for _ in range(repeats)
    ]
    return {
        "orders": orders,
        "batch": LEDGER_BATCH,
        "batched_ms_per_order": summary(batched),
        "per_order_orders": per_order_count,
        "per_order_ms_per_order": summary(per_order),
    }


if __name__ == "__main__":
    orders = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(prefix="courierflow-ledger-bench-") as work:
        moto = start_moto_server(Path(work))
        try:
            print(json.dumps(run(f"http://127.0.0.1:{moto.port}", orders, repeats), indent=2))
        finally:
            moto.stop()
