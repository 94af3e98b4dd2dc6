"""Handlers the local Lambda service tests run; written the plain way, as on AWS."""

import json
import os
import random
import sys
import time

import boto3

s3 = boto3.client("s3")  # module-level client, created once per environment
CALLS = {"count": 0}


def echo(event, context):
    CALLS["count"] += 1
    print("echo", json.dumps(event))
    return {
        "event": event,
        "calls": CALLS["count"],
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {
            k: os.environ.get(k)
            for k in (
                "AWS_LAMBDA_FUNCTION_NAME",
                "AWS_REGION",
                "AWS_LAMBDA_FUNCTION_TIMEOUT",
                "GREETING",
            )
        },
    }


def fail(event, context):
    raise ValueError(f"cannot deliver {event.get('order_id')}")


def sleepy(event, context):
    time.sleep(float(event.get("seconds", 0.5)))
    return {"slept": event.get("seconds", 0.5)}


def lab_delivery(event, context):
    delay = random.randint(2, 10)
    time.sleep(delay * float(os.environ.get("SCALE", "0.01")))
    print(f"Order {event['order_id']} delivered in {delay} seconds")
    return {"order_id": event["order_id"], "delay": delay}


def exits(event, context):
    sys.exit(4)


def dies(event, context):
    os._exit(9)


def chatty(event, context):
    for i in range(20000):
        print(f"line {i} " + "x" * 100)
    return "done"


def flaky(event, context):
    """Fails the first two attempts of an event, then succeeds (counts in a file)."""
    path = os.environ["FLAKY_FILE"]
    with open(path, "a") as out:
        out.write(context.aws_request_id + "\n")
    with open(path) as seen:
        attempts = sum(1 for line in seen if line.strip() == context.aws_request_id)
    if attempts < 3:
        raise RuntimeError(f"attempt {attempts} fails")
    return {"attempts": attempts}


def sqs_overlap(event, context):
    """Holds each batch 0.5 s, noting when it began and ended (in OVERLAP_FILE)."""
    with open(os.environ["OVERLAP_FILE"], "a") as out:
        out.write(f"start {time.time()}\n")
    time.sleep(0.5)
    with open(os.environ["OVERLAP_FILE"], "a") as out:
        out.write(f"end {time.time()}\n")
    return {"batchItemFailures": []}


def sqs_batch(event, context):
    failures = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        print("got", body)
        if body.get("bad"):
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


LEAKED = []


def leaky(event, context):
    """Keeps allocating until memory runs out (a runaway handler)."""
    while True:
        LEAKED.append(bytearray(16 * 1024 * 1024))


def logs_with_logging(event, context):
    import logging

    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("orders").info("order %s accepted", event.get("order_id"))
    return {"ok": True}


def big_response(event, context):
    return "x" * (7 * 1024 * 1024)


def environment(event, context):
    return dict(os.environ)
