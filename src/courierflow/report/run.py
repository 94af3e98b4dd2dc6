"""One run's report from where its facts live: the ledger, and the rejects report in S3.

The same calls serve the local stack (boto3 pointed at moto by the stack's endpoint
variables) and AWS (DynamoDB ledger, the real bucket).
"""

from __future__ import annotations

import logging
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from courierflow.config import Settings
from courierflow.errors import ConfigError
from courierflow.ledger.base import Ledger, split_source
from courierflow.rejects import rejects_key
from courierflow.report.html import plot_timeline, read_rejects, write_report
from courierflow.report.summary import RunSummary

log = logging.getLogger(__name__)


def latest_source(ledger: Ledger) -> str:
    """The ``s3://bucket/key`` of the file whose orders were queued last."""
    latest: tuple[float, str] | None = None
    for record in ledger.iter_orders():
        if record.source and (latest is None or (record.queued_at or 0.0) > latest[0]):
            latest = (record.queued_at or 0.0, record.source)
    if latest is None:
        raise ConfigError("the ledger holds no orders yet: run a file first (`courierflow run`)")
    return latest[1]


def fetch_rejects(source: str, settings: Settings | None = None) -> list[tuple[int, str]] | None:
    """(line, reason) of the rows the publisher rejected from ``source``: empty when the
    file had none, None when its rejects report cannot be read (the local stack's bucket
    is gone once the stack is down; or no access). The bucket is reached as ``settings``
    say (the local stack's S3), else as boto3 resolves it."""
    bucket, key = split_source(source)
    where = f"s3://{bucket}/{rejects_key(key)}"
    patience = Config(connect_timeout=3, retries={"max_attempts": 2})
    try:
        if settings is None:
            s3 = boto3.client("s3", config=patience)
        else:
            s3 = settings.aws_client("s3", config=patience)
        body = s3.get_object(Bucket=bucket, Key=rejects_key(key))["Body"]
        return read_rejects(body.read().decode("utf-8", errors="replace"))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return []
        why = str(exc)
    except BotoCoreError as exc:
        why = str(exc)
    log.warning(
        "the rejected rows are not listed: %s cannot be read (%s). A local stack's bucket "
        "lives only while the stack is up: write the report before `courierflow down`",
        where,
        why,
    )
    return None


def _rejected_any(ledger: Ledger, source: str) -> bool:
    """Whether the publisher rejected rows of ``source`` (True when the ledger does not
    say: the file's record is missing)."""
    bucket, key = split_source(source)
    record = ledger.get_file(bucket, key)
    return record is None or record.rejected > 0


def write_run_report(
    ledger: Ledger,
    out: Path,
    source: str | None = None,
    started_at: float | None = None,
    plot: Path | None = None,
    rejects: list[tuple[int, str]] | None = None,
    settings: Settings | None = None,
    summary: RunSummary | None = None,
    rejects_tried: bool = False,
) -> Path:
    """Write ``report.html`` (and the timeline PNG when ``plot`` is given) for ``source``,
    by default the latest file in the ledger; returns the report's path. ``rejects``
    are fetched from the bucket (reached as ``settings`` say) unless given, or unless
    ``rejects_tried`` says the caller tried and could not read them (the page says so
    when they cannot be read); ``summary``
    is computed from the ledger unless given (a run passes the one it printed).

    The page streams the ledger's records; the PNG draws one bar per delivery, so it
    reads them all at once."""
    source = source or latest_source(ledger)
    if rejects is None and not rejects_tried and _rejected_any(ledger, source):
        rejects = fetch_rejects(source, settings)
    elif rejects is None and not rejects_tried:
        rejects = []
    write_report(ledger, source, started_at, out, rejects, summary)
    if plot is not None:
        plot_timeline(ledger.orders(source), plot, started_at)
    return out
