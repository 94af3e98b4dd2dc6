"""A lean client for the one call the manager makes thousands of times a second:
Lambda's ``Invoke`` with ``InvocationType=Event``.

boto3's generic pipeline costs about 2 ms of CPU per call (hooks, validation, parsing),
which caps a Python process at a few hundred invokes per second. This client keeps what
matters and drops the rest: the endpoint and credentials come from a boto3 client (so
``AWS_ENDPOINT_URL_LAMBDA``, profiles and instance roles work exactly as in boto3), each
request is signed with botocore's own SigV4 signer and sent on a pooled, thread-safe
HTTP connection. Errors are converted here; callers see ``InvokeError``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from courierflow.errors import InvokeError

#: seconds to connect and to wait for Lambda's answer
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


class EventInvoker:
    """Asynchronous invocations over a connection pool; safe to share between threads."""

    def __init__(self, lambda_client: Any, max_connections: int) -> None:
        self.endpoint = str(lambda_client.meta.endpoint_url).rstrip("/")
        self.region = str(lambda_client.meta.region_name)
        self._credentials = lambda_client._request_signer._credentials  # as boto3 resolved them
        self._pool = urllib3.PoolManager(
            maxsize=max_connections,
            block=True,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            retries=False,
        )

    def invoke_event(self, function_name: str, payload: bytes) -> str:
        """Hand ``payload`` to Lambda for asynchronous invocation; returns the request id.

        Raises:
            InvokeError: Lambda did not answer 202 (the message carries its error code), or
                the endpoint could not be reached.
        """
        url = f"{self.endpoint}/2015-03-31/functions/{quote(function_name, safe='')}/invocations"
        request = AWSRequest(
            method="POST", url=url, data=payload, headers={"X-Amz-Invocation-Type": "Event"}
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), "lambda", self.region).add_auth(
            request
        )
        try:
            response = self._pool.request(
                "POST", url, body=payload, headers=dict(request.headers.items())
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InvokeError(f"cannot reach Lambda at {self.endpoint}: {exc}") from None
        if response.status == 202:
            return str(response.headers.get("x-amzn-RequestId", ""))
        code = response.headers.get("x-amzn-ErrorType", "").split(":")[0] or str(response.status)
        try:
            message = json.loads(response.data or b"{}").get("message", "")
        except ValueError:
            message = response.data[:200].decode(errors="replace")
        raise InvokeError(f"{code}: {message}")
