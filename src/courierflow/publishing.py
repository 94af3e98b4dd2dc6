"""Read an uploaded CSV object and publish its valid orders, exactly once per file version.

Domain code: knows S3, the queue and the ledger through the objects passed in, and
nothing about Lambda.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from courierflow.csvreader import ReaderLimits, read_orders
from courierflow.errors import UnreadableFileError
from courierflow.ledger.base import FileState, Ledger
from courierflow.orders import Order, Reject
from courierflow.rejects import REJECTS_PREFIX, rejects_key, write_rejects
from courierflow.transports.base import OutgoingMessage, Transport

log = logging.getLogger(__name__)

#: orders recorded in the ledger per transaction while streaming
LEDGER_BATCH = 500
#: a file left "processing" longer than this is taken to be from a crashed attempt
STALE_FILE_S = 15 * 60


@dataclass
class FileSummary:
    """What became of one uploaded object."""

    file: str
    status: str  # done | duplicate | refused | ignored
    rows: int = 0
    published: int = 0
    rejected: int = 0
    skipped: int = 0  # already delivered earlier: left alone
    error: str = ""
    rejects_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OrderPublisher:
    """Turns one S3 object into confirmed queue messages and a rejects report."""

    def __init__(
        self,
        s3: Any,
        transport: Transport,
        ledger: Ledger,
        limits: ReaderLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s3 = s3
        self.transport = transport
        self.ledger = ledger
        self.limits = limits or ReaderLimits()
        self.clock = clock

    def process(self, bucket: str, key: str, etag: str = "") -> FileSummary:
        """Publish the orders of ``s3://bucket/key`` unless this version was done before.

        Raises:
            TransportError: the queue could not take the orders; the file record is
                dropped so a retry of the notification processes it again.
        """
        source = f"s3://{bucket}/{key}"
        if key.startswith(REJECTS_PREFIX):
            return FileSummary(source, "ignored")
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = f"{source}: cannot read the object ({_aws_error(exc)})"
            log.error("refused %s: %s", source, error, extra={"file": source})
            return FileSummary(source, "refused", error=error)
        etag = etag or str(head.get("ETag", "")).strip('"')
        if not self._begin(bucket, key, etag):
            log.info("already processed %s (etag %s): publishing nothing", source, etag)
            return FileSummary(source, "duplicate")
        summary = FileSummary(source, "done")
        try:
            self._publish_file(bucket, key, int(head.get("ContentLength", 0)), summary)
        except UnreadableFileError as exc:
            summary.status, summary.error = "refused", str(exc)
            log.error("refused %s: %s", source, exc, extra={"file": source})
        except BaseException:
            self.ledger.forget_file(bucket, key, etag)
            raise
        state = FileState.REFUSED if summary.status == "refused" else FileState.DONE
        self.ledger.finish_file(
            bucket,
            key,
            etag,
            state,
            rows=summary.rows,
            published=summary.published,
            rejected=summary.rejected,
            skipped=summary.skipped,
            error=summary.error,
            now=self.clock(),
        )
        log.info(
            "%s: %d rows, %d published, %d rejected, %d already delivered",
            source,
            summary.rows,
            summary.published,
            summary.rejected,
            summary.skipped,
            extra={"file": source},
        )
        return summary

    def _begin(self, bucket: str, key: str, etag: str) -> bool:
        now = self.clock()
        if self.ledger.begin_file(bucket, key, etag, now):
            return True
        record = self.ledger.get_file(bucket, key, etag)
        stale = (
            record is not None
            and record.state == FileState.PROCESSING
            and (record.started_at or 0) < now - STALE_FILE_S
        )
        if stale:
            log.warning(
                "s3://%s/%s was left half-done by a crashed attempt; redoing it", bucket, key
            )
            self.ledger.forget_file(bucket, key, etag)
            return self.ledger.begin_file(bucket, key, etag, now)
        return False

    def _publish_file(self, bucket: str, key: str, size: int, summary: FileSummary) -> None:
        source = summary.file
        if size > self.limits.max_object_bytes:
            raise UnreadableFileError(
                f"{source} is {size} bytes, over the limit of {self.limits.max_object_bytes}; "
                "split the file or raise COURIERFLOW_MAX_OBJECT_BYTES"
            )
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        rows = read_orders(body, source, self.limits)  # refuses a non-CSV file here
        with tempfile.SpooledTemporaryFile(max_size=1024**2, mode="w+", newline="") as rejects:
            summary.published = self.transport.publish(self._messages(rows, rejects, summary))
            if summary.rejected:
                summary.rejects_key = rejects_key(key)
                rejects.seek(0)
                self.s3.put_object(
                    Bucket=bucket,
                    Key=summary.rejects_key,
                    Body=rejects.read().encode(),
                    ContentType="text/csv",
                )

    def _messages(
        self, rows: Iterator[Order | Reject], rejects: IO[str], summary: FileSummary
    ) -> Iterator[OutgoingMessage]:
        """Messages for the valid rows, recorded in the ledger a batch at a time;
        rejects are written to ``rejects`` as they come."""
        batch: list[Order] = []
        for item in rows:
            summary.rows += 1
            if isinstance(item, Reject):
                write_rejects([item], rejects, header=summary.rejected == 0)
                summary.rejected += 1
                log.warning("%s line %d rejected: %s", summary.file, item.line, item.reason)
                continue
            batch.append(item)
            if len(batch) >= LEDGER_BATCH:
                yield from self._record(batch, summary.file, summary)
                batch = []
        yield from self._record(batch, summary.file, summary)

    def _record(
        self, batch: list[Order], source: str, summary: FileSummary
    ) -> Iterator[OutgoingMessage]:
        if not batch:
            return
        fresh = set(self.ledger.add_queued([o.order_id for o in batch], source, self.clock()))
        for order in batch:
            if order.order_id not in fresh:
                summary.skipped += 1
                log.info("order already delivered; left alone", extra={"order_id": order.order_id})
                continue
            yield OutgoingMessage(order.to_json(), order.order_id, f"order:{order.order_id}")


def _aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return "no such key or bucket"
        return f"{code}: {err.get('Message', '')}".strip(": ")
    return str(exc)
