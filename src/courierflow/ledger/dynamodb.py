"""The ledger on DynamoDB (on AWS): one on-demand table, key ``pk``.

Orders are items ``ORDER#<id>``, files ``FILE#<bucket>/<key>#<etag>``. Every state change
is one conditional write; ``ConditionalCheckFailedException`` is the "someone got there
first" answer and becomes a result, never an error; the conditions are the rules of
``ledger.base`` written from its names. Counts and the dashboard's figures come from
counter items (:mod:`courierflow.ledger.dynamodb_counts`); listing orders scans the table.

Finding stuck orders reads an index of the open ones. The reconciler looks every minute,
and a Scan would read every order ever recorded, each time: at a million orders, several
whole-table reads a minute, and more than its function's timeout. So an order carries
``open_shard`` while it is queued, dispatched or delivering, and loses it when it is
delivered or failed; the global secondary index ``open-orders`` is keyed on it, and holds
only the items that have it (a sparse index). ``stuck`` queries each shard for the
states and ages it wants, then reads the items it found again, consistently, before it
answers. What this relies on (AWS's DynamoDB developer guide):

- an index holds only the items that have its key attribute, and removing the attribute
  takes the item out (bp-indexes-general-sparse-indexes.html);
- a GSI is updated asynchronously and read eventually consistent only (GSI.html), hence
  the second, consistent read;
- a GSI has partitions of its own with per-partition write limits, and a GSI that cannot
  keep up throttles writes to the table itself (gsi-throttling.html): one key value
  for every open order would put all of them on one partition, so the key is one of
  ``OPEN_SHARDS`` values, from a hash of the order id;
- an update that changes a projected attribute costs one index write, and one that
  changes the index's key costs two (GSI.html, "Writes"): an order keeps one shard for
  life, so each state change costs one index write.

Orders written before the index existed carry no ``open_shard``; the next state change
of each gives it one.

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

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import boto3
from botocore.config import Config

from courierflow.config import resolve_region
from courierflow.ledger.activity import Activity
from courierflow.ledger.base import (
    CLAIMABLE_STATES,
    DISPATCHABLE_STATES,
    HELD_STATE,
    KEPT_STATE,
    ClaimResult,
    Ledger,
    OrderRecord,
)
from courierflow.ledger.dynamodb_counts import Counters, slot
from courierflow.ledger.dynamodb_files import NOT_EXISTS, DynamoDBFiles
from courierflow.ledger.dynamodb_table import BATCH_GET_KEYS, BATCH_WRITE_ITEMS, Table, serialise
from courierflow.orders import OrderState

#: the index of open orders, its key attribute and how many values the key takes
OPEN_INDEX = "open-orders"
OPEN_SHARD = "open_shard"
OPEN_SHARDS = 16

#: the table as the SAM template declares it (tests create it from this)
TABLE_KEY_SCHEMA = [{"AttributeName": "pk", "KeyType": "HASH"}]
TABLE_ATTRIBUTES = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": OPEN_SHARD, "AttributeType": "S"},
]
TABLE_INDEXES = [
    {
        "IndexName": OPEN_INDEX,
        "KeySchema": [{"AttributeName": OPEN_SHARD, "KeyType": "HASH"}],
        # what `stuck` filters on; the rest it reads from the item itself
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["state", "updated_at"]},
    }
]


#: the table's properties, as CloudFormation's AWS::DynamoDB::Table and CreateTable name them
TABLE_PROPERTIES: dict[str, Any] = {
    "KeySchema": TABLE_KEY_SCHEMA,
    "AttributeDefinitions": TABLE_ATTRIBUTES,
    "GlobalSecondaryIndexes": TABLE_INDEXES,
    "BillingMode": "PAY_PER_REQUEST",
}


def table_definition(name: str) -> dict[str, Any]:
    """``CreateTable``'s arguments for a ledger table called ``name``."""
    return {"TableName": name, **TABLE_PROPERTIES}


