"""One publishing run in a fresh process: courierflow's publisher on one S3 object.

Prints one JSON line: published, seconds, peak RSS. Used by bench/publish.py so the
publisher's memory is measured alone."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import boto3

from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.publishing import OrderPublisher
from courierflow.transports.rabbitmq import RabbitMQTransport


def main() -> None:
    amqp_url, queue, bucket, key, ledger_path = sys.argv[1:6]
    publisher = OrderPublisher(
        s3=boto3.client("s3"),
        transport=RabbitMQTransport(amqp_url, queue),
        ledger=SQLiteLedger(Path(ledger_path)),
    )
    started = time.perf_counter()
    summary = publisher.process(bucket, key)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"published": summary.published, "seconds": seconds, "rss_mb": peak}))


if __name__ == "__main__":
    main()
