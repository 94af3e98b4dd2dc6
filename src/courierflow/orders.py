"""The order model, the states an order moves through, and the CSV schema."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

#: one encoder for every message (``json.dumps`` with options builds one per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class OrderState(str, Enum):
    """Where an order is in its life; the ledger stores the value."""

    #: published to the queue and confirmed by the broker
    QUEUED = "queued"
    #: the manager handed it to Lambda (the Event invoke was accepted)
    DISPATCHED = "dispatched"
    #: a delivery attempt claimed it and is on the road
    DELIVERING = "delivering"
    #: delivered; never delivered again
    DELIVERED = "delivered"
    #: given up on, with a reason (after retries, or dead-lettered)
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (OrderState.DELIVERED, OrderState.FAILED)


#: columns the reader knows and types; any other column is passed through as text
KNOWN_COLUMNS = ("order_id", "customer", "address", "items", "quantity", "priority", "notes")


@dataclass(frozen=True, slots=True)
class Order:
    """One valid order read from a CSV row.

    ``extra`` keeps unknown columns so they travel with the message unchanged.
    ``source`` names the file (``s3://bucket/key``) and ``line`` the line its row starts on.
    """

    order_id: str
    customer: str = ""
    address: str = ""
    items: str = ""
    quantity: int = 1
    priority: str = ""
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    source: str = ""
    line: int = 0

    def to_message(self) -> dict[str, Any]:
        """The JSON document published to the queue."""
        return {
            "order_id": self.order_id,
            "customer": self.customer,
            "address": self.address,
            "items": self.items,
            "quantity": self.quantity,
            "priority": self.priority,
            "notes": self.notes,
            "extra": self.extra,
            "source": self.source,
            "line": self.line,
        }

    def to_json(self) -> bytes:
        return _ENCODER.encode(self.to_message()).encode()

    @classmethod
    def from_message(cls, body: bytes | str | dict[str, Any]) -> Order:
        """Parse a queue message; raises ``ValueError`` when it is not a valid order."""
        doc = body if isinstance(body, dict) else json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("message is not a JSON object")
        order_id = doc.get("order_id")
        if not isinstance(order_id, str) or not order_id.strip():
            raise ValueError("message has no order_id")
        quantity = doc.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
            raise ValueError(f"quantity {quantity!r} is not a positive integer")
        extra = doc.get("extra") or {}
        if not isinstance(extra, dict):
            raise ValueError("extra is not an object")
        return cls(
            order_id=order_id,
            customer=str(doc.get("customer", "")),
            address=str(doc.get("address", "")),
            items=str(doc.get("items", "")),
            quantity=quantity,
            priority=str(doc.get("priority", "")),
            notes=str(doc.get("notes", "")),
            extra={str(k): str(v) for k, v in extra.items()},
            source=str(doc.get("source", "")),
            line=int(doc.get("line", 0) or 0),
        )


@dataclass(frozen=True, slots=True)
class Reject:
    """A CSV row that was not a valid order: where it was, why, and what it held."""

    line: int
    reason: str
    raw: list[str]
