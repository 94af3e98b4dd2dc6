"""SQS clients for queue URLs the service is given (event sources, destinations).

boto3 finds the endpoint itself on AWS and when ``AWS_ENDPOINT_URL_SQS`` (or
``AWS_ENDPOINT_URL``) is set; otherwise a queue URL on another host (moto's server,
say) is reached at that host, so ``--event-source-sqs NAME=http://127.0.0.1:5000/...``
works without extra settings.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from courierflow.config import resolve_region


def client_for_queue(queue_url: str, max_connections: int = 10) -> Any:
    """A boto3 SQS client that reaches ``queue_url``."""
    config = Config(retries={"mode": "standard"}, max_pool_connections=max_connections)
    region = resolve_region()
    parts = urlsplit(queue_url)
    endpoint_set = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_set or parts.hostname is None or parts.hostname.endswith("amazonaws.com"):
        return boto3.client("sqs", region_name=region, config=config)
    endpoint = f"{parts.scheme}://{parts.netloc}"
    return boto3.client("sqs", region_name=region, endpoint_url=endpoint, config=config)
