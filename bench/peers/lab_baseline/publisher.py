"""The lab's order publisher, as the slides describe it: read the whole object, one
``basic_publish`` per row on a ``BlockingConnection`` (optionally with publisher
confirms, which makes every publish wait for the broker).

Run: python -m bench.peers.lab_baseline.publisher AMQP_URL QUEUE BUCKET KEY [--confirm]
"""

from __future__ import annotations

import csv
import json
import resource
import sys
import time

import boto3
import pika


def main() -> None:
    amqp_url, queue, bucket, key = sys.argv[1:5]
    confirm = "--confirm" in sys.argv
    started = time.perf_counter()
    s3 = boto3.client("s3")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    rows = csv.DictReader(body.splitlines())
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    if confirm:
        channel.confirm_delivery()
    count = 0
    for row in rows:
        channel.basic_publish(exchange="", routing_key=queue, body=json.dumps(row))
        count += 1
    connection.close()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"published": count, "seconds": seconds, "rss_mb": peak}))


if __name__ == "__main__":
    main()
