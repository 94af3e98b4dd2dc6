"""The order ledger: what happened to every order and every file.

A backend implements the primitives below; each state change is a conditional write,
so two attempts racing for the same order cannot both win. The SQLite backend is the
embedded default; the DynamoDB backend is what runs on AWS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from courierflow.ledger import trips
from courierflow.ledger.activity import Activity, activity_of
from courierflow.orders import OrderState

# --- the rules of the state changes, stated once; each backend writes them in its own
# query language (SQL, DynamoDB condition expressions) from these names ---------------

#: states a delivery attempt takes an order from outright: nobody is delivering it
CLAIMABLE_STATES = (OrderState.QUEUED, OrderState.DISPATCHED, OrderState.FAILED)
#: the state of an order an attempt holds. Another attempt may take it once the claim
#: expired; the holder's own retry (Lambda retries an event with its request id) at once
HELD_STATE = OrderState.DELIVERING
#: states a dispatch moves to DISPATCHED; any later state is kept (never moved backwards)
DISPATCHABLE_STATES = (OrderState.QUEUED, OrderState.DISPATCHED)
#: the state nothing writes over: a re-upload never queues it again, a late failure
#: report never marks it failed
KEPT_STATE = OrderState.DELIVERED


def split_source(source: str) -> tuple[str, str]:
    """``s3://bucket/key`` (a :attr:`FileRecord.source`) as (bucket, key)."""
    bucket, _, key = source.removeprefix("s3://").partition("/")
    return bucket, key


def may_claim(record: OrderRecord | None, request_id: str, now: float) -> bool:
    """The claim rule every backend applies in one conditional write: an unknown order,
    one in :data:`CLAIMABLE_STATES`, or one :data:`HELD_STATE` whose claim expired before
    ``now`` or is held by ``request_id`` itself."""
    if record is None or record.state in CLAIMABLE_STATES:
        return True
    if record.state is not HELD_STATE:
        return False
    expired = record.claim_expires_at is not None and record.claim_expires_at < now
    return expired or record.request_id == request_id


class FileState(str, Enum):
    """Where the processing of one uploaded object is."""

    #: the publisher is reading and publishing it
    PROCESSING = "processing"
    #: every row was read; valid ones published and confirmed
    DONE = "done"
    #: refused as a whole (not CSV, no order_id column, ...); nothing published
    REFUSED = "refused"


