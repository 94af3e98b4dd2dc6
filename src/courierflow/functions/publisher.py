"""`lambda_order_publisher`: an S3 upload notification in, the file's orders on the queue.

Takes the S3 event directly (the S3 trigger on AWS) or wrapped in SQS records (S3 -> SQS
-> function, the local path and an AWS option). Deployable as it is:
``courierflow.functions.publisher.lambda_handler``.

Give the function a long timeout (the SAM template sets Lambda's maximum, 900 s). A file
that does not fit in one invocation stops 10 s before the deadline at a checkpoint in
the ledger and raises ``PublishIncomplete``; the retry, Lambda's asynchronous retry
(MaximumRetryAttempts 2: three invocations in all) or the SQS redelivery, resumes after
it. The function cannot invoke itself (no Lambda endpoint from the VPC): a file that
needs more invocations than the retries give stays "processing" with its checkpoint,
and the same notification delivered again (replayed from the on-failure destination or
the dead-letter queue) resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from courierflow import logs, metrics
from courierflow.config import LogSettings, ReaderLimits, Settings, xray_trace_id
from courierflow.errors import CourierflowError, PublishIncomplete
from courierflow.functions.events import s3_objects
from courierflow.ledger.base import open_ledger
from courierflow.metrics import Metric, Unit
from courierflow.publishing import FileSummary, OrderPublisher, no_deadline
from courierflow.transports.base import open_transport

#: file outcomes that are no new file: our own rejects report, a repeated notification
UNCOUNTED = ("ignored", "duplicate")

_log_settings = LogSettings.from_env()
logs.setup_logging(_log_settings)
log = logging.getLogger("courierflow.publisher")

# Cold start: clients are built once per environment and reused while it is warm.
# Nothing here connects yet; connections open on first use.
_settings = Settings.from_env().with_secrets()
_publisher = OrderPublisher(
    s3=boto3.client(
        "s3", region_name=_settings.region, config=Config(retries={"mode": "standard"})
    ),
    transport=open_transport(_settings.queue_url, _settings.queue, _settings.region),
    ledger=open_ledger(_settings.ledger_url, _settings.region),
    limits=ReaderLimits.from_env(),
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Publish the orders of every object the event names; return a summary per file.

    Via SQS, a file whose queue could not take its orders is reported in
    ``batchItemFailures`` so only that notification is retried; given directly, the
    error is raised and Lambda's asynchronous retries take over.
    """
    logs.inject_context(context, xray_trace_id())
    files: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    time_left = _time_left(context)
    request_id = str(getattr(context, "aws_request_id", ""))
    for ref in s3_objects(event):
        # Lambda retries an event with its request id; SQS redelivers a message with its id
        attempt = ref.message_id or request_id
        try:
            summary = _publisher.process(
                ref.bucket, ref.key, ref.etag, time_left=time_left, attempt=attempt
            )
            files.append(summary.to_dict())
            if summary.status not in UNCOUNTED:
                _emit_file_metrics(summary)
        except CourierflowError as exc:
            if isinstance(exc, PublishIncomplete):
                log.warning("%s", exc)
            else:
                log.exception("s3://%s/%s not published: %s", ref.bucket, ref.key, exc)
            if not ref.message_id:
                raise
            failures.append({"itemIdentifier": ref.message_id})
    return {"files": files, "batchItemFailures": failures}


def _emit_file_metrics(summary: FileSummary) -> None:
    """The file's summary as CloudWatch metrics (EMF), once per file: from the attempt
    that finished it (an attempt stopped at a checkpoint reports nothing)."""
    metrics.emit(
        {
            Metric.ORDERS_PUBLISHED: (summary.published, Unit.COUNT),
            Metric.ORDERS_REJECTED: (summary.rejected, Unit.COUNT),
        },
        {"service": _log_settings.service},
        properties={"file": summary.file, "status": summary.status},
    )


def _time_left(context: Any) -> Callable[[], float]:
    """Seconds left in this invocation, from Lambda's context."""
    if context is None:  # called outside Lambda
        return no_deadline
    return lambda: context.get_remaining_time_in_millis() / 1000
