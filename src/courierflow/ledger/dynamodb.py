"""The ledger on DynamoDB (on AWS): one on-demand table, key ``pk``.

Orders are items ``ORDER#<id>``, files ``FILE#<bucket>/<key>#<etag>``. Every state change
is one conditional write; ``ConditionalCheckFailedException`` is the "someone got there
first" answer and becomes a result, never an error. Listing orders of a file and finding
stuck orders scan the table (fine for a lab's volumes; a GSI on source/state would be the
next step for millions of orders).

``add_queued`` is the one batched path, because the publisher records every order of a
file through it: one API call costs about 2 ms of client CPU, a 256 MB Lambda has a
seventh of a vCPU, and one conditional write per order made a 10,000-row file outlast
the function's timeout. It reads the orders 100 keys a call (``BatchGetItem``), creates
the ones that do not exist 25 puts a call (``BatchWriteItem``), and sends the conditional
update of old only for orders that existed (a re-upload), so a put never replaces an
order that was there when it was read. The window left is an order absent at the read
that another publisher queues, publishes and gets claimed before the put, milliseconds
later: only two files holding the same order, published at the same moment, could meet
in it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.config import resolve_region
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
PROCESSING = "#s = :processing"
#: nobody holds the file, its holder's lease ended, or the holder is this attempt
RESUMABLE = f"{PROCESSING} AND (attribute_not_exists(lease_until) OR lease_until < :now OR " \
    "(attempt = :attempt AND :attempt <> :empty))"  # fmt: skip
HELD = f"{PROCESSING} AND attempt = :attempt"

#: keys per BatchGetItem call (DynamoDB's limit)
BATCH_GET_KEYS = 100
#: puts per BatchWriteItem call (DynamoDB's limit)
BATCH_WRITE_ITEMS = 25
#: calls of one batch while DynamoDB hands back unprocessed keys or items (throttling)
MAX_BATCH_ATTEMPTS = 8
#: first and largest pause before sending unprocessed keys or items again, in seconds
BATCH_BACKOFF_BASE_S = 0.05
BATCH_BACKOFF_MAX_S = 2.0
#: the client the ledger builds for itself. Parameter validation is off: every request is
#: built here in a fixed shape (tests run with validating clients), and on the batched
#: path validation took a fifth of the client's CPU.
CLIENT_CONFIG = Config(parameter_validation=False)

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()

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


def _backoff(attempt: int) -> float:
    """Pause before resending unprocessed work: exponential, full jitter, capped."""
    return random.uniform(0, min(BATCH_BACKOFF_MAX_S, BATCH_BACKOFF_BASE_S * 2**attempt))


class DynamoDBLedger(Ledger):
    """Ledger in a DynamoDB table; ``client`` is a boto3 DynamoDB client (tests pass moto's)."""

    def __init__(self, table: str, client: Any = None, region: str | None = None) -> None:
        self.table = table
        self._client = client
        self._region = region

    @property
    def client(self) -> Any:
        if self._client is None:
            # the region given, else as the SDKs resolve it: a client without one raises
            # NoRegionError where only AWS_REGION is set (botocore reads AWS_DEFAULT_REGION)
            self._client = boto3.client(
                "dynamodb", region_name=self._region or resolve_region(), config=CLIENT_CONFIG
            )
        return self._client

    # --- plumbing ------------------------------------------------------------------------

    def _update(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
                names: dict[str, str] | None = None) -> bool:  # fmt: skip
        """One conditional update; False when the condition did not hold."""
        return self._update_item(key, expression, condition, values, names) is not None

    def _update_item(self, key: str, expression: str, condition: str | None,
                     values: dict[str, Any], names: dict[str, str] | None = None,
                     returning: str = "NONE") -> dict[str, Any] | None:  # fmt: skip
        """One conditional update; the item as ``returning`` asks (``ALL_NEW``...), or
        None when the condition did not hold."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": key}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": _serialise(values),
            "ReturnValues": returning,
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            response = self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        except BotoCoreError as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        return _deserialise(response.get("Attributes", {}))

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            item = self.client.get_item(
                TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
        return _deserialise(item) if item else None

    def _states(self, keys: Sequence[str]) -> dict[str, str]:
        """The state of each existing item of ``keys`` (at most ``BATCH_GET_KEYS``, no
        repeats), read consistently; keys of missing items are absent from the result."""
        request: dict[str, Any] = {
            self.table: {
                "Keys": [{"pk": _SERIALIZER.serialize(k)} for k in keys],
                "ProjectionExpression": "pk, #s",
                "ExpressionAttributeNames": {"#s": "state"},
                "ConsistentRead": True,
            }
        }
        states: dict[str, str] = {}
        for attempt in range(MAX_BATCH_ATTEMPTS):
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as exc:
                raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
            for item in response.get("Responses", {}).get(self.table, []):
                plain = _deserialise(item)
                states[plain["pk"]] = plain.get("state", "")
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return states
            time.sleep(_backoff(attempt))
        raise LedgerError(
            f"DynamoDB table {self.table}: keys still unprocessed after "
            f"{MAX_BATCH_ATTEMPTS} BatchGetItem calls (throttled)"
        )

    def _put_all(self, items: Sequence[dict[str, Any]]) -> None:
        """Put serialised ``items`` (at most ``BATCH_WRITE_ITEMS``) in one batch, sending
        what DynamoDB leaves unprocessed again after a pause."""
        request: dict[str, Any] = {self.table: [{"PutRequest": {"Item": i}} for i in items]}
        for attempt in range(MAX_BATCH_ATTEMPTS):
            try:
                response = self.client.batch_write_item(RequestItems=request)
            except (ClientError, BotoCoreError) as exc:
                raise LedgerError(f"DynamoDB table {self.table}: {exc}") from None
            request = response.get("UnprocessedItems") or {}
            if not request:
                return
            time.sleep(_backoff(attempt))
        raise LedgerError(
            f"DynamoDB table {self.table}: items still unprocessed after "
            f"{MAX_BATCH_ATTEMPTS} BatchWriteItem calls (throttled)"
        )

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

    def begin_file(self, bucket: str, key: str, etag: str, now: float, *, attempt: str = "",
                   lease_until: float | None = None) -> bool:  # fmt: skip
        values: dict[str, Any] = {
            ":state": FileState.PROCESSING.value,
            ":b": bucket,
            ":k": key,
            ":e": etag,
            ":now": now,
            ":attempt": attempt,
        }
        expression = "SET #s = :state, obucket = :b, okey = :k, etag = :e, started_at = :now, " \
            "attempt = :attempt"  # fmt: skip
        if lease_until is not None:
            expression += ", lease_until = :lease"
            values[":lease"] = lease_until
        return self._update(
            self._file_key(bucket, key, etag), expression, NOT_EXISTS, values, {"#s": "state"}
        )

    def resume_file(
        self, bucket: str, key: str, etag: str, *, attempt: str, lease_until: float, now: float
    ) -> FileRecord | None:
        item = self._update_item(
            self._file_key(bucket, key, etag),
            "SET attempt = :attempt, lease_until = :lease",
            RESUMABLE,
            {
                ":processing": FileState.PROCESSING.value,
                ":attempt": attempt,
                ":lease": lease_until,
                ":now": now,
                ":empty": "",
            },
            {"#s": "state"},
            returning="ALL_NEW",
        )
        return _file(item) if item else None

    def checkpoint_file(self, bucket: str, key: str, etag: str, *, attempt: str, rows: int,
                        published: int, rejected: int, skipped: int,
                        now: float) -> bool:  # fmt: skip
        return self._update(
            self._file_key(bucket, key, etag),
            "SET #r = :rows, published = :p, rejected = :rj, skipped = :sk, "
            "checkpoint_at = :now REMOVE lease_until",
            HELD,
            {
                ":processing": FileState.PROCESSING.value,
                ":attempt": attempt,
                ":rows": rows,
                ":p": published,
                ":rj": rejected,
                ":sk": skipped,
                ":now": now,
            },
            {"#s": "state", "#r": "rows"},
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
        return _file(max(items, key=lambda i: i.get("started_at") or 0))

    # --- orders ------------------------------------------------------------------------

    @staticmethod
    def _order_key(order_id: str) -> str:
        return f"ORDER#{order_id}"

    def add_queued(self, order_ids: Sequence[str], source: str, now: float) -> list[str]:
        """See ``Ledger.add_queued``; batched as the module's docstring tells."""
        unique = list(dict.fromkeys(order_ids))
        # what every new order shares, serialised once per call
        shared = _serialise({"state": OrderState.QUEUED.value, "source": source,
                             "queued_at": now, "updated_at": now})  # fmt: skip
        fresh: set[str] = set()
        for start in range(0, len(unique), BATCH_GET_KEYS):
            chunk = unique[start : start + BATCH_GET_KEYS]
            states = self._states([self._order_key(o) for o in chunk])
            new = [o for o in chunk if self._order_key(o) not in states]
            for at in range(0, len(new), BATCH_WRITE_ITEMS):
                self._put_all(
                    [
                        {**shared, **_serialise({"pk": self._order_key(o), "order_id": o})}
                        for o in new[at : at + BATCH_WRITE_ITEMS]
                    ]
                )
            fresh.update(new)
            for order_id in chunk:
                state = states.get(self._order_key(order_id))
                if state is None or state == OrderState.DELIVERED.value:
                    continue  # put above, or left alone
                if self._queue_again(order_id, source, now):  # a re-upload: conditional
                    fresh.add(order_id)
        return [o for o in order_ids if o in fresh]

    def _queue_again(self, order_id: str, source: str, now: float) -> bool:
        """Move a known order back to queued under ``source`` unless it is delivered."""
        return self._update(
            self._order_key(order_id),
            "SET #s = :queued, order_id = :id, #src = :src, queued_at = :now, "
            "updated_at = :now, reason = :empty",
            f"{NOT_EXISTS} OR {NOT_DELIVERED}",
            {
                ":queued": OrderState.QUEUED.value,
                ":id": order_id,
                ":src": source,
                ":now": now,
                ":empty": "",
                ":delivered": OrderState.DELIVERED.value,
            },
            {"#s": "state", "#src": "source"},
        )

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


def _serialise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as DynamoDB attribute values (floats go through Decimal)."""
    return {
        name: _SERIALIZER.serialize(_num(value) if isinstance(value, float) else value)
        for name, value in values.items()
    }


def _deserialise(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item's attribute values as plain values (numbers as int or float)."""
    return {name: _plain(_DESERIALIZER.deserialize(typed)) for name, typed in item.items()}


def _file(item: dict[str, Any]) -> FileRecord:
    return FileRecord(
        bucket=item["obucket"], key=item["okey"], etag=item["etag"],
        state=FileState(item["state"]), rows=item.get("rows", 0),
        published=item.get("published", 0), rejected=item.get("rejected", 0),
        skipped=item.get("skipped", 0), error=item.get("error", ""),
        started_at=item.get("started_at"), finished_at=item.get("finished_at"),
        attempt=item.get("attempt", ""), lease_until=item.get("lease_until"),
        checkpoint_at=item.get("checkpoint_at"),
    )  # fmt: skip


def _order(item: dict[str, Any]) -> OrderRecord:
    fields = {f: item[f] for f in _ORDER_FIELDS if f in item}
    return OrderRecord(order_id=item["order_id"], state=OrderState(item["state"]), **fields)