class ClaimResult(str, Enum):
    """Outcome of a delivery attempt's claim on an order."""

    #: this attempt owns the order and must deliver it
    CLAIMED = "claimed"
    #: the order is already delivered: skip, count a duplicate
    ALREADY_DELIVERED = "already_delivered"
    #: another live attempt holds the claim: skip, count a duplicate
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One order's row in the ledger. Times are Unix seconds (float) or None."""

    order_id: str
    state: OrderState
    source: str = ""
    queued_at: float | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    request_id: str = ""
    delay_s: float | None = None
    attempts: int = 0
    duplicates: int = 0
    reason: str = ""
    claim_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One processed object, keyed by (bucket, key, etag).

    While the file is PROCESSING, ``rows`` and the counts are its last checkpoint: the
    data rows fully handled so far (published and confirmed, or rejected) and what became
    of them; a resumed attempt starts after those rows.
    """

    bucket: str
    key: str
    etag: str
    state: FileState
    rows: int = 0
    published: int = 0
    rejected: int = 0
    skipped: int = 0
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    #: the attempt holding a PROCESSING file (a Lambda request id, an SQS message id)
    attempt: str = ""
    #: until when that attempt may still be running; None: nobody holds the file
    lease_until: float | None = None
    #: when the last checkpoint was recorded; None: no checkpoint yet
    checkpoint_at: float | None = None

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class Ledger(ABC):
    """Interface of a ledger backend. Every method is safe to call from many processes."""

    # --- files (idempotent ingestion) -------------------------------------------------

    @abstractmethod
    def begin_file(
        self,
        bucket: str,
        key: str,
        etag: str,
        now: float,
        *,
        attempt: str = "",
        lease_until: float | None = None,
    ) -> bool:
        """Record that processing of this object version started, held by ``attempt``
        until ``lease_until`` (None: not held, anyone may resume it).

        Returns False when the same (bucket, key, etag) was already begun, so a duplicate
        notification publishes nothing twice. Must be idempotent.
        """

    @abstractmethod
    def resume_file(
        self, bucket: str, key: str, etag: str, *, attempt: str, lease_until: float, now: float
    ) -> FileRecord | None:
        """Take over a file left PROCESSING, to resume it after its checkpoint.

        Succeeds when the file is held by nobody, by ``attempt`` itself (Lambda retries an
        event with its request id) or by an attempt whose lease ended before ``now``; the
        file is then held by ``attempt`` until ``lease_until``. A conditional write: of two
        attempts racing to take over, one wins. An empty ``attempt`` matches no holder.

        Returns:
            The record, holding the checkpoint to resume from; None when the file is
            unknown, done, refused, or held by another live attempt.
        """

    @abstractmethod
    def checkpoint_file(
        self,
        bucket: str,
        key: str,
        etag: str,
        *,
        attempt: str,
        rows: int,
        published: int,
        rejected: int,
        skipped: int,
        now: float,
    ) -> bool:
        """Record the progress of an attempt that stops before the end of the file, and
        let go of the file so the next attempt may resume after ``rows`` data rows.

        Only the attempt holding a PROCESSING file may write its checkpoint; returns False
        (and writes nothing) otherwise.
        """

    @abstractmethod
    def finish_file(
        self,
        bucket: str,
        key: str,
        etag: str,
        state: FileState,
        *,
        rows: int,
        published: int,
        rejected: int,
        skipped: int = 0,
        error: str = "",
        now: float,
    ) -> None:
        """Store the outcome of processing one object."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, etag: str | None = None) -> FileRecord | None:
        """The latest record of this object (of this etag, when given)."""

    # --- orders --------------------------------------------------------------------------

    @abstractmethod
    def add_queued(self, order_ids: Sequence[str], source: str, now: float) -> list[str]:
        """Record orders as queued and return the ids that should be published.

        An order already delivered is left alone and not returned (a re-upload never
        re-delivers); any other known order is moved back to queued under this source.
        A backend may batch its writes (the publisher passes hundreds of ids at a time),
        but an order that exists when the call reads it is changed only by a conditional
        write, so one delivered meanwhile is still left alone.
        """

    @abstractmethod
    def mark_dispatched(self, dispatched: Mapping[str, float]) -> None:
        """The manager handed these orders to Lambda, each at its time (one write for the
        batch where the store allows). Never moves an order backwards; an order whose
        delivery began before the dispatch was recorded keeps its state and gets its
        first dispatch time."""

    @abstractmethod
    def claim_delivery(
        self, order_id: str, request_id: str, lease_s: float, now: float
    ) -> ClaimResult:
        """Conditionally move the order to delivering for this attempt, in one write
        that succeeds exactly when :func:`may_claim` says so. A duplicate attempt gets
        ALREADY_DELIVERED or IN_PROGRESS and its duplicate is counted.
        """

    @abstractmethod
    def complete_delivery(
        self, order_id: str, request_id: str, delay_s: float, started: float, finished: float
    ) -> bool:
        """Mark delivered, only if this request still holds the claim. Returns success."""

    @abstractmethod
    def release_claim(self, order_id: str, request_id: str, reason: str, now: float) -> None:
        """Give back this request's claim after a failed attempt (state back to dispatched),
        keeping the reason, so Lambda's retry or the reconciler can take the order again."""

    @abstractmethod
    def touch(self, order_ids: Sequence[str], now: float) -> None:
        """Reset the last-change time of orders (the reconciler re-dispatched them)."""

    @abstractmethod
    def forget_file(self, bucket: str, key: str, etag: str) -> None:
        """Drop a file record so the same object can be processed again (after a crash
        left it in processing)."""

    @abstractmethod
    def mark_failed(self, order_id: str, reason: str, now: float) -> None:
        """Give up on an order that is not delivered, keeping the reason."""

    @abstractmethod
    def get_order(self, order_id: str) -> OrderRecord | None:
        """One order's record."""

    @abstractmethod
    def orders(self, source: str | None = None) -> list[OrderRecord]:
        """All orders, or those of one file (``s3://bucket/key``)."""

    @abstractmethod
    def stuck(self, states: Iterable[OrderState], older_than: float) -> list[OrderRecord]:
        """Orders in one of ``states`` whose last change is older than ``older_than``."""

    def iter_orders(self, source: str | None = None) -> Iterator[OrderRecord]:
        """All orders, or those of one file, in no set order: what a pass over every order
        reads (the run's summary, report.html). Backends read them a page at a time, so
        the pass holds a page however many orders there are; this default reads them
        all first."""
        return iter(self.orders(source))

    def trip_events(self, source: str | None = None) -> Iterator[tuple[float, int]]:
        """The start and end of every delivered trip (of one file), in time order: what
        the peak concurrency is swept from (see :mod:`courierflow.ledger.trips`). This
        default (DynamoDB's: it cannot sort by an attribute) makes a pass of
        :meth:`iter_orders` of its own and sorts the times in memory, 16 bytes a trip;
        the SQLite backend sorts them in SQL."""
        return trips.trip_events(self.iter_orders(source))

    def counts(self, source: str | None = None) -> dict[OrderState, int]:
        """Number of orders per state (every state present, zeros included).

        Backends keep these as running figures, so a poll costs the same however many
        orders the ledger holds (this default reads every order)."""
        result = dict.fromkeys(OrderState, 0)
        for record in self.iter_orders(source):
            result[record.state] += 1
        return result

    def activity(self, now: float, window_s: float, latest: int, source: str | None = None
                 ) -> Activity:  # fmt: skip
        """The running figures the dashboard polls (see :mod:`courierflow.ledger.activity`),
        of one file or of all. Backends read them without a pass over the orders; this
        default computes them from every record."""
        return activity_of(self.orders(source), now, window_s, latest)

    def in_state(self, state: OrderState) -> list[OrderRecord]:
        """The orders in ``state`` (``status`` lists the failed ones). The SQLite backend
        reads only those orders (its state index); this default passes over every order
        and keeps only those."""
        return [r for r in self.iter_orders() if r.state is state]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_ledger(url: str, region: str | None = None) -> Ledger:
    """Open the backend a ledger URL names: ``sqlite:///path`` or ``dynamodb://table``
    (in ``region``; default :func:`courierflow.config.resolve_region`)."""
    from courierflow.errors import ConfigError

    if url.startswith("sqlite:///"):
        from courierflow.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(url.removeprefix("sqlite:///"))
    if url.startswith("dynamodb://"):
        from courierflow.ledger.dynamodb import DynamoDBLedger

        return DynamoDBLedger(url.removeprefix("dynamodb://"), region=region)
    raise ConfigError(
        f"unknown ledger URL {url!r}: use sqlite:///PATH or dynamodb://TABLE "
        "(set COURIERFLOW_LEDGER_URL)"
    )
