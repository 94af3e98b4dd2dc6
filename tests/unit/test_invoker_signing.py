"""The manager's SigV4 signer signs exactly as botocore does, so AWS accepts its calls."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any
from unittest import mock
from urllib.parse import quote

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from courierflow.errors import ConfigError
from courierflow.manager.event_invoker import EventInvoker, SigV4Signer

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 21, 35, 7, tzinfo=datetime.UTC)


def botocore_headers(
    url: str,
    body: bytes,
    credentials: ReadOnlyCredentials,
    when: datetime.datetime = NOW,
    region: str = "us-east-1",
) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"X-Amz-Invocation-Type": "Event"}
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        SigV4Auth(credentials, "lambda", region).add_auth(request)
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


def test_one_template_signs_each_request_as_botocore_does() -> None:
    """A template made once per function signs many requests: different bodies, seconds
    and days, credentials with and without a session token, a rotated secret. Every
    signature is the one botocore computes for the same request."""
    host = "lambda.eu-west-1.amazonaws.com"
    path = f"/2015-03-31/functions/{quote('fn%20odd:$LATEST', safe='')}/invocations"
    template = SigV4Signer("eu-west-1").template(host, path, {"X-Amz-Invocation-Type": "Event"})
    plain = ReadOnlyCredentials("AKIDEXAMPLE", "secret-one", None)
    with_token = ReadOnlyCredentials("ASIAEXAMPLE", "secret-two", "token  with  spaces%s")
    cases = [
        (b'{"order_id": "ORD-1"}', NOW, plain),
        (b'{"order_id": "ORD-2"}', NOW, plain),  # same second, other body
        (b'{"order_id": "ORD-3"}', NOW + datetime.timedelta(seconds=1), with_token),
        (b"", NOW + datetime.timedelta(hours=3), plain),  # the next day (UTC)
        (b'{"order_id": "ORD-4"}', NOW + datetime.timedelta(hours=3, seconds=1), with_token),
        (b'{"order_id": "ORD-5"}', NOW, plain),  # back to the first day
    ]
    for body, when, credentials in cases:
        expected = botocore_headers(f"https://{host}{path}", body, credentials, when, "eu-west-1")
        ours = template.headers(body, credentials, when.timestamp())
        assert ours["X-Amz-Date"] == expected["X-Amz-Date"]
        assert ours["Authorization"] == expected["Authorization"], (body, when, credentials)
        assert ours.get("X-Amz-Security-Token") == expected.get("X-Amz-Security-Token")
        assert ours["X-Amz-Invocation-Type"] == "Event"
        assert ours["Host"] == host


def test_the_invoker_signs_every_call_as_botocore_does() -> None:
    """Calls to two functions, one after the other, through the invoker's templates."""
    session = boto3.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-east-1"
    )
    client = session.client("lambda", endpoint_url="http://127.0.0.1:9001")
    invoker = EventInvoker(client, session=session)
    sent: list[tuple[str, dict[str, str], bytes]] = []

    async def answer(path: str, headers: dict[str, str], body: bytes) -> Any:
        sent.append((path, headers, body))
        return 202, {"x-amzn-requestid": "req-1"}, b""

    async def calls() -> None:
        for function, body in [("one", b'{"n": 1}'), ("two", b'{"n": 2}'), ("one", b'{"n": 3}')]:
            await invoker.invoke_event(function, body)

    invoker._post = answer  # type: ignore[method-assign]
    with mock.patch("time.time", return_value=NOW.timestamp()):
        asyncio.run(calls())
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)
    for path, headers, body in sent:
        expected = botocore_headers(f"http://127.0.0.1:9001{path}", body, credentials)
        assert headers["Authorization"] == expected["Authorization"]
    assert [path.split("/")[3] for path, _, _ in sent] == ["one", "two", "one"]


def test_the_invoker_signs_with_its_sessions_credentials() -> None:
    """Credentials come from boto3's public API (``Session.get_credentials()``): the
    session's keys sign the call, not those of another session or the environment."""
    session = boto3.Session(
        aws_access_key_id="AKIDSESSION",
        aws_secret_access_key="session-secret",
        aws_session_token="session-token",
        region_name="eu-west-1",
    )
    client = boto3.Session(
        aws_access_key_id="AKIDOTHER", aws_secret_access_key="x", region_name="eu-west-1"
    ).client("lambda", endpoint_url="http://127.0.0.1:9")
    invoker = EventInvoker(client, session=session)
    sent: list[dict[str, str]] = []

    async def answer(path: str, headers: dict[str, str], body: bytes) -> Any:
        sent.append(headers)
        return 202, {"x-amzn-requestid": "req-1"}, b""

    invoker._post = answer  # type: ignore[method-assign]
    assert asyncio.run(invoker.invoke_event("lambda_delivery", b"{}")) == "req-1"
    (headers,) = sent
    assert "Credential=AKIDSESSION/" in headers["Authorization"]
    assert "/eu-west-1/lambda/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "session-token"


def test_an_invoker_without_credentials_is_a_configuration_error() -> None:
    client = boto3.client("lambda", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    no_credentials = mock.Mock(spec=boto3.Session)
    no_credentials.get_credentials.return_value = None
    with pytest.raises(ConfigError, match="no AWS credentials"):
        EventInvoker(client, session=no_credentials)
