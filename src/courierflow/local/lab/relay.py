"""The last hop of an upload's notification: SQS -> the publisher, as S3 invokes it.

moto delivers S3 notifications to SQS only, and the local Lambda service's SQS event
source would hand the publisher an SQS event wrapping the S3 event. Lab code reads
``event['Records'][0]['s3']``, as S3's direct trigger gives it, so this relay polls the
queue and invokes the publisher asynchronously (``InvocationType='Event'``) with each S3
event itself. It runs as a child process (``python -m courierflow.local.lab.relay``)
so that ``courierflow lab --keep`` leaves it running with the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("courierflow.lab.relay")

#: seconds of one long poll of the notification queue
POLL_WAIT_S = 1
#: seconds before trying again after the queue or the Lambda service did not answer
RETRY_AFTER_S = 1.0


def s3_event(body: str) -> dict[str, Any] | None:
    """The S3 event a notification message carries; None for S3's test event or junk."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("Records"), list):
        return None  # s3:TestEvent, sent when the notification is configured
    records = [r for r in doc["Records"] if isinstance(r, dict) and "s3" in r]
    return {**doc, "Records": records} if records else None


def relay(queue_url: str, function: str, stop: list[bool]) -> None:
    """Poll ``queue_url`` and invoke ``function`` once per S3 event until ``stop[0]``."""
    sqs: Any = boto3.client("sqs")
    awslambda: Any = boto3.client("lambda")
    while not stop[0]:
        try:
            found = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=POLL_WAIT_S
            )
            for message in found.get("Messages", []):
                event = s3_event(message["Body"])
                if event is not None:
                    answer = awslambda.invoke(
                        FunctionName=function,
                        InvocationType="Event",
                        Payload=json.dumps(event).encode(),
                    )
                    keys = [r["s3"]["object"]["key"] for r in event["Records"]]
                    log.info("invoked %s for %s: %s", function, keys, answer["StatusCode"])
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (BotoCoreError, ClientError):
            log.warning("relay to %s failed; trying again", function, exc_info=True)
            time.sleep(RETRY_AFTER_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--function", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stop = [False]

    def _stop(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    relay(args.queue_url, args.function, stop)


if __name__ == "__main__":
    main()
