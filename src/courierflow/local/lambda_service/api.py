"""The Lambda HTTP API (the part boto3 and the AWS CLI use). Routes only; the work is
in ``invoker``. Errors carry AWS's codes in ``x-amzn-ErrorType`` so botocore raises the
matching exception classes."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from courierflow.local.lambda_service.config import FunctionConfig
from courierflow.local.lambda_service.invocations import Function, ThrottleReason
from courierflow.local.lambda_service.limits import AccountConcurrency, TokenBucket

log = logging.getLogger(__name__)

#: AWS's payload limits, bytes
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
ASYNC_PAYLOAD_LIMIT = 1024 * 1024
API = "/2015-03-31/functions"
ACCOUNT_SETTINGS = "/2016-08-19/account-settings"
#: what GetAccountSettings reports for code storage (AWS's defaults, bytes)
TOTAL_CODE_SIZE = 80 * 1024**3
CODE_SIZE_UNZIPPED = 250 * 1024**2
CODE_SIZE_ZIPPED = 50 * 1024**2


def aws_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error botocore turns into ``client.exceptions.<code>`` (rest-json protocol)."""
    kind = "Service" if status >= 500 else "User"
    body = {"Type": kind, "message": message, **extra}
    return web.json_response(
        body, status=status, headers={"x-amzn-ErrorType": code, **(headers or {})}
    )


