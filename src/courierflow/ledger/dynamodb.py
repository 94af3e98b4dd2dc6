"""The ledger on DynamoDB (on AWS): one on-demand table, key ``pk``.

Orders are items ``ORDER#<id>``, files ``FILE#<bucket>/<key>#<etag>``. Every state change
is one conditional write; ``ConditionalCheckFailedException`` is the "someone got there
first" answer and becomes a result, never an error; the conditions are the rules of
``ledger.base`` written from its names. Counts and the dashboard's figures come from
counter items (:mod:`courierflow.ledger.dynamodb_counts`); listing orders and finding
stuck ones scan the table (a GSI on source/state would be the next step for millions).

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

#: the table's key, as the SAM template declares it
TABLE_KEY_SCHEMA = [{"AttributeName": "pk", "KeyType": "HASH"}]
TABLE_ATTRIBUTES = [{"AttributeName": "pk", "AttributeType": "S"}]

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
                        {**shared, **serialise({"pk": self._order_key(o), "order_id": o})}
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
            "updated_at = :now, reason = :empty",
            f"{NOT_EXISTS} OR {NOT_KEPT}",
            {":id": order_id, ":src": source, ":now": now, ":empty": ""},
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
                "SET #s = :s_dispatched, order_id = :id, dispatched_at = :now, updated_at = :now",
                f"{NOT_EXISTS} OR {DISPATCHABLE}",
                {":id": order_id, ":now": at},
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
            "started_at = :now, claim_expires_at = :exp, updated_at = :now, reason = :empty "
            "ADD attempts :one",
            f"{NOT_EXISTS} OR {CLAIMABLE_STATE} OR {EXPIRED_CLAIM} OR {OWN_CLAIM}",
            {
                ":id": order_id,
                ":rid": request_id,
                ":now": now,
                ":exp": now + lease_s,
                ":empty": "",
                ":one": 1,
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
            "SET #s = :s_dispatched, reason = :reason, updated_at = :now REMOVE claim_expires_at",
            f"{HELD} AND request_id = :rid",
            {":rid": request_id, ":reason": reason, ":now": now},
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
            "updated_at = :fin REMOVE claim_expires_at",
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
            "updated_at = :now",
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
        wanted = {s.value for s in states}
        items = [
            i for i in self._items.scan("ORDER#")
            if i.get("state") in wanted and (i.get("updated_at") or 0) < older_than
        ]  # fmt: skip
        return [_order(i) for i in sorted(items, key=lambda i: i.get("updated_at") or 0)]


def _order(item: dict[str, Any]) -> OrderRecord:
    fields = {f: item[f] for f in _ORDER_FIELDS if f in item}
    return OrderRecord(order_id=item["order_id"], state=OrderState(item["state"]), **fields)
