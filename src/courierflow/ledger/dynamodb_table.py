"""The DynamoDB ledger's table calls: one conditional update, consistent reads, batches
sent again while DynamoDB leaves work unprocessed, and scans and index queries by boto3's
paginators.

Values go through boto3's ``TypeSerializer``/``TypeDeserializer`` (floats as Decimal on
the way in, whole numbers back as int); every botocore error becomes a ``LedgerError``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.errors import LedgerError

#: keys per BatchGetItem call (DynamoDB's limit)
BATCH_GET_KEYS = 100
#: puts per BatchWriteItem call (DynamoDB's limit)
BATCH_WRITE_ITEMS = 25
#: calls of one batch while DynamoDB hands back unprocessed keys or items (throttling)
MAX_BATCH_ATTEMPTS = 8
#: first and largest pause before sending unprocessed keys or items again, in seconds
BATCH_BACKOFF_BASE_S = 0.05
BATCH_BACKOFF_MAX_S = 2.0

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def serialise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as DynamoDB attribute values (floats go through Decimal)."""
    return {
        name: _SERIALIZER.serialize(Decimal(str(value)) if isinstance(value, float) else value)
        for name, value in values.items()
    }


def deserialise(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item's attribute values as plain values (numbers as int or float)."""
    return {name: _plain(_DESERIALIZER.deserialize(typed)) for name, typed in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _backoff(attempt: int) -> float:
    """Pause before resending unprocessed work: exponential, full jitter, capped."""
    return random.uniform(0, min(BATCH_BACKOFF_MAX_S, BATCH_BACKOFF_BASE_S * 2**attempt))


class Table:
    """One table keyed by ``pk``, through a boto3 DynamoDB client."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client

    def _error(self, exc: Exception) -> LedgerError:
        return LedgerError(f"DynamoDB table {self.name}: {exc}")

    def update(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
               names: dict[str, str] | None = None,
               returning: str = "NONE") -> dict[str, Any] | None:  # fmt: skip
        """One conditional update; the item as ``returning`` asks (``ALL_OLD``...), or
        None when the condition did not hold."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": serialise({"pk": key}),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": serialise(values),
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
            raise self._error(exc) from None
        except BotoCoreError as exc:
            raise self._error(exc) from None
        return deserialise(response.get("Attributes", {}))

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            item = self.client.get_item(
                TableName=self.name, Key=serialise({"pk": key}), ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None
        return deserialise(item) if item else None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_item(TableName=self.name, Key=serialise({"pk": key}))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def get_many(self, keys: Sequence[str], projection: str = "",
                 names: dict[str, str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """The existing items of ``keys`` (at most ``BATCH_GET_KEYS``, no repeats), read
        consistently, with only the attributes ``projection`` names when given."""
        wanted: dict[str, Any] = {
            "Keys": [serialise({"pk": k}) for k in keys],
            "ConsistentRead": True,
        }
        if projection:
            wanted["ProjectionExpression"] = projection
        if names:
            wanted["ExpressionAttributeNames"] = names
        request: dict[str, Any] = {self.name: wanted}
        found: list[dict[str, Any]] = []
        for attempt in range(MAX_BATCH_ATTEMPTS):
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc) from None
            found += [deserialise(i) for i in response.get("Responses", {}).get(self.name, [])]
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
            time.sleep(_backoff(attempt))
        raise LedgerError(
            f"DynamoDB table {self.name}: keys still unprocessed after "
            f"{MAX_BATCH_ATTEMPTS} BatchGetItem calls (throttled)"
        )

    def put_all(self, items: Sequence[dict[str, Any]]) -> None:
        """Put serialised ``items`` (at most ``BATCH_WRITE_ITEMS``) in one batch, sending
        what DynamoDB leaves unprocessed again after a pause."""
        request: dict[str, Any] = {self.name: [{"PutRequest": {"Item": i}} for i in items]}
        for attempt in range(MAX_BATCH_ATTEMPTS):
            try:
                response = self.client.batch_write_item(RequestItems=request)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc) from None
            request = response.get("UnprocessedItems") or {}
            if not request:
                return
            time.sleep(_backoff(attempt))
        raise LedgerError(
            f"DynamoDB table {self.name}: items still unprocessed after "
            f"{MAX_BATCH_ATTEMPTS} BatchWriteItem calls (throttled)"
        )

    def scan(
        self, prefix: str, matching: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item whose key starts with ``prefix`` (and whose attributes equal
        ``matching``'s values, filtered by DynamoDB), page after page: a page is held
        at a time."""
        tests = ["begins_with(pk, :p)"]
        names: dict[str, str] = {}
        values: dict[str, Any] = {":p": prefix}
        for i, (name, value) in enumerate((matching or {}).items()):
            tests.append(f"#m{i} = :m{i}")  # names as placeholders: `source` is reserved
            names[f"#m{i}"], values[f":m{i}"] = name, value
        return self._pages(
            "scan",
            TableName=self.name,
            FilterExpression=" AND ".join(tests),
            ExpressionAttributeValues=serialise(values),
            **({"ExpressionAttributeNames": names} if names else {}),
        )

    def query_index(self, index: str, key: str, value: str, where: str,
                    values: dict[str, Any], names: dict[str, str]
                    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """The entries of ``index`` whose partition key ``key`` is ``value`` and that
        pass the filter ``where``, page after page (a GSI is read eventually consistent:
        an entry may lag its item by a moment)."""
        return self._pages(
            "query",
            TableName=self.name,
            IndexName=index,
            KeyConditionExpression="#k = :k",
            FilterExpression=where,
            ExpressionAttributeValues=serialise({":k": value, **values}),
            ExpressionAttributeNames={"#k": key, **names},
        )

    def _pages(self, operation: str, **request: Any) -> Iterator[dict[str, Any]]:
        """The items of every page of a Scan or Query, deserialised, a page at a time."""
        pages = self.client.get_paginator(operation).paginate(**request)
        try:
            for page in pages:
                for item in page.get("Items", []):
                    yield deserialise(item)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None