def throttled(reason: ThrottleReason, retry_after_s: float | None = None) -> web.Response:
    """Lambda's 429, with its reason and (for a rate) the whole seconds until a retry."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
    return aws_error(
        429, "TooManyRequestsException", "Rate Exceeded.", headers, Reason=reason.value
    )


@web.middleware
async def aws_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer what no route handles, and anything unexpected, as AWS-shaped errors:
    the service keeps serving whatever one request did."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return aws_error(413, "RequestTooLargeException", exc.text or "Request too large")
    except web.HTTPNotFound:
        return aws_error(404, "UnknownOperationException", f"No Lambda operation at {request.path}")
    except web.HTTPMethodNotAllowed:
        return aws_error(
            405,
            "UnknownOperationException",
            f"{request.method} is not supported on {request.path}",
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return aws_error(500, "ServiceException", "The local Lambda service failed; see its log")


def function_name(raw: str) -> tuple[str, str | None]:
    """A function name from a name, a partial ARN or a full ARN, and its qualifier."""
    if raw.startswith("arn:"):
        parts = raw.split(":")
        return (parts[6] if len(parts) > 6 else ""), (parts[7] if len(parts) > 7 else None)
    if raw.count(":") >= 2:  # ACCOUNT:function:NAME
        parts = raw.split(":")
        return parts[2], (parts[3] if len(parts) > 3 else None)
    name, _, qualifier = raw.partition(":")
    return name, qualifier or None


def configuration(c: FunctionConfig) -> dict[str, Any]:
    return {
        "FunctionName": c.name,
        "FunctionArn": c.arn,
        "Runtime": f"python{sys.version_info.major}.{sys.version_info.minor}",
        "Role": "arn:aws:iam::123456789012:role/courierflow-local",
        "Handler": c.handler,
        "CodeSize": 0,
        "Description": "served by courierflow's local Lambda service",
        "Timeout": int(c.timeout),
        "MemorySize": c.memory,
        "Version": "$LATEST",
        "Environment": {"Variables": dict(c.env)},
        "State": "Active",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    }


class LambdaApi:
    def __init__(
        self,
        functions: dict[str, Function],
        latency_s: float = 0.0,
        account: AccountConcurrency | None = None,
        async_rate: TokenBucket | None = None,
    ) -> None:
        self.functions = functions
        #: added to every Invoke answer (benchmarks: the real API's round trip)
        self.latency_s = latency_s
        #: the account's concurrency, shared by every function
        self.account = account or AccountConcurrency()
        #: the account's rate of Event invokes (None: no limit)
        self.async_rate = async_rate
        #: when this service began holding events: its queues live in memory, so an event
        #: accepted before then is held by nobody (the reconciler reads it on /health)
        self.started_at = time.time()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(API + "/{name}/invocations", self.invoke),
            web.get(API + "/", self.list_functions),
            web.get(API, self.list_functions),
            web.get(API + "/{name}", self.get_function),
            web.get(API + "/{name}/configuration", self.get_function_configuration),
            web.get(ACCOUNT_SETTINGS, self.get_account_settings),
            web.get(ACCOUNT_SETTINGS + "/", self.get_account_settings),
            web.get("/health", self.health),
        ]

    def _lookup(self, request: web.Request) -> Function | web.Response:
        raw = request.match_info["name"]
        name, qualifier = function_name(raw)
        qualifier = request.query.get("Qualifier", qualifier)
        fn = self.functions.get(name)
        if fn is None or qualifier not in (None, "$LATEST"):
            arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
            shown = f"{arn}:{qualifier}" if qualifier else arn
            return aws_error(404, "ResourceNotFoundException", f"Function not found: {shown}")
        return fn

    async def invoke(self, request: web.Request) -> web.Response:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        fn = found
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in ("RequestResponse", "Event", "DryRun"):
            return aws_error(
                400, "InvalidParameterValueException", f"Unsupported invocation type {kind!r}"
            )
        if kind == "Event" and self.async_rate is not None:
            wait_s = self.async_rate.take()
            if wait_s:
                fn.counters.async_throttles += 1
                return throttled(ThrottleReason.REQUEST_RATE, wait_s)
        limit = ASYNC_PAYLOAD_LIMIT if kind == "Event" else SYNC_PAYLOAD_LIMIT
        if (request.content_length or 0) > limit:
            return _too_large(request.content_length or 0, limit)
        payload = await request.read()
        if len(payload) > limit:
            return _too_large(len(payload), limit)
        if payload.strip():
            try:
                json.loads(payload.decode("utf-8"))
            except ValueError as exc:  # UnicodeDecodeError included
                return aws_error(
                    400,
                    "InvalidRequestContentException",
                    f"Could not parse request body into json: {exc}",
                )
        if kind == "DryRun":
            return web.Response(status=204)
        if kind == "Event":
            request_id = fn.enqueue(payload)
            return web.Response(status=202, headers={"x-amzn-RequestId": request_id})
        outcome = await fn.invoke_sync(payload, request.headers.get("X-Amz-Log-Type") == "Tail")
        if isinstance(outcome, ThrottleReason):
            return throttled(outcome)
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": outcome.request_id}
        if not outcome.ok:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = outcome.tail
        return web.Response(
            status=200, body=outcome.body, headers=headers, content_type="application/json"
        )

    async def list_functions(self, request: web.Request) -> web.Response:
        functions = [configuration(fn.config) for fn in self.functions.values()]
        return web.json_response({"Functions": functions})

    async def get_function(self, request: web.Request) -> web.Response:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(
            {
                "Configuration": configuration(found.config),
                "Code": {"RepositoryType": "Local", "Location": found.config.handler},
                "Concurrency": {"ReservedConcurrentExecutions": found.config.concurrency},
            }
        )

    async def get_function_configuration(self, request: web.Request) -> web.Response:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(configuration(found.config))

    async def get_account_settings(self, request: web.Request) -> web.Response:
        """The account's concurrency (the configured cap, or AWS's default 1000). No
        function sets any of it aside (their own concurrency is a cap, not a
        reservation from the account's), so all of it is unreserved."""
        concurrency = self.account.reported
        return web.json_response(
            {
                "AccountLimit": {
                    "TotalCodeSize": TOTAL_CODE_SIZE,
                    "CodeSizeUnzipped": CODE_SIZE_UNZIPPED,
                    "CodeSizeZipped": CODE_SIZE_ZIPPED,
                    "ConcurrentExecutions": concurrency,
                    "UnreservedConcurrentExecutions": concurrency,
                },
                "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(self.functions)},
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        doc = {
            name: {
                **vars(fn.counters),
                **fn.pool.stats(),
                "event_queue": fn.events.qsize(),
            }
            for name, fn in self.functions.items()
        }
        account = {"concurrency": self.account.limit, "running": self.account.running}
        return web.json_response(
            {"status": "ok", "functions": doc, "account": account, "started_at": self.started_at}
        )


def _too_large(size: int, limit: int) -> web.Response:
    return aws_error(
        413,
        "RequestTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation "
        f"(got {size} bytes)",
    )
