"""The lab's manager: consume one message at a time, invoke the delivery function
asynchronously, ack, next. Run: python -m bench.peers.lab_baseline.manager AMQP_URL QUEUE"""

from __future__ import annotations

import sys

import boto3
import pika


def main() -> None:
    amqp_url, queue = sys.argv[1:3]
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)

    def callback(ch, method, properties, body):  # untyped, as in the slides
        lambda_client.invoke(FunctionName="lambda_delivery", InvocationType="Event", Payload=body)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=callback)
    channel.start_consuming()


if __name__ == "__main__":
    main()
