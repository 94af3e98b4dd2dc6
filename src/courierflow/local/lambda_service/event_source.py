"""SQS event source mapping: long-poll a queue, invoke the function with batches.

As Lambda does: successes are deleted; with ``report_batch_item_failures`` only the
messages the function names in ``batchItemFailures`` stay; a function error leaves the
whole batch to the queue's visibility timeout and redrive policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from courierflow.local.lambda_service.config import REGION
from courierflow.local.lambda_service.environments import EnvironmentDied
from courierflow.local.lambda_service.invocations import Function
from courierflow.local.lambda_service.queue_clients import client_for_queue

log = logging.getLogger(__name__)

#: long-poll wait per receive, seconds
WAIT_TIME_S = 5
#: receive loops per mapping at most (each waits on the queue and then on the function)
MAX_RECEIVERS = 64


def sqs_event(queue_arn: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Lambda's SQS event for a batch of received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {
                    k: {
                        "stringValue": v.get("StringValue"),
                        "binaryValue": v.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": v.get("DataType"),
                    }
                    for k, v in (m.get("MessageAttributes") or {}).items()
                },
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


class SqsPoller:
    """Feeds one function from one queue until cancelled."""

    def __init__(self, function: Function, queue_url: str) -> None:
        self.function = function
        self.queue_url = queue_url
        self.sqs: Any = client_for_queue(queue_url, MAX_RECEIVERS)
        self.batches = 0

    async def run(self) -> None:
        """Poll with several concurrent receivers (Lambda scales its pollers with load),
        each invoking one batch at a time: at most the mapping's maximum concurrency."""
        loop = asyncio.get_running_loop()
        arn = await loop.run_in_executor(None, self._queue_arn)
        config = self.function.config
        receivers = max(1, min(MAX_RECEIVERS, config.concurrency))
        if config.sqs_max_concurrency:
            receivers = min(receivers, config.sqs_max_concurrency)
        await asyncio.gather(*(self._poll(arn) for _ in range(receivers)))

    async def _poll(self, arn: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                messages = await loop.run_in_executor(None, self._receive)
            except (ClientError, BotoCoreError) as exc:
                log.warning("polling %s failed: %s; retrying", self.queue_url, exc)
                await asyncio.sleep(2)
                continue
            if messages:
                await self._invoke(arn, messages)

    def _queue_arn(self) -> str:
        while True:
            try:
                attrs = self.sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
                )
                return str(attrs["Attributes"]["QueueArn"])
            except (ClientError, BotoCoreError) as exc:
                log.warning("queue %s not reachable yet: %s", self.queue_url, exc)
                time.sleep(2)

    def _receive(self) -> list[dict[str, Any]]:
        config = self.function.config
        wanted = config.sqs_batch_size
        deadline = time.monotonic() + config.sqs_batching_window
        batch: list[dict[str, Any]] = []
        while len(batch) < wanted:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, wanted - len(batch)),
                WaitTimeSeconds=0 if batch else WAIT_TIME_S,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = got.get("Messages") or []
            batch += messages
            if not messages or time.monotonic() >= deadline:
                break
        return batch

    async def _invoke(self, arn: str, messages: list[dict[str, Any]]) -> None:
        fn = self.function
        await fn.account.acquire()  # the account's concurrency, as for any execution
        try:
            env = await fn.pool.acquire(wait=True)
        except EnvironmentDied as exc:
            fn.account.release()
            log.warning(
                "no environment for a batch of %d (%s); left to the visibility timeout",
                len(messages),
                exc,
            )
            await asyncio.sleep(1)
            return
        except BaseException:
            fn.account.release()
            raise
        assert env is not None
        payload = json.dumps(sqs_event(arn, messages)).encode()
        try:
            outcome = await fn.run(env, payload, str(uuid.uuid4()))
        finally:
            fn.account.release()
        self.batches += 1
        if not outcome.ok:
            log.warning(
                "function error on a batch of %d; left to the visibility timeout", len(messages)
            )
            return
        failed: set[str] = set()
        if fn.config.report_batch_item_failures:
            try:
                result = json.loads(outcome.body) or {}
                items = result.get("batchItemFailures") or [] if isinstance(result, dict) else []
                failed = {str(item["itemIdentifier"]) for item in items}
            except (ValueError, KeyError, TypeError):
                log.warning("malformed batchItemFailures: the whole batch counts as failed")
                return
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
            ]
            await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries),
            )