def open_shard(order_id: str) -> str:
    """The shard of the open-orders index an order is filed under while it is open."""
    return str(zlib.crc32(order_id.encode()) % OPEN_SHARDS)


#: every state as an expression value (``:s_queued`` ...): expressions name states only so
_STATES = {f":s_{state.value}": state.value for state in OrderState}


def _one_of(states: Iterable[OrderState]) -> str:
    """``#s IN (:s_queued, :s_dispatched)``."""
    return "#s IN (" + ", ".join(f":s_{state.value}" for state in states) + ")"


# The rules of ledger.base, as condition expressions built from named parts.
CLAIMABLE_STATE = _one_of(CLAIMABLE_STATES)
HELD = f"#s = :s_{HELD_STATE.value}"
EXPIRED_CLAIM = f"({HELD} AND claim_expires_at < :now)"
OWN_CLAIM = f"({HELD} AND request_id = :rid)"
NOT_KEPT = f"#s <> :s_{KEPT_STATE.value}"
DISPATCHABLE = _one_of(DISPATCHABLE_STATES)

#: the client the ledger builds for itself. Parameter validation is off: every request is
#: built here in a fixed shape (tests run with validating clients), and on the batched
#: path validation took a fifth of the client's CPU.
CLIENT_CONFIG = Config(parameter_validation=False)

_ORDER_FIELDS = (
    "source", "queued_at", "dispatched_at", "started_at", "finished_at", "request_id",
    "delay_s", "attempts", "duplicates", "reason", "claim_expires_at",
)  # fmt: skip


def _with_states(values: dict[str, Any], *expressions: str | None) -> dict[str, Any]:
    """``values`` and the state values the expressions use (DynamoDB refuses unused ones)."""
    text = " ".join(e for e in expressions if e)
    used = {k: v for k, v in _STATES.items() if re.search(re.escape(k) + r"\b", text)}
    return {**values, **used}


