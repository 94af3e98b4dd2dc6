"""`lambda_order_publisher`: an S3 upload notification in, the file's orders on the queue.

Takes the S3 event directly (the S3 trigger on AWS) or wrapped in SQS records (S3 -> SQS
-> function, the local path and an AWS option). Deployable as it is:
``courierflow.functions.publisher.lambda_handler``.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config

from courierflow.config import Settings
from courierflow.csvreader import ReaderLimits
from courierflow.errors import CourierflowError
from courierflow.functions.events import s3_objects
from courierflow.ledger.base import open_ledger
from courierflow.logs import setup_logging
from courierflow.publishing import OrderPublisher
from courierflow.transports.base import open_transport

setup_logging()
log = logging.getLogger("courierflow.publisher")

# Cold start: clients are built once per environment and reused while it is warm.
# Nothing here connects yet; connections open on first use.
_settings = Settings.from_env().with_secrets()
_publisher = OrderPublisher(
    s3=boto3.client(
        "s3", region_name=_settings.region, config=Config(retries={"mode": "standard"})
    ),
    transport=open_transport(_settings.queue_url, _settings.queue),
    ledger=open_ledger(_settings.ledger_url),
    limits=ReaderLimits.from_env(),
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Publish the orders of every object the event names; return a summary per file.

    Via SQS, a file whose queue could not take its orders is reported in
    ``batchItemFailures`` so only that notification is retried; given directly, the
    error is raised and Lambda's asynchronous retries take over.
    """
    files: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for ref in s3_objects(event):
        try:
            files.append(_publisher.process(ref.bucket, ref.key, ref.etag).to_dict())
        except CourierflowError as exc:
            log.exception("s3://%s/%s not published: %s", ref.bucket, ref.key, exc)
            if not ref.message_id:
                raise
            failures.append({"itemIdentifier": ref.message_id})
    return {"files": files, "batchItemFailures": failures}
