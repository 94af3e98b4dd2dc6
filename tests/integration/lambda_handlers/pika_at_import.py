"""A lab-style handler that opens its RabbitMQ connection at import, at module level."""

import json
import os
import time

import pika
import psutil

PARAMS = pika.URLParameters(os.environ["AMQP_URL"])
connection = pika.BlockingConnection(PARAMS)
channel = connection.channel()
channel.queue_declare(queue=os.environ["QUEUE"])


def lambda_handler(event, context):
    time.sleep(0.3)  # keep the environment busy so concurrent calls need several
    body = json.dumps({"order_id": event["order_id"], "pid": os.getpid()})
    channel.basic_publish(exchange="", routing_key=os.environ["QUEUE"], body=body)
    ports = [
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == PARAMS.port
    ]
    return {"published": event["order_id"], "broker_ports": ports}
