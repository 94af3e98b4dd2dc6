"""A lean client for the one call the manager makes thousands of times a second:
Lambda's ``Invoke`` with ``InvocationType=Event``.

boto3's generic pipeline costs about 2 ms of CPU per call (hooks, validation, parsing),
which caps a Python process at a few hundred invokes per second. This client keeps what
matters and drops the rest: the endpoint comes from a boto3 client and the credentials
from its boto3 session (``Session.get_credentials()``), so ``AWS_ENDPOINT_URL_LAMBDA``,
profiles and instance roles work exactly as in boto3; each request is signed with
Signature Version 4 (the signing key derived once a day, the signature checked against
botocore's own signer in the tests) and sent on a pooled keep-alive connection from an
asyncio loop. When the proxy variables route the endpoint
through a proxy, calls go through boto3 itself, which speaks to proxies. Errors are
converted here; callers see ``InvokeError``, or ``InvokeThrottled`` when Lambda answered
429 ``TooManyRequestsException`` (throttling: not a failure of the order).

Why its own HTTP/1.1 framing (``_Connection``) and not aiohttp's client: measured side by
side (``python -m bench.invoker_framing --orders 5000 --repeats 8``, 2026-12-03), the same
invoker with aiohttp framing dispatched 0.60x the orders per second (per repetition 0.52
to 0.83x, median 0.62x) at 1.67x the manager's CPU per order (0.41 against 0.24 ms): far
past the 10% issue 14 allowed. aiohttp would also have to join the core install the
manager runs from on EC2. Details: docs/performance.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import ssl
import time
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from courierflow.errors import ConfigError, InvokeError, InvokeThrottled, InvokeUnreachable

#: seconds to connect and to wait for Lambda's answer
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
#: the service name and algorithm in Lambda's signatures
SERVICE = "lambda"
ALGORITHM = "AWS4-HMAC-SHA256"
#: Lambda's error code for throttling (HTTP 429), on the sync and the async path alike
THROTTLED = "TooManyRequestsException"
#: functions whose request template is kept (more, and they are made again)
MAX_TEMPLATES = 64


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """Signature Version 4 for POST requests without a query string, as botocore's
    ``SigV4Auth`` signs them (same canonical request, same signed headers)."""

    def __init__(self, region: str, service: str = SERVICE) -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}
        #: the last second stamped, its X-Amz-Date and its credential scope
        self._second = -1
        self._stamp = ""
        self._scope = ""

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = _hmac(("AWS4" + secret).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._keys = {(secret, day): key}  # one day's key, for the current secret
        return key

    def _date(self, now: float | None) -> tuple[str, str]:
        """X-Amz-Date and the credential scope of ``now`` (the clock when None), formatted
        once per second: a busy manager signs hundreds of requests in each."""
        second = int(time.time() if now is None else now)
        if second != self._second:
            self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._scope = f"{self._stamp[:8]}/{self.region}/{self.service}/aws4_request"
            self._second = second
        return self._stamp, self._scope

    def template(self, host: str, path: str, headers: dict[str, str]) -> SigV4Template:
        """A signer for many requests to ``host`` and ``path`` with ``headers``, which
        only the body, the time and the credentials tell apart."""
        return SigV4Template(self, host, path, headers)

    def headers(
        self,
        host: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        credentials: Any,
        now: float | None = None,
    ) -> dict[str, str]:
        """``headers`` plus Host, X-Amz-Date, the session token and Authorization."""
        return self.template(host, path, headers).headers(body, credentials, now)


class SigV4Template:
    """The signature of one kind of request, with what does not change between requests
    worked out once: the canonical request is a format string whose only blanks are the
    date, the session token (when there is one) and the body's hash.

    Only X-Amz-Date and X-Amz-Security-Token among the signed headers change per
    request; they sort in that order, whatever else is signed, so the blanks' order is
    fixed too.
    """

    def __init__(self, signer: SigV4Signer, host: str, path: str, headers: dict[str, str]) -> None:
        self._signer = signer
        self._host = host
        self._headers = dict(headers)
        #: token or not -> (the canonical request's format, the signed header names)
        self._shapes = {token: self._shape(host, path, headers, token) for token in (False, True)}

    @staticmethod
    def _shape(host: str, path: str, headers: dict[str, str], token: bool) -> tuple[str, str]:
        blanks = ["x-amz-date", "x-amz-security-token"] if token else ["x-amz-date"]
        values = {"host": host}
        values.update((name.lower(), value) for name, value in headers.items())
        for name in blanks:  # the signer sets these, whatever ``headers`` say
            values.pop(name, None)
        names = sorted([*values, *blanks])
        lines = "".join(
            f"{n}:%s\n" if n in blanks else f"{n}:{_escaped(' '.join(values[n].split()))}\n"
            for n in names
        )
        path = _escaped(quote(path, safe="/~"))
        return "\n".join(["POST", path, "", lines, ";".join(names), "%s"]), ";".join(names)

    def headers(self, body: bytes, credentials: Any, now: float | None = None) -> dict[str, str]:
        """The template's headers plus Host, X-Amz-Date, the session token and
        Authorization, signed for ``body`` with ``credentials`` at ``now``."""
        signer = self._signer
        stamp, scope = signer._date(now)
        token = credentials.token
        body_hash = hashlib.sha256(body).hexdigest()
        if token:
            fmt, names = self._shapes[True]
            canonical = fmt % (stamp, " ".join(token.split()), body_hash)
        else:
            fmt, names = self._shapes[False]
            canonical = fmt % (stamp, body_hash)
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = signer._signing_key(credentials.secret_key, stamp[:8])
        signature = hmac.digest(key, to_sign.encode(), "sha256").hex()
        out = dict(self._headers, Host=self._host)
        out["X-Amz-Date"] = stamp
        if token:
            out["X-Amz-Security-Token"] = token
        out["Authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return out


def _escaped(text: str) -> str:
    """``text`` as it must appear in a %-format to come out unchanged."""
    return text.replace("%", "%%")


class EventInvoker:
    """Asynchronous invocations from one asyncio loop, on a pool of keep-alive HTTP/1.1
    connections (one request at a time on each, as many connections as calls in flight).

    One thread drives every call in flight: waiting for Lambda's answer costs no thread,
    so 256 calls in flight cost what 1 does, where a thread per call pays for the GIL
    changing hands at each answer.
    """

    def __init__(
        self,
        lambda_client: Any,
        max_connections: int = 256,
        session: boto3.Session | None = None,
    ) -> None:
        """Calls the endpoint and region of ``lambda_client``, signed with the credentials
        of ``session`` (the session the client was made from; by default a new session,
        which finds them where boto3's default session does).

        Raises:
            ConfigError: boto3 finds no credentials.
        """
        self.endpoint = str(lambda_client.meta.endpoint_url).rstrip("/")
        self.region = str(lambda_client.meta.region_name)
        credentials = (session or boto3.Session()).get_credentials()
        if credentials is None:
            raise ConfigError(
                "no AWS credentials for Lambda: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run with an instance role"
            )
        #: refreshable for instance roles: ``get_frozen_credentials()`` at each call
        self._credentials = credentials
        parts = urlsplit(self.endpoint)
        self._tls = (
            ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            if parts.scheme == "https"
            else None
        )
        self._host = parts.netloc
        self._address = (parts.hostname or "", parts.port or (443 if self._tls else 80))
        self._base_path = parts.path.rstrip("/")
        self._signer = SigV4Signer(self.region)
        #: function name -> its invocations path and signer (the manager calls one)
        self._templates: dict[str, tuple[str, SigV4Template]] = {}
        self.max_connections = max_connections
        self._idle: list[_Connection] = []  # most recently used last (warm ones first)
        #: through a proxy (HTTPS_PROXY and friends, as boto3 reads them) every call goes
        #: through boto3 itself: slower, but it speaks to proxies
        self._proxied_client = lambda_client if _proxied(parts.scheme, parts.hostname) else None

    async def invoke_event(self, function_name: str, payload: bytes) -> str:
        """Hand ``payload`` to Lambda for asynchronous invocation; returns the request id.

        Raises:
            InvokeThrottled: Lambda answered 429 (throttling); carries its Retry-After hint.
            InvokeError: Lambda did not answer 202 (the message carries its error code), or
                the endpoint could not be reached.
        """
        if self._proxied_client is not None:
            return await asyncio.to_thread(self._invoke_with_boto3, function_name, payload)
        path, template = self._templates.get(function_name) or self._template(function_name)
        headers = template.headers(payload, self._credentials.get_frozen_credentials())
        status, answer, data = await self._post(path, headers, payload)
        if status == 202:
            return answer.get("x-amzn-requestid", "")
        code = answer.get("x-amzn-errortype", "").split(":")[0] or str(status)
        try:
            message = json.loads(data or b"{}").get("message", "")
        except ValueError:
            message = data[:200].decode(errors="replace")
        if status == 429 or code == THROTTLED:
            raise InvokeThrottled(f"{code}: {message}", _seconds(answer.get("retry-after")))
        raise InvokeError(f"{code}: {message}")

    def _template(self, function_name: str) -> tuple[str, SigV4Template]:
        """The path of ``function_name``'s Event invokes and their signer, made once."""
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        path = f"{self._base_path}/2015-03-31/functions/{quote(function_name, safe='')}/invocations"
        template = self._signer.template(self._host, path, {"X-Amz-Invocation-Type": "Event"})
        self._templates[function_name] = (path, template)
        return path, template

    def _invoke_with_boto3(self, function_name: str, payload: bytes) -> str:
        try:
            answer = self._proxied_client.invoke(  # type: ignore[union-attr]
                FunctionName=function_name, InvocationType="Event", Payload=payload
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            reason = f"{error.get('Code')}: {error.get('Message')}"
            if error.get("Code") == THROTTLED:
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                hint = exc.response.get("retryAfterSeconds") or headers.get("retry-after")
                raise InvokeThrottled(reason, _seconds(str(hint) if hint else None)) from None
            raise InvokeError(reason) from None
        except (EndpointUnreachable, HTTPClientError) as exc:  # no answer: an outage
            raise InvokeUnreachable(f"cannot reach Lambda at {self.endpoint}: {exc}") from None
        except BotoCoreError as exc:
            raise InvokeError(f"Lambda invoke failed at {self.endpoint}: {exc}") from None
        return str(answer.get("ResponseMetadata", {}).get("RequestId", ""))

    async def _post(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` to ``path``; returns the status, the headers (names in lower
        case) and the body of the answer. Raises InvokeError when there is no answer."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
        return await self._exchange(request + body)

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read its answer, on an idle connection or a new one."""
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
                answer = await asyncio.wait_for(conn.exchange(request), READ_TIMEOUT_S)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection
                    continue
                raise InvokeUnreachable(
                    f"cannot reach Lambda at {self.endpoint}: {exc!r}"
                ) from None
            if conn.reusable and len(self._idle) < self.max_connections:
                self._idle.append(conn)
            else:
                conn.close()
            return answer
        raise AssertionError("unreachable")

    async def _open(self) -> _Connection:
        host, port = self._address
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._tls, server_hostname=host if self._tls else None
        )
        return _Connection(reader, writer)

    async def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().close()


def _seconds(retry_after: str | None) -> float | None:
    """Lambda's ``Retry-After`` header in seconds; None when absent or not a number."""
    try:
        seconds = float(retry_after) if retry_after else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _proxied(scheme: str, host: str | None) -> bool:
    """Whether the proxy variables send requests to this host through a proxy."""
    proxies = urllib.request.getproxies()
    return bool(host) and scheme in proxies and not urllib.request.proxy_bypass(host or "")


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        elif status in (202, 204, 304) or 100 <= status < 200:
            body = b""  # 202: Lambda's answer to an Event invoke has no payload
        else:  # the body runs to the end of the connection
            body = await self.reader.read()
            self.reusable = False
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return status, headers, body

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()
