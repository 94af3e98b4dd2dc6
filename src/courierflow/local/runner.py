"""Run a file on this machine: upload it to a running stack (or one started for the run),
follow its orders through the ledger until they finish, and gather what a report needs.
``follow_file`` follows a file uploaded anywhere, AWS included."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from courierflow.config import Settings
from courierflow.errors import StackError
from courierflow.ledger.base import FileRecord, FileState, Ledger, open_ledger
from courierflow.local import stack
from courierflow.local.stack import StackInfo, StackOptions, local_client
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary, summarize_ledger

log = logging.getLogger(__name__)

#: seconds between looks at the ledger while following a run
POLL_S = 0.5
#: seconds without change, the file published, before the orders themselves are read to
#: see whether every one has finished. The running counts can be off: on DynamoDB a
#: process killed between an order's write and its count's (a Lambda timeout) leaves
#: them so, and a run that had finished then waited out the whole stall timeout
RECOUNT_AFTER_S = 10.0


@dataclass
class Progress:
    """A snapshot while a run is under way."""

    file: FileRecord | None
    counts: dict[OrderState, int]
    elapsed_s: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return self.counts[OrderState.DELIVERED] + self.counts[OrderState.FAILED]


def upload(info: StackInfo, path: Path, key: str | None = None) -> tuple[str, str]:
    """Put ``path`` in the stack's bucket; returns (key, etag)."""
    if not path.is_file():
        raise StackError(f"{path}: no such file")
    s3 = local_client("s3", info.moto_url)
    key = key or path.name
    with open(path, "rb") as body:
        etag = s3.put_object(Bucket=info.bucket, Key=key, Body=body)["ETag"].strip('"')
    return key, etag


def _every_order_finished(ledger: Ledger, source: str) -> bool:
    """Whether every order of ``source`` is delivered or failed, read from the orders
    (stops at the first that is not)."""
    done = (OrderState.DELIVERED, OrderState.FAILED)
    return all(record.state in done for record in ledger.iter_orders(source))


def follow(
    ledger: Ledger,
    bucket: str,
    key: str,
    etag: str,
    started_at: float,
    stall_timeout_s: float,
    on_progress: Callable[[Progress], None] = lambda _p: None,
) -> RunSummary:
    """Wait until every order of the file is delivered or failed, or nothing moved for
    ``stall_timeout_s`` (what is left then is reported lost). Each poll reads the
    ledger's running counts; the summary streams the orders once at the end."""
    source = f"s3://{bucket}/{key}"
    last_change = time.monotonic()
    last_seen: tuple[object, ...] = ()
    recounted = False  # in this spell without change
    while True:
        file = ledger.get_file(bucket, key, etag)
        counts = ledger.counts(source)
        progress = Progress(file, counts, time.time() - started_at)
        on_progress(progress)
        seen = (file.state if file else None, tuple(counts.values()))
        if seen != last_seen:
            last_seen, last_change, recounted = seen, time.monotonic(), False
        file_done = file is not None and file.state is not FileState.PROCESSING
        if file_done and progress.finished == progress.total:
            break
        quiet = time.monotonic() - last_change
        if file_done and not recounted and quiet > RECOUNT_AFTER_S:
            recounted = True
            if _every_order_finished(ledger, source):
                log.warning(
                    "the ledger's running counts of %s say %d of %d orders finished, its "
                    "orders say all: the summary is read from the orders",
                    source,
                    progress.finished,
                    progress.total,
                )
                break
        if quiet > stall_timeout_s:
            break
        time.sleep(POLL_S)
    return summarize_ledger(ledger, ledger.get_file(bucket, key, etag), source, started_at)


def _unwatched(_progress: Progress) -> None:
    """No one is watching the progress."""


@dataclass
class FollowedRun:
    """A file followed to the end."""

    summary: RunSummary
    #: (line, reason) of each row the publisher rejected, from its rejects file (None:
    #: that file could not be read)
    rejects: list[tuple[int, str]] | None
    #: report.html, when one was written
    report: Path | None = None


def follow_file(
    ledger: Ledger,
    bucket: str,
    key: str,
    etag: str,
    started_at: float,
    stall_timeout_s: float,
    settings: Settings | None = None,
    on_progress: Callable[[Progress], None] = _unwatched,
) -> FollowedRun:
    """:func:`follow` one uploaded file, then read its rejected rows from the bucket
    (reached as ``settings`` say; by default as boto3 resolves it)."""
    from courierflow.report.run import fetch_rejects  # the report's modules load on use

    summary = follow(ledger, bucket, key, etag, started_at, stall_timeout_s, on_progress)
    rejects = fetch_rejects(summary.file, settings) if summary.file and summary.rejected else []
    return FollowedRun(summary, rejects)


def submit_file(
    info: StackInfo,
    path: Path,
    started_at: float,
    stall_timeout_s: float,
    base: Settings,
    on_progress: Callable[[Progress], None] = _unwatched,
) -> FollowedRun:
    """Upload ``path`` to the running stack ``info`` and follow its orders to the end."""
    settings = info.settings(base)
    ledger = open_ledger(settings.ledger_url)
    try:
        key, etag = upload(info, path)
        return follow_file(
            ledger, info.bucket, key, etag, started_at, stall_timeout_s, settings, on_progress
        )
    finally:
        ledger.close()


def run_file(
    base: Settings,
    path: Path,
    options: StackOptions,
    stall_timeout_s: float,
    *,
    keep_up: bool = False,
    report_html: Path | None = None,
    plot: Path | None = None,
    starting: Callable[[], AbstractContextManager[object]] = nullcontext,
    on_progress: Callable[[Progress], None] = _unwatched,
) -> FollowedRun:
    """Run ``path`` through the stack running from ``base.home``, or through one started
    with ``options`` (``starting()`` wraps its start) and stopped afterwards unless
    ``keep_up``; then write report.html (``report_html``, default under the home) and
    the timeline PNG when ``plot`` names one. Rejected rows are read while the stack's
    bucket is still up."""
    info = stack.load(base.home)
    started_here = info is None or not info.alive()
    if info is None or started_here:
        with starting():
            info = stack.up(base, options)
    try:
        started_at = time.time()
        run = submit_file(info, path, started_at, stall_timeout_s, base, on_progress)
        if run.summary.file:  # the publisher recorded the file
            from courierflow.report.run import write_run_report

            ledger = open_ledger(info.settings(base).ledger_url)
            try:
                out = report_html or base.home / "report.html"
                source = run.summary.file
                run.report = write_run_report(
                    ledger, out, source, started_at, plot, run.rejects, summary=run.summary,
                    rejects_tried=True,  # submit_file read them, or found them unreadable
                )  # fmt: skip
            finally:
                ledger.close()
    finally:
        if started_here and not keep_up:
            stack.down(base.home)
    return run
