"""The manager's SigV4 signer signs exactly as botocore does, so AWS accepts its calls."""

from __future__ import annotations

import datetime
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from courierflow.manager.invoker import SigV4Signer

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 21, 35, 7, tzinfo=datetime.UTC)


def botocore_headers(url: str, body: bytes, credentials: ReadOnlyCredentials) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"X-Amz-Invocation-Type": "Event"}
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        SigV4Auth(credentials, "lambda", "us-east-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize(
    ("host", "function", "token"),
    [
        ("lambda.us-east-1.amazonaws.com", "lambda_delivery", None),
        ("127.0.0.1:9001", "lambda_delivery", "session-token/with+odd=chars"),
        ("lambda.us-east-1.amazonaws.com",
         "arn:aws:lambda:us-east-1:123456789012:function:lambda_delivery", None),
    ],
)  # fmt: skip
def test_signature_matches_botocores(host: str, function: str, token: str | None) -> None:
    credentials = ReadOnlyCredentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    path = f"/2015-03-31/functions/{quote(function, safe='')}/invocations"
    body = b'{"order_id": "ORD-1", "customer": "Ann"}'
    scheme = "http" if host.startswith("127.") else "https"
    expected = botocore_headers(f"{scheme}://{host}{path}", body, credentials)

    ours = SigV4Signer("us-east-1").headers(
        host, path, body, {"X-Amz-Invocation-Type": "Event"}, credentials, NOW.timestamp()
    )

    assert ours["X-Amz-Date"] == expected["X-Amz-Date"] == "20261201T213507Z"
    assert ours["Authorization"] == expected["Authorization"]
    assert ours.get("X-Amz-Security-Token") == expected.get("X-Amz-Security-Token")
