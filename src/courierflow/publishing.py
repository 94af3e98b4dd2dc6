"""Read an uploaded CSV object and publish its valid orders, exactly once per file version.

Domain code: knows S3, the queue and the ledger through the objects passed in, and
nothing about Lambda.

A file may need more than one invocation. The caller says how long it may still run
(``time_left``); under ``STOP_MARGIN_S`` the publisher stops after a ledger batch, lets
the broker confirm what it published, records a checkpoint in the file's ledger record
(data rows handled, counts so far) and raises ``PublishIncomplete``. The next attempt at
the same (bucket, key, etag), Lambda's asynchronous retry or the SQS redelivery, takes
the file over and resumes after the checkpoint's rows. An attempt that crashed wrote no
new checkpoint: the next resumes from the last one (or the first row), re-publishing
some orders, which the deliveries' claims and ``add_queued`` keep from being delivered
twice. It takes over at once when it is the same attempt (Lambda retries an event with
its request id), otherwise when the crashed attempt's lease, its deadline, has passed.

Rejects need no state of their own: they follow from the file. A resumed attempt reads
the rows before its checkpoint again without publishing them, which rewrites their
rejects into its report and keeps duplicate ids detected across the whole file; the
report written when the file is done holds every reject, whichever attempt finishes.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from courierflow.config import ReaderLimits
from courierflow.csvreader import check_object_size, read_orders
from courierflow.errors import LedgerError, PublishIncomplete, UnreadableFileError
from courierflow.ledger.base import FileRecord, FileState, Ledger
from courierflow.orders import Order, Reject
from courierflow.rejects import REJECTS_PREFIX, rejects_key, write_rejects
from courierflow.transports.base import OutgoingMessage, Transport

log = logging.getLogger(__name__)

#: orders recorded in the ledger per transaction while streaming
LEDGER_BATCH = 500
#: seconds left in the invocation under which the publisher stops at the end of a batch:
#: room for the broker's last confirms and the checkpoint (a batch takes well under 1 s)
STOP_MARGIN_S = 10.0
#: an attempt holds its file until its deadline and this long after, then another may
#: take over (the clocks of two invocations may differ a little)
LEASE_GRACE_S = 5.0
#: an attempt without a deadline holds its file this long before another may take over
STALE_FILE_S = 15 * 60


def no_deadline() -> float:
    """``time_left`` of a caller that may run as long as it needs."""
    return math.inf


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

    def process(
        self,
        bucket: str,
        key: str,
        etag: str = "",
        *,
        time_left: Callable[[], float] = no_deadline,
        attempt: str = "",
    ) -> FileSummary:
        """Publish the orders of ``s3://bucket/key`` unless this version was done before,
        or resume them after the checkpoint an earlier attempt left.

        Parameters:
            time_left: seconds this call may still run (Lambda's remaining time).
            attempt: names this attempt in the ledger; a retry of the same event passes
                the same name and takes the file over at once. A fresh one when empty.

        Raises:
            PublishIncomplete: time ran short; the progress is checkpointed and a retry
                resumes after it.
            TransportError: the queue could not take the orders; the file is let go
                with its last checkpoint so a retry of the notification resumes it.
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
        attempt = attempt or uuid.uuid4().hex
        start = self._begin(bucket, key, etag, attempt, time_left)
        if start is None:
            return FileSummary(source, "duplicate")
        summary = FileSummary(source, "done", published=start.published, skipped=start.skipped)
        run = _Run(time_left, resume_after=start.rows)
        try:
            self._publish_file(bucket, key, int(head.get("ContentLength", 0)), summary, run)
        except UnreadableFileError as exc:
            summary.status, summary.error = "refused", str(exc)
            log.error("refused %s: %s", source, exc, extra={"file": source})
        except BaseException:
            self._let_go(start, attempt)
            raise
        if run.stopped:
            self._stop(start, attempt, summary)
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

    def _begin(
        self, bucket: str, key: str, etag: str, attempt: str, time_left: Callable[[], float]
    ) -> FileRecord | None:
        """The checkpoint this attempt starts from (row 0 for a new file), or None when
        the file is done or another live attempt holds it."""
        now = self.clock()
        left = time_left()
        lease_until = now + (left + LEASE_GRACE_S if math.isfinite(left) else STALE_FILE_S)
        if self.ledger.begin_file(bucket, key, etag, now, attempt=attempt, lease_until=lease_until):
            return FileRecord(bucket, key, etag, FileState.PROCESSING, started_at=now)
        record = self.ledger.resume_file(
            bucket, key, etag, attempt=attempt, lease_until=lease_until, now=now
        )
        source = f"s3://{bucket}/{key}"
        if record is not None:
            log.warning(
                "resuming %s (etag %s) after row %d, %s",
                source,
                etag,
                record.rows,
                "its checkpoint" if record.checkpoint_at else "where a crashed attempt began",
                extra={"file": source},
            )
            return record
        current = self.ledger.get_file(bucket, key, etag)
        if current is not None and current.state is FileState.PROCESSING:
            log.info(
                "%s (etag %s) is being published by attempt %s: publishing nothing",
                source,
                etag,
                current.attempt,
                extra={"file": source},
            )
        else:
            log.info("already processed %s (etag %s): publishing nothing", source, etag)
        return None

    def _stop(self, start: FileRecord, attempt: str, summary: FileSummary) -> None:
        """Checkpoint what this attempt confirmed, let go of the file, and raise."""
        held = self.ledger.checkpoint_file(
            start.bucket,
            start.key,
            start.etag,
            attempt=attempt,
            rows=summary.rows,
            published=summary.published,
            rejected=summary.rejected,
            skipped=summary.skipped,
            now=self.clock(),
        )
        if not held:
            log.warning("%s was taken over by another attempt", summary.file)
        raise PublishIncomplete(
            f"{summary.file}: stopped for lack of time after {summary.rows} rows "
            f"({summary.published} published, {summary.rejected} rejected); "
            "a retry resumes after them"
        )

    def _let_go(self, start: FileRecord, attempt: str) -> None:
        """After a failure, give the file back with the checkpoint this attempt started
        from, so a retry resumes there at once."""
        try:
            self.ledger.checkpoint_file(
                start.bucket,
                start.key,
                start.etag,
                attempt=attempt,
                rows=start.rows,
                published=start.published,
                rejected=start.rejected,
                skipped=start.skipped,
                now=self.clock(),
            )
        except LedgerError:  # the lease runs out on its own; the original error matters
            log.warning("could not let go of %s", start.source, exc_info=True)

    def _publish_file(
        self, bucket: str, key: str, size: int, summary: FileSummary, run: _Run
    ) -> None:
        source = summary.file
        check_object_size(size, source, self.limits)
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        rows = read_orders(body, source, self.limits)  # refuses a non-CSV file here
        with tempfile.SpooledTemporaryFile(max_size=1024**2, mode="w+", newline="") as rejects:
            summary.published += self.transport.publish(self._messages(rows, rejects, summary, run))
            if summary.rejected and not run.stopped:
                summary.rejects_key = rejects_key(key)
                rejects.seek(0)
                self.s3.put_object(
                    Bucket=bucket,
                    Key=summary.rejects_key,
                    Body=rejects.read().encode(),
                    ContentType="text/csv",
                )

    def _messages(
        self, rows: Iterator[Order | Reject], rejects: IO[str], summary: FileSummary, run: _Run
    ) -> Iterator[OutgoingMessage]:
        """Messages for the valid rows after ``run.resume_after``, recorded in the ledger
        a batch at a time; rejects are written to ``rejects`` as they come, those before
        the checkpoint included. Ends early, with ``run.stopped``, when time runs short:
        every row counted in ``summary.rows`` is then handled once the messages yielded
        are confirmed."""
        batch: list[Order] = []
        for item in rows:
            summary.rows += 1
            resumed = summary.rows > run.resume_after
            if isinstance(item, Reject):
                write_rejects([item], rejects, header=summary.rejected == 0)
                summary.rejected += 1
                if resumed:  # logged once, by the attempt that reached it first
                    log.warning("%s line %d rejected: %s", summary.file, item.line, item.reason)
                continue
            if not resumed:
                continue  # published by an earlier attempt
            batch.append(item)
            if len(batch) >= LEDGER_BATCH:
                yield from self._record(batch, summary.file, summary)
                batch = []
                left = run.time_left()
                if left < STOP_MARGIN_S:
                    log.warning(
                        "%s: %.1f s left, stopping after row %d",
                        summary.file,
                        left,
                        summary.rows,
                        extra={"file": summary.file},
                    )
                    run.stopped = True
                    return
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


@dataclass
class _Run:
    """One attempt's progress through a file."""

    time_left: Callable[[], float]
    #: data rows an earlier attempt handled: read again, not published
    resume_after: int = 0
    #: set when the attempt stopped early for lack of time
    stopped: bool = False


def _aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return "no such key or bucket"
        return f"{code}: {err.get('Message', '')}".strip(": ")
    return str(exc)