class DynamoDBLedger(DynamoDBFiles, Ledger):
    """Ledger in a DynamoDB table; ``client`` is a boto3 DynamoDB client (tests pass moto's)."""

    def __init__(self, table: str, client: Any = None, region: str | None = None) -> None:
        self.table = table
        self._client = client
        self._region = region
        self._table: Table | None = None
        self._counts: Counters | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            # the region given, else as the SDKs resolve it: a client without one raises
            # NoRegionError where only AWS_REGION is set (botocore reads AWS_DEFAULT_REGION)
            self._client = boto3.client(
                "dynamodb", region_name=self._region or resolve_region(), config=CLIENT_CONFIG
            )
        return self._client

    @property
    def _items(self) -> Table:
        if self._table is None:
            self._table = Table(self.table, self.client)
        return self._table

    @property
    def _counters(self) -> Counters:
        if self._counts is None:
            self._counts = Counters(self._items)
        return self._counts

    def _change(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
                names: dict[str, str] | None = None,
                returning: str = "ALL_OLD") -> dict[str, Any] | None:  # fmt: skip
        """One conditional update, with the state values its expressions use; the item
        as ``returning`` asks (by default as it was before), None when the condition did
        not hold."""
        values = _with_states(values, expression, condition)
        return self._items.update(key, expression, condition, values, names, returning)

    # --- orders ------------------------------------------------------------------------

    @staticmethod
    def _order_key(order_id: str) -> str:
        return f"ORDER#{order_id}"

    def add_queued(self, order_ids: Sequence[str], source: str, now: float) -> list[str]:
        """See ``Ledger.add_queued``; batched as the module's docstring tells."""
        unique = list(dict.fromkeys(order_ids))
        # what every new order shares, serialised once per call
        shared = serialise({"state": OrderState.QUEUED.value, "source": source,
                            "queued_at": now, "updated_at": now})  # fmt: skip
        fresh: set[str] = set()
        created = 0
        self._counters.add_source(source)
        for start in range(0, len(unique), BATCH_GET_KEYS):
            chunk = unique[start : start + BATCH_GET_KEYS]
            found = self._items.get_many(
                [self._order_key(o) for o in chunk], "pk, #s", {"#s": "state"}
            )
            states = {item["pk"]: item.get("state", "") for item in found}
            new = [o for o in chunk if self._order_key(o) not in states]
            for at in range(0, len(new), BATCH_WRITE_ITEMS):
                self._items.put_all(
                    [
                        {
                            **shared,
                            **serialise(
                                {"pk": self._order_key(o), "order_id": o, OPEN_SHARD: open_shard(o)}
                            ),
                        }
                        for o in new[at : at + BATCH_WRITE_ITEMS]
                    ]
                )
            fresh.update(new)
            created += len(new)
            for order_id in chunk:
                state = states.get(self._order_key(order_id))
                if state is None or state == KEPT_STATE.value:
                    continue  # put above, or left alone
                if self._queue_again(order_id, source, now):  # a re-upload: conditional
                    fresh.add(order_id)
        if created:  # the orders put above, counted in one update
            self._counters.add(source, {slot(OrderState.QUEUED, False): created}, queued_at=now)
        return [o for o in order_ids if o in fresh]

    def _queue_again(self, order_id: str, source: str, now: float) -> bool:
        """Move a known order back to queued under ``source`` unless it is delivered."""
        before = self._change(
            self._order_key(order_id),
            "SET #s = :s_queued, order_id = :id, #src = :src, queued_at = :now, "
            f"updated_at = :now, reason = :empty, {OPEN_SHARD} = :open",
            f"{NOT_EXISTS} OR {NOT_KEPT}",
            {
                ":id": order_id,
                ":src": source,
                ":now": now,
                ":empty": "",
                ":open": open_shard(order_id),
            },
            {"#s": "state", "#src": "source"},
        )
        if before is not None:
            self._counters.move(before, OrderState.QUEUED, source=source, queued_at=now)
        return before is not None

    def mark_dispatched(self, dispatched: Mapping[str, float]) -> None:
        for order_id, at in dispatched.items():  # conditional writes cannot be batched
            key = self._order_key(order_id)
            before = self._change(
                key,
                "SET #s = :s_dispatched, order_id = :id, dispatched_at = :now, updated_at = :now, "
                f"{OPEN_SHARD} = :open",
                f"{NOT_EXISTS} OR {DISPATCHABLE}",
                {":id": order_id, ":now": at, ":open": open_shard(order_id)},
                {"#s": "state"},
            )
            if before is not None:
                self._counters.move(before, OrderState.DISPATCHED)
                continue
            # its delivery began first: keep the state, note the dispatch
            self._update(
                key, "SET dispatched_at = :now", "attribute_not_exists(dispatched_at)",
                {":now": at},
            )  # fmt: skip

    def claim_delivery(
        self, order_id: str, request_id: str, lease_s: float, now: float
    ) -> ClaimResult:
        before = self._change(
            self._order_key(order_id),
            f"SET #s = :s_{HELD_STATE.value}, order_id = :id, request_id = :rid, "
            "started_at = :now, claim_expires_at = :exp, updated_at = :now, reason = :empty, "
            f"{OPEN_SHARD} = :open ADD attempts :one",
            f"{NOT_EXISTS} OR {CLAIMABLE_STATE} OR {EXPIRED_CLAIM} OR {OWN_CLAIM}",
            {
                ":id": order_id,
                ":rid": request_id,
                ":now": now,
                ":exp": now + lease_s,
                ":empty": "",
                ":one": 1,
                ":open": open_shard(order_id),
            },
            {"#s": "state"},
        )
        if before is not None:
            self._counters.move(before, HELD_STATE, started=True)
            return ClaimResult.CLAIMED
        self._update(self._order_key(order_id), "ADD duplicates :one", None, {":one": 1})
        item = self._items.get(self._order_key(order_id))
        if item and item.get("state") == OrderState.DELIVERED.value:
            return ClaimResult.ALREADY_DELIVERED
        return ClaimResult.IN_PROGRESS

    def release_claim(self, order_id: str, request_id: str, reason: str, now: float) -> None:
        before = self._change(
            self._order_key(order_id),
            f"SET #s = :s_dispatched, reason = :reason, updated_at = :now, {OPEN_SHARD} = :open "
            "REMOVE claim_expires_at",
            f"{HELD} AND request_id = :rid",
            {":rid": request_id, ":reason": reason, ":now": now, ":open": open_shard(order_id)},
            {"#s": "state"},
        )
        if before is not None:
            self._counters.move(before, OrderState.DISPATCHED)

    def complete_delivery(
        self, order_id: str, request_id: str, delay_s: float, started: float, finished: float
    ) -> bool:
        before = self._change(
            self._order_key(order_id),
            "SET #s = :s_delivered, delay_s = :d, started_at = :st, finished_at = :fin, "
            f"updated_at = :fin REMOVE claim_expires_at, {OPEN_SHARD}",
            f"{HELD} AND request_id = :rid",
            {":rid": request_id, ":d": delay_s, ":st": started, ":fin": finished},
            {"#s": "state"},
        )
        if before is not None:
            self._counters.move(before, OrderState.DELIVERED, started=True, finished_at=finished)
        return before is not None

    def mark_failed(self, order_id: str, reason: str, now: float) -> None:
        before = self._change(
            self._order_key(order_id),
            "SET #s = :s_failed, order_id = :id, reason = :reason, finished_at = :now, "
            f"updated_at = :now REMOVE {OPEN_SHARD}",
            f"{NOT_EXISTS} OR {NOT_KEPT}",
            {":id": order_id, ":reason": reason, ":now": now},
            {"#s": "state"},
        )
        if before is not None:
            self._counters.move(before, OrderState.FAILED, finished_at=now)

    def touch(self, order_ids: Sequence[str], now: float) -> None:
        for order_id in order_ids:
            self._update(
                self._order_key(order_id), "SET updated_at = :now", "attribute_exists(pk)",
                {":now": now},
            )  # fmt: skip

    def get_order(self, order_id: str) -> OrderRecord | None:
        item = self._items.get(self._order_key(order_id))
        return _order(item) if item else None

    def orders(self, source: str | None = None) -> list[OrderRecord]:
        return sorted(self.iter_orders(source), key=lambda r: r.order_id)

    def iter_orders(self, source: str | None = None) -> Iterator[OrderRecord]:
        """A Scan, page after page (the source filtered by DynamoDB)."""
        matching = None if source is None else {"source": source}
        return map(_order, self._items.scan("ORDER#", matching))

    def counts(self, source: str | None = None) -> dict[OrderState, int]:
        """From the counter items: no Scan (see :mod:`courierflow.ledger.dynamodb_counts`)."""
        return self._counters.counts(source)

    def activity(self, now: float, window_s: float, latest: int, source: str | None = None
                 ) -> Activity:  # fmt: skip
        return self._counters.activity(source, now, window_s)

    def stuck(self, states: Iterable[OrderState], older_than: float) -> list[OrderRecord]:
        """From the open-orders index, shard by shard, then read again from the table
        (the index lags its items; see the module's doc)."""
        wanted = set(states)
        where = f"{_one_of(wanted)} AND updated_at < :t"
        values = _with_states({":t": older_than}, where)
        keys = [
            entry["pk"]
            for shard in range(OPEN_SHARDS)
            for entry in self._items.query_index(
                OPEN_INDEX, OPEN_SHARD, str(shard), where, values, {"#s": "state"}
            )
        ]
        items = [
            item
            for start in range(0, len(keys), BATCH_GET_KEYS)
            for item in self._items.get_many(keys[start : start + BATCH_GET_KEYS])
            if OrderState(item["state"]) in wanted and (item.get("updated_at") or 0) < older_than
        ]
        return [_order(i) for i in sorted(items, key=lambda i: i.get("updated_at") or 0)]


def _order(item: dict[str, Any]) -> OrderRecord:
    fields = {f: item[f] for f in _ORDER_FIELDS if f in item}
    return OrderRecord(order_id=item["order_id"], state=OrderState(item["state"]), **fields)
