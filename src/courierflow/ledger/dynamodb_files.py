"""The DynamoDB ledger's file records: items ``FILE#<bucket>/<key>#<etag>``, each change
a conditional write (the publisher's idempotent ingestion)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from courierflow.ledger.base import FileRecord, FileState
from courierflow.ledger.dynamodb_table import Table

NOT_EXISTS = "attribute_not_exists(pk)"
PROCESSING = "#s = :processing"
#: nobody holds the file, its holder's lease ended, or the holder is this attempt
RESUMABLE = f"{PROCESSING} AND (attribute_not_exists(lease_until) OR lease_until < :now OR " \
    "(attempt = :attempt AND :attempt <> :empty))"  # fmt: skip
FILE_HELD = f"{PROCESSING} AND attempt = :attempt"


class DynamoDBFiles:
    """The file half of ``DynamoDBLedger``, on its conditional updates."""

    @property
    @abstractmethod
    def _items(self) -> Table: ...

    @abstractmethod
    def _change(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
                names: dict[str, str] | None = None,
                returning: str = "ALL_OLD") -> dict[str, Any] | None: ...  # fmt: skip

    def _update(self, key: str, expression: str, condition: str | None, values: dict[str, Any],
                names: dict[str, str] | None = None) -> bool:  # fmt: skip
        """One conditional update; False when the condition did not hold."""
        return self._change(key, expression, condition, values, names, "NONE") is not None

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
        item = self._change(
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
            FILE_HELD,
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
        self._items.delete(self._file_key(bucket, key, etag))

    def get_file(self, bucket: str, key: str, etag: str | None = None) -> FileRecord | None:
        if etag is not None:
            item = self._items.get(self._file_key(bucket, key, etag))
            items = [item] if item else []
        else:
            items = list(self._items.scan(f"FILE#{bucket}/{key}#"))
        if not items:
            return None
        return _file(max(items, key=lambda i: i.get("started_at") or 0))


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
