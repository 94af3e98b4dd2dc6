"""The embedded ledger: one SQLite file shared by publisher, manager and deliveries.

Every state change is a single conditional statement, so racing processes cannot both
win; the statements write the rules of :mod:`courierflow.ledger.base` in SQL, with states
as parameters. The running figures (:meth:`SQLiteLedger.activity`) are kept by triggers
(:mod:`courierflow.ledger.sqlite_schema`). The file's connections and writers' queue
are :class:`courierflow.ledger.sqlite_file.SQLiteFile`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from courierflow.ledger.activity import WAITING_STATES, Activity, latest_changes, second_of
from courierflow.ledger.base import (
    CLAIMABLE_STATES,
    DISPATCHABLE_STATES,
    HELD_STATE,
    KEPT_STATE,
    ClaimResult,
    FileRecord,
    FileState,
    Ledger,
    OrderRecord,
)
from courierflow.ledger.sqlite_file import SQLiteFile
from courierflow.ledger.trips import END, START, TRIP_STATE
from courierflow.orders import OrderState

_FILE_COLUMNS = (
    "bucket, key, etag, state, rows, published, rejected, skipped, error, started_at,"
    " finished_at, attempt, lease_until, checkpoint_at"
)

_ORDER_COLUMNS = (
    "order_id, state, source, queued_at, dispatched_at, started_at, finished_at, request_id,"
    " delay_s, attempts, duplicates, reason, claim_expires_at"
)

#: every state as a named parameter (``:queued`` ...): the SQL names states only so
_STATES: dict[str, str] = {state.value: state.value for state in OrderState}
_PROCESSING = {"processing": FileState.PROCESSING.value}


def _one_of(states: Iterable[OrderState]) -> str:
    """``(:queued, :dispatched)``: a list of state parameters for ``IN``."""
    return "(" + ", ".join(f":{state.value}" for state in states) + ")"


# The rules of ledger.base, in SQL. Taking over a file left processing: nobody holds it,
# its holder's lease ended, or the holder is this attempt.
_RESUMABLE = (
    "files.state = :processing AND (files.lease_until IS NULL OR files.lease_until < :now"
    " OR (files.attempt = :attempt AND :attempt != ''))"
)
_CLAIMABLE = (
    f"orders.state IN {_one_of(CLAIMABLE_STATES)}"
    f" OR (orders.state = :{HELD_STATE.value} AND orders.claim_expires_at < :now)"
    f" OR (orders.state = :{HELD_STATE.value} AND orders.request_id = :rid)"
)
_DISPATCHABLE = f"orders.state IN {_one_of(DISPATCHABLE_STATES)}"
_NOT_KEPT = f"orders.state != :{KEPT_STATE.value}"
# A whole trip (ledger.trips.is_trip): delivered, with a start and a non-zero end.
_TRIP = (
    f"state = :{TRIP_STATE.value} AND started_at IS NOT NULL"
    " AND finished_at IS NOT NULL AND finished_at != 0"
)


class SQLiteLedger(SQLiteFile, Ledger):
    """Ledger in a SQLite file (created with its folder on first use)."""

    # --- files -------------------------------------------------------------------------

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
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO files (bucket, key, etag, state, started_at, attempt, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (bucket, key, etag, FileState.PROCESSING.value, now, attempt, lease_until),
            )
            return cur.rowcount == 1

    def resume_file(
        self, bucket: str, key: str, etag: str, *, attempt: str, lease_until: float, now: float
    ) -> FileRecord | None:
        params = {"b": bucket, "k": key, "e": etag, "attempt": attempt, "lease": lease_until,
                  "now": now, **_PROCESSING}  # fmt: skip
        where = "bucket = :b AND key = :k AND etag = :e"
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE files SET attempt = :attempt, lease_until = :lease"
                f" WHERE {where} AND {_RESUMABLE}",
                params,
            )
            if cur.rowcount != 1:
                return None
            row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE {where}", params)
            return _file(row.fetchone())

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
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE files SET rows = ?, published = ?, rejected = ?, skipped = ?,"
                " checkpoint_at = ?, lease_until = NULL WHERE bucket = ? AND key = ?"
                " AND etag = ? AND state = ? AND attempt = ?",
                (
                    rows,
                    published,
                    rejected,
                    skipped,
                    now,
                    bucket,
                    key,
                    etag,
                    FileState.PROCESSING.value,
                    attempt,
                ),
            )
            return cur.rowcount == 1

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
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET state = ?, rows = ?, published = ?, rejected = ?, skipped = ?,"
                " error = ?, finished_at = ? WHERE bucket = ? AND key = ? AND etag = ?",
                (state.value, rows, published, rejected, skipped, error, now, bucket, key, etag),
            )

    def forget_file(self, bucket: str, key: str, etag: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM files WHERE bucket = ? AND key = ? AND etag = ?", (bucket, key, etag)
            )

    def get_file(self, bucket: str, key: str, etag: str | None = None) -> FileRecord | None:
        sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE bucket = ? AND key = ?"
        params: list[object] = [bucket, key]
        if etag is not None:
            sql += " AND etag = ?"
            params.append(etag)
        rows = self._read(sql + " ORDER BY started_at DESC LIMIT 1", params)
        return _file(rows[0]) if rows else None

    # --- orders ------------------------------------------------------------------------

    def add_queued(self, order_ids: Sequence[str], source: str, now: float) -> list[str]:
        to_publish: list[str] = []
        with self._write() as conn:
            for order_id in order_ids:
                cur = conn.execute(
                    "INSERT INTO orders (order_id, state, source, queued_at, updated_at)"
                    " VALUES (:id, :queued, :src, :now, :now)"
                    " ON CONFLICT (order_id) DO UPDATE SET state = :queued, source = :src,"
                    f" queued_at = :now, updated_at = :now, reason = '' WHERE {_NOT_KEPT}",
                    {"id": order_id, "src": source, "now": now, **_STATES},
                )
                if cur.rowcount == 1:
                    to_publish.append(order_id)
        return to_publish

    def mark_dispatched(self, dispatched: Mapping[str, float]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO orders (order_id, state, dispatched_at, updated_at)"
                " VALUES (:id, :dispatched, :at, :at)"
                " ON CONFLICT (order_id) DO UPDATE SET"
                f" state = CASE WHEN {_DISPATCHABLE} THEN :dispatched ELSE orders.state END,"
                f" updated_at = CASE WHEN {_DISPATCHABLE} THEN :at ELSE orders.updated_at END,"
                f" dispatched_at = CASE WHEN {_DISPATCHABLE} OR orders.dispatched_at IS NULL"
                " THEN :at ELSE orders.dispatched_at END",
                [{"id": order_id, "at": at, **_STATES} for order_id, at in dispatched.items()],
            )

    def claim_delivery(
        self, order_id: str, request_id: str, lease_s: float, now: float
    ) -> ClaimResult:
        params = {"id": order_id, "rid": request_id, "now": now, "exp": now + lease_s, **_STATES}
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO orders (order_id, state, request_id, started_at, claim_expires_at,"
                " attempts, updated_at) VALUES (:id, :delivering, :rid, :now, :exp, 1, :now)"
                " ON CONFLICT (order_id) DO UPDATE SET state = :delivering, request_id = :rid,"
                " started_at = :now, claim_expires_at = :exp, attempts = orders.attempts + 1,"
                f" updated_at = :now, reason = '' WHERE {_CLAIMABLE}",
                params,
            )
            if cur.rowcount == 1:
                return ClaimResult.CLAIMED
            conn.execute(
                "UPDATE orders SET duplicates = duplicates + 1 WHERE order_id = :id", params
            )
            state = conn.execute("SELECT state FROM orders WHERE order_id = :id", params).fetchone()
        if state and state[0] == OrderState.DELIVERED.value:
            return ClaimResult.ALREADY_DELIVERED
        return ClaimResult.IN_PROGRESS

    def release_claim(self, order_id: str, request_id: str, reason: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE orders SET state = :dispatched, claim_expires_at = NULL, reason = :reason,"
                " updated_at = :now WHERE order_id = :id AND state = :delivering"
                " AND request_id = :rid",
                {"reason": reason, "now": now, "id": order_id, "rid": request_id, **_STATES},
            )

    def complete_delivery(
        self, order_id: str, request_id: str, delay_s: float, started: float, finished: float
    ) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE orders SET state = :delivered, delay_s = :delay, started_at = :started,"
                " finished_at = :finished, claim_expires_at = NULL, updated_at = :finished"
                " WHERE order_id = :id AND state = :delivering AND request_id = :rid",
                {
                    "delay": delay_s,
                    "started": started,
                    "finished": finished,
                    "id": order_id,
                    "rid": request_id,
                    **_STATES,
                },
            )
            return cur.rowcount == 1

    def mark_failed(self, order_id: str, reason: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO orders (order_id, state, reason, finished_at, updated_at)"
                " VALUES (:id, :failed, :reason, :now, :now)"
                " ON CONFLICT (order_id) DO UPDATE SET state = :failed, reason = :reason,"
                f" finished_at = :now, updated_at = :now WHERE {_NOT_KEPT}",
                {"id": order_id, "reason": reason, "now": now, **_STATES},
            )

    def get_order(self, order_id: str) -> OrderRecord | None:
        rows = self._read(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = ?", (order_id,))
        return _order(rows[0]) if rows else None

    def orders(self, source: str | None = None) -> list[OrderRecord]:
        if source is None:
            rows = self._read(f"SELECT {_ORDER_COLUMNS} FROM orders ORDER BY order_id")
        else:
            rows = self._read(
                f"SELECT {_ORDER_COLUMNS} FROM orders WHERE source = ? ORDER BY order_id",
                (source,),
            )
        return [_order(row) for row in rows]

    def iter_orders(self, source: str | None = None) -> Iterator[OrderRecord]:
        """From one cursor, a page at a time (the source index when one file is asked)."""
        where, params = ("", ()) if source is None else (" WHERE source = ?", (source,))
        for rows in self._stream(f"SELECT {_ORDER_COLUMNS} FROM orders{where}", params):
            yield from map(_order, rows)

    def trip_events(self, source: str | None = None) -> Iterator[tuple[float, int]]:
        """Sorted by SQLite (its sorter spills to temporary files past its cache), streamed
        a page at a time."""
        trip = _TRIP + ("" if source is None else " AND source = :src")
        sql = (
            f"SELECT started_at, :start FROM orders WHERE {trip}"
            f" UNION ALL SELECT finished_at, :end FROM orders WHERE {trip} ORDER BY 1, 2"
        )
        params: dict[str, object] = {"start": START, "end": END, "src": source, **_STATES}
        for rows in self._stream(sql, params):
            yield from rows

    def counts(self, source: str | None = None) -> dict[OrderState, int]:
        """Read from the running counts, never from the orders."""
        result = dict.fromkeys(OrderState, 0)
        for state, _started, count in self._counts(source):
            result[OrderState(state)] += count
        return result

    def _counts(self, source: str | None) -> list[tuple[Any, ...]]:
        where, params = ("", ()) if source is None else (" WHERE source = ?", (source,))
        return self._read(
            f"SELECT state, started, SUM(n) FROM order_counts{where} GROUP BY state, started",
            params,
        )

    def activity(self, now: float, window_s: float, latest: int, source: str | None = None
                 ) -> Activity:  # fmt: skip
        """From the running figures and the state index: a few hundred rows at most,
        however many orders the ledger holds."""
        counts = dict.fromkeys(OrderState, 0)
        waiting = 0
        for state, started, count in self._counts(source):
            counts[OrderState(state)] += count
            if not started and OrderState(state) in WAITING_STATES:
                waiting += count
        by_source = "" if source is None else " AND source = :src"
        ((first, last),) = self._read(
            "SELECT MIN(first_queued_at), MAX(last_finished_at) FROM order_sources"
            + ("" if source is None else " WHERE source = :src"),
            {"src": source},
        )
        ((recent,),) = self._read(
            "SELECT coalesce(SUM(n), 0) FROM finished_per_second WHERE state = :delivered"
            f" AND second > :lo AND second <= :hi{by_source}",
            {"lo": second_of(now) - window_s, "hi": second_of(now), "src": source, **_STATES},
        )
        # An order's latest change is at its updated_at: the latest changes are among the
        # ``latest`` orders last updated in each state (one range of the state index each).
        recent_orders = [
            _order(row)
            for state in OrderState
            for row in self._read(
                f"SELECT {_ORDER_COLUMNS} FROM orders WHERE state = :state{by_source}"
                " ORDER BY updated_at DESC LIMIT :limit",
                {"state": state.value, "src": source, "limit": latest},
            )
        ]
        return Activity(counts, waiting, first, last, recent, latest_changes(recent_orders, latest))

    def in_state(self, state: OrderState) -> list[OrderRecord]:
        rows = self._read(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE state = ? ORDER BY updated_at",
            (state.value,),
        )
        return [_order(row) for row in rows]

    def stuck(self, states: Iterable[OrderState], older_than: float) -> list[OrderRecord]:
        wanted = [s.value for s in states]
        marks = ", ".join("?" for _ in wanted)
        rows = self._read(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE state IN ({marks}) AND updated_at < ?"
            " ORDER BY updated_at",
            (*wanted, older_than),
        )
        return [_order(row) for row in rows]

    def touch(self, order_ids: Sequence[str], now: float) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE orders SET updated_at = ? WHERE order_id = ?",
                [(now, order_id) for order_id in order_ids],
            )


#: each state by its stored value: a dict lookup costs a tenth of calling ``OrderState``,
#: which a pass over a million orders would call a million times
_STATE_OF_VALUE: dict[str, OrderState] = {state.value: state for state in OrderState}


def _order(row: tuple[Any, ...]) -> OrderRecord:
    state = _STATE_OF_VALUE.get(row[1])
    if state is None:
        state = OrderState(row[1])  # an unknown value: OrderState's own ValueError
    return OrderRecord(row[0], state, *row[2:])


def _file(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(row[0], row[1], row[2], FileState(row[3]), *row[4:])
