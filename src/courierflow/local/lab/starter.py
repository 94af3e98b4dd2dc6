"""`courierflow lab --init DIR`: a minimal starter trio in the lab's own plain style.

Plain pika and boto3, nothing of courierflow's; the broker's address and login come from
RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_USER and RABBITMQ_PASSWORD with a stock install's
defaults, so the same files run here and on AWS.
"""

from __future__ import annotations

from pathlib import Path

from courierflow.errors import ConfigError

PUBLISHER = """\
import csv
import json
import os

import boto3
import pika

s3 = boto3.client("s3")


def lambda_handler(event, context):
    record = event["Records"][0]["s3"]
    bucket = record["bucket"]["name"]
    key = record["object"]["key"]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")

    credentials = pika.PlainCredentials(
        os.environ.get("RABBITMQ_USER", "guest"), os.environ.get("RABBITMQ_PASSWORD", "guest")
    )
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host=os.environ.get("RABBITMQ_HOST", "localhost"),
            port=int(os.environ.get("RABBITMQ_PORT", "5672")),
            credentials=credentials,
        )
    )
    channel = connection.channel()
    channel.queue_declare(queue="orders", durable=True)

    count = 0
    for row in csv.DictReader(body.splitlines()):
        channel.basic_publish(exchange="", routing_key="orders", body=json.dumps(row))
        count += 1
    connection.close()
    print(f"published {count} orders from s3://{bucket}/{key}")
    return {"statusCode": 200, "body": f"published {count} orders"}
"""

DELIVERY = """\
import json
import random
import time


def lambda_handler(event, context):
    delay = random.randint(2, 10)
    time.sleep(delay)
    print(f"delivered order {event.get('order_id')} in {delay} s")
    return {"statusCode": 200, "body": json.dumps({"order_id": event.get("order_id")})}
"""

MANAGER = """\
import os

import boto3
import pika

lambda_client = boto3.client("lambda", region_name="us-east-1")


def on_message(channel, method, properties, body):
    lambda_client.invoke(
        FunctionName="lambda_delivery", InvocationType="Event", Payload=body
    )
    channel.basic_ack(delivery_tag=method.delivery_tag)
    print("dispatched", body.decode())


credentials = pika.PlainCredentials(
    os.environ.get("RABBITMQ_USER", "guest"), os.environ.get("RABBITMQ_PASSWORD", "guest")
)
connection = pika.BlockingConnection(
    pika.ConnectionParameters(
        host=os.environ.get("RABBITMQ_HOST", "localhost"),
        port=int(os.environ.get("RABBITMQ_PORT", "5672")),
        credentials=credentials,
    )
)
channel = connection.channel()
channel.queue_declare(queue="orders", durable=True)
channel.basic_consume(queue="orders", on_message_callback=on_message)
print("waiting for orders")
channel.start_consuming()
"""

#: file name -> text of the starter trio
FILES = {
    "lambda_order_publisher.py": PUBLISHER,
    "lambda_delivery.py": DELIVERY,
    "manager.py": MANAGER,
}


def write_starter(directory: Path) -> list[Path]:
    """Write the trio into ``directory`` (created if needed); never over a file.

    Raises:
        ConfigError: one of the files already exists.
    """
    existing = [name for name in FILES if (directory / name).exists()]
    if existing:
        raise ConfigError(f"{directory} already has {', '.join(existing)}: not overwriting")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in FILES.items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
