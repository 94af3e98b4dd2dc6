"""The ledger on DynamoDB (on AWS): one on-demand table, key ``pk``.

Orders are items ``ORDER#<id>``, files ``FILE#<bucket>/<key>#<etag>``. Every state change
is one conditional write; ``ConditionalCheckFailedException`` is the "someone got there
first" answer and becomes a result, never an error. Listing orders of a file and finding
stuck orders scan the table (fine for a lab's volumes; a GSI on source/state would be the
next step for millions of orders).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.errors import LedgerError
from courierflow.ledger.base import ClaimResult, FileRecord, FileState, Ledger, OrderRecord
from courierflow.orders import OrderState

#: the table's key, as the SAM template declares it
TABLE_KEY_SCHEMA = [{"AttributeName": "pk", "KeyType": "HASH"}]
TABLE_ATTRIBUTES = [{"AttributeName": "pk", "AttributeType": "S"}]

# Named parts of the conditions (see SQLiteLedger for the same rules in SQL).
NOT_EXISTS = "attribute_not_exists(pk)"
CLAIMABLE_STATE = "#s IN (:queued, :dispatched, :failed)"
EXPIRED_CLAIM = "(#s = :delivering AND claim_expires_at < :now)"
OWN_CLAIM = "(#s = :delivering AND request_id = :rid)"
NOT_DELIVERED = "#s <> :delivered"

_ORDER_FIELDS = (
    "source", "queued_at", "dispatched_at", "started_at", "finished_at", "request_id",
    "delay_s", "attempts", "duplicates", "reason", "claim_expires_at",
)  # fmt: skip


def _num(value: float) -> Decimal:
    return Decimal(str(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class DynamoDBLedger(Ledger):
    """Ledger in a DynamoDB table; ``client`` is a boto3 DynamoDB client (tests pass moto's)."""

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("dynamodb")
        return self._client

    # --- plumbing ------------------------------------------------------------------------

    def _update(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
                names: dict[str, str] | None = None) -> bool:  # fmt: skip
        """One conditional update; False when the condition did not hold."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": key}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": _serialise(values),
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        except BotoCoreError as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        return True

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            item = self.client.get_item(
                TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        return _deserialise(item) if item else None

    def _scan(self, prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": {"S": prefix}},
        }
        try:
            while True:
                page = self.client.scan(**kwargs)
                for item in page.get("Items", []):
                    yield _deserialise(item)
                if "LastEvaluatedKey" not in page:
                    return
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None

    # --- files -------------------------------------------------------------------------

    @staticmethod
    def _file_key(bucket: str, key: str, etag: str) -> str:
        return f"FILE#{bucket}/{key}#{etag}"

    def begin_file(self, bucket: str, key: str, etag: str, now: float) -> bool:
        return self._update(
            self._file_key(bucket, key, etag),
            "SET #s = :state, obucket = :b, okey = :k, etag = :e, started_at = :now",
            NOT_EXISTS,
            {
                ":state": FileState.PROCESSING.value,
                ":b": bucket,
                ":k": key,
                ":e": etag,
                ":now": now,
            },
            {"#s": "state"},
        )

    def finish_file(self, bucket: str, key: str, etag: str, state: FileState, *, rows: int,
                    published: int, rejected: int, skipped: int = 0, error: str = "",
                    now: float) -> None:  # fmt: skip
        self._update(
            self._file_key(bucket, key, etag),
            "SET #s = :state, #r = :rows, published = :p, rejected = :rj, skipped = :sk, "
            "#e = :err, finished_at = :now",
            None,
            {
                ":state": state.value,
                ":rows": rows,
                ":p": published,
                ":rj": rejected,
                ":sk": skipped,
                ":err": error,
                ":now": now,
            },
            {"#s": "state", "#r": "rows", "#e": "error"},
        )

    def forget_file(self, bucket: str, key: str, etag: str) -> None:
        try:
            self.client.delete_item(
                TableName=self.table, Key={"pk": {"S": self._file_key(bucket, key, etag)}}
            )
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None

    def get_file(self, bucket: str, key: str, etag: str | None = None) -> FileRecord | None:
        if etag is not None:
            item = self._get(self._file_key(bucket, key, etag))
            items = [item] if item else []
        else:
            items = list(self._scan(f"FILE#{bucket}/{key}#"))
        if not items:
            return None
        item = max(items, key=lambda i: i.get("started_at") or 0)
        return FileRecord(
            bucket=item["obucket"], key=item["okey"], etag=item["etag"],
            state=FileState(item["state"]), rows=item.get("rows", 0),
            published=item.get("published", 0), rejected=item.get("rejected", 0),
            skipped=item.get("skipped", 0), error=item.get("error", ""),
            started_at=item.get("started_at"), finished_at=item.get("finished_at"),
        )  # fmt: skip

    # --- orders ------------------------------------------------------------------------

    @staticmethod
    def _order_key(order_id: str) -> str:
        return f"ORDER#{order_id}"

    def add_queued(self, order_ids: Sequence[str], source: str, now: float) -> list[str]:
        fresh = []
        for order_id in order_ids:
            if self._update(
                self._order_key(order_id),
                "SET #s = :queued, order_id = :id, #src = :src, queued_at = :now, "
                "updated_at = :now, reason = :empty",
                f"{NOT_EXISTS} OR {NOT_DELIVERED}",
                {
                    ":queued": "queued",
                    ":id": order_id,
                    ":src": source,
                    ":now": now,
                    ":empty": "",
                    ":delivered": "delivered",
                },
                {"#s": "state", "#src": "source"},
            ):
                fresh.append(order_id)
        return fresh

    def mark_dispatched(self, dispatched: Mapping[str, float]) -> None:
        for order_id, at in dispatched.items():  # conditional writes cannot be batched
            key = self._order_key(order_id)
            moved = self._update(
                key,
                "SET #s = :dispatched, order_id = :id, dispatched_at = :now, updated_at = :now",
                f"{NOT_EXISTS} OR #s IN (:queued, :dispatched)",
                {":dispatched": "dispatched", ":queued": "queued", ":id": order_id, ":now": at},
                {"#s": "state"},
            )
            if not moved:  # its delivery began first: keep the state, note the dispatch
                self._update(
                    key, "SET dispatched_at = :now", "attribute_not_exists(dispatched_at)",
                    {":now": at},
                )  # fmt: skip

    def claim_delivery(
        self, order_id: str, request_id: str, lease_s: float, now: float
    ) -> ClaimResult:
        claimed = self._update(
            self._order_key(order_id),
            "SET #s = :delivering, order_id = :id, request_id = :rid, started_at = :now, "
            "claim_expires_at = :exp, updated_at = :now, reason = :empty "
            "ADD attempts :one",
            f"{NOT_EXISTS} OR {CLAIMABLE_STATE} OR {EXPIRED_CLAIM} OR {OWN_CLAIM}",
            {
                ":delivering": "delivering",
                ":queued": "queued",
                ":dispatched": "dispatched",
                ":failed": "failed",
                ":id": order_id,
                ":rid": request_id,
                ":now": now,
                ":exp": now + lease_s,
                ":empty": "",
                ":one": 1,
            },
            {"#s": "state"},
        )
        if claimed:
            return ClaimResult.CLAIMED
        self._update(self._order_key(order_id), "ADD duplicates :one", None, {":one": 1})
        item = self._get(self._order_key(order_id))
        if item and item.get("state") == OrderState.DELIVERED.value:
            return ClaimResult.ALREADY_DELIVERED
        return ClaimResult.IN_PROGRESS

    def release_claim(self, order_id: str, request_id: str, reason: str, now: float) -> None:
        self._update(
            self._order_key(order_id),
            "SET #s = :dispatched, reason = :reason, updated_at = :now REMOVE claim_expires_at",
            "#s = :delivering AND request_id = :rid",
            {
                ":dispatched": "dispatched",
                ":delivering": "delivering",
                ":rid": request_id,
                ":reason": reason,
                ":now": now,
            },
            {"#s": "state"},
        )

    def complete_delivery(
        self, order_id: str, request_id: str, delay_s: float, started: float, finished: float
    ) -> bool:
        return self._update(
            self._order_key(order_id),
            "SET #s = :delivered, delay_s = :d, started_at = :st, finished_at = :fin, "
            "updated_at = :fin REMOVE claim_expires_at",
            "#s = :delivering AND request_id = :rid",
            {
                ":delivered": "delivered",
                ":delivering": "delivering",
                ":rid": request_id,
                ":d": delay_s,
                ":st": started,
                ":fin": finished,
            },
            {"#s": "state"},
        )

    def mark_failed(self, order_id: str, reason: str, now: float) -> None:
        self._update(
            self._order_key(order_id),
            "SET #s = :failed, order_id = :id, reason = :reason, finished_at = :now, "
            "updated_at = :now",
            f"{NOT_EXISTS} OR {NOT_DELIVERED}",
            {
                ":failed": "failed",
                ":id": order_id,
                ":reason": reason,
                ":now": now,
                ":delivered": "delivered",
            },
            {"#s": "state"},
        )

    def touch(self, order_ids: Sequence[str], now: float) -> None:
        for order_id in order_ids:
            self._update(
                self._order_key(order_id), "SET updated_at = :now", "attribute_exists(pk)",
                {":now": now},
            )  # fmt: skip

    def get_order(self, order_id: str) -> OrderRecord | None:
        item = self._get(self._order_key(order_id))
        return _order(item) if item else None

    def orders(self, source: str | None = None) -> list[OrderRecord]:
        found = [
            _order(i) for i in self._scan("ORDER#") if source is None or i.get("source") == source
        ]
        return sorted(found, key=lambda r: r.order_id)

    def stuck(self, states: Iterable[OrderState], older_than: float) -> list[OrderRecord]:
        wanted = {s.value for s in states}
        items = [
            i for i in self._scan("ORDER#")
            if i.get("state") in wanted and (i.get("updated_at") or 0) < older_than
        ]  # fmt: skip
        return [_order(i) for i in sorted(items, key=lambda i: i.get("updated_at") or 0)]


def _serialise(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            out[name] = {"BOOL": value}
        elif isinstance(value, int | float):
            out[name] = {"N": str(_num(value))}
        else:
            out[name] = {"S": str(value)}
    return out


def _deserialise(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, typed in item.items():
        ((kind, value),) = typed.items()
        out[name] = _plain(Decimal(value)) if kind == "N" else value
    return out


def _order(item: dict[str, Any]) -> OrderRecord:
    fields = {f: item[f] for f in _ORDER_FIELDS if f in item}
    return OrderRecord(order_id=item["order_id"], state=OrderState(item["state"]), **fields)
