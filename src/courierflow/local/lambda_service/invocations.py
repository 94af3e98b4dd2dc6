"""Running invocations: synchronous, asynchronous (queue, retries, destinations), logs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from courierflow.local.lambda_service.config import FunctionConfig
from courierflow.local.lambda_service.environments import (
    Environment,
    EnvironmentDied,
    EnvironmentPool,
)
from courierflow.local.lambda_service.limits import AccountConcurrency
from courierflow.local.lambda_service.logformat import log_block
from courierflow.local.lambda_service.queue_clients import client_for_queue

log = logging.getLogger(__name__)

#: what `X-Amz-Log-Type: Tail` returns: the end of the invocation's log
TAIL_BYTES = 4096
#: the largest response a synchronous invocation may return (AWS: 6 MB)
RESPONSE_LIMIT = 6 * 1024 * 1024
#: seconds before an event whose environment could not be made is tried again
SPAWN_RETRY_DELAY_S = 1.0


class ThrottleReason(StrEnum):
    """Why an invocation was refused with 429 (Lambda's own ``Reason`` values)."""

    #: every environment the function may have is busy (its reserved concurrency)
    FUNCTION_CONCURRENCY = "ReservedFunctionConcurrentInvocationLimitExceeded"
    #: the account runs as many executions as its concurrency allows
    ACCOUNT_CONCURRENCY = "ConcurrentInvocationLimitExceeded"
    #: asynchronous Invoke requests came faster than the account's request rate
    REQUEST_RATE = "CallerRateLimitExceeded"


@dataclass
class Outcome:
    """The result of one invocation, as the API and the async queue need it."""

    request_id: str
    ok: bool
    body: bytes
    log: str = ""

    @property
    def tail(self) -> str:
        return base64.b64encode(self.log.encode()[-TAIL_BYTES:]).decode()

    def error(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except ValueError:
            return {"errorMessage": self.body.decode(errors="replace")}
        return doc if isinstance(doc, dict) else {"errorMessage": str(doc)}


@dataclass
class Event:
    """An asynchronous invocation waiting in the function's queue."""

    payload: bytes
    request_id: str
    created: float = field(default_factory=time.time)
    attempts: int = 0


@dataclass
class Counters:
    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    #: Event invokes refused for the account's request rate (429)
    async_throttles: int = 0
    async_accepted: int = 0
    async_retries: int = 0
    async_failed: int = 0


class Function:
    """One configured function: its environments, its event queue, its log.

    Every execution also takes a slot of the account's concurrency (shared by all the
    functions of the service) before it takes an environment."""

    def __init__(
        self,
        config: FunctionConfig,
        pool: EnvironmentPool,
        log_dir: Path,
        account: AccountConcurrency | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.account = account or AccountConcurrency()
        self.log_path = log_dir / f"{config.name}.log"
        self.counters = Counters()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the service

    async def start(self) -> None:
        await self.pool.start()
        self._dispatcher = asyncio.create_task(self._dispatch_events())

    async def close(self) -> None:
        if self._dispatcher:
            self._dispatcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.pool.close()
        self._log_file.close()

    # --- synchronous -------------------------------------------------------------------

    async def invoke_sync(self, payload: bytes, tail: bool = False) -> Outcome | ThrottleReason:
        """Run now; the reason when the function or the account is full (the API answers
        429)."""
        request_id = str(uuid.uuid4())
        if not self.account.try_acquire():
            self.counters.throttles += 1
            return ThrottleReason.ACCOUNT_CONCURRENCY
        try:
            try:
                env = await self.pool.acquire(wait=False)
            except EnvironmentDied as exc:
                self.counters.invocations += 1
                self.counters.errors += 1
                return self._init_failure(request_id, str(exc))
            if env is None:
                self.counters.throttles += 1
                return ThrottleReason.FUNCTION_CONCURRENCY
            return await self.run(env, payload, request_id, tail)
        finally:
            self.account.release()

    def _init_failure(self, request_id: str, reason: str) -> Outcome:
        """The outcome of an invocation whose environment could not be started."""
        doc = {
            "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {reason}",
            "errorType": "Runtime.ExitError",
        }
        return self._service_side_error(request_id, doc, time.perf_counter())

    async def run(
        self, env: Environment, payload: bytes, request_id: str, tail: bool = False
    ) -> Outcome:
        """One invocation on ``env``; the environment goes back to the pool afterwards.

        A healthy environment writes the invocation's log itself; when it times out or
        dies, the service writes the block (as Lambda's own runtime would)."""
        self.counters.invocations += 1
        request = {
            "request_id": request_id,
            "deadline": time.time() + self.config.timeout,
            "arn": self.config.arn,
            "tail": tail,  # the log block comes back only when the caller wants it
        }
        started = time.perf_counter()
        healthy = False
        try:
            reply, body = await env.invoke(request, payload, self.config.timeout)
            healthy = not reply.get("exit", False)
            if reply["ok"] and len(body) > RESPONSE_LIMIT:
                outcome = self._service_side_error(request_id, _too_large(len(body)), started)
            else:
                outcome = Outcome(request_id, bool(reply["ok"]), body, reply["log"])
        except TimeoutError:
            message = f"Task timed out after {self.config.timeout:.2f} seconds"
            doc = {
                "errorMessage": f"{_now()} {request_id} {message}",
                "errorType": "Sandbox.Timedout",
            }
            outcome = self._service_side_error(request_id, doc, started)
        except EnvironmentDied:
            doc = {
                "errorMessage": f"RequestId: {request_id} Error: Runtime exited without "
                "providing a reason",
                "errorType": "Runtime.ExitError",
            }
            outcome = self._service_side_error(request_id, doc, started)
        finally:
            self.pool.release(env, healthy)
        if not outcome.ok:
            self.counters.errors += 1
        return outcome

    def _service_side_error(self, request_id: str, doc: dict[str, str], started: float) -> Outcome:
        duration = (time.perf_counter() - started) * 1000
        text = log_block(request_id, f"{doc['errorMessage']}\n", duration, self.config.memory, 0)
        self._log_file.write(text)
        self._log_file.flush()
        return Outcome(request_id, False, json.dumps(doc).encode(), text)

    # --- asynchronous ------------------------------------------------------------------

    def enqueue(self, payload: bytes) -> str:
        event = Event(payload, str(uuid.uuid4()))
        self.counters.async_accepted += 1
        self.events.put_nowait(event)
        return event.request_id

    async def _dispatch_events(self) -> None:
        """Hand queued events to environments as they free up (events wait, never 429).

        While the account runs as many executions as its concurrency allows, the next
        event waits for one to end (and the rest wait in the queue). An idle environment
        takes the next event at once. When none is idle but the concurrency allows
        another, the event waits for its own new environment in a task of its own, so
        that a burst of events starts environments in parallel rather than one after
        another. Only when the function is at its concurrency does the dispatcher wait
        for one to be released. Each execution gives its account slot back when it ends.
        """
        while True:
            event = await self.events.get()
            if time.time() - event.created > self.config.max_event_age:
                await self._give_up(event, None, "EventAgeExceeded")
                continue
            if not self.account.try_acquire():
                await self.account.acquire()
            env = self.pool.take_idle()
            if env is None and self.pool.reserve():
                self._spawn_task(self._start_and_run(event))
                continue
            try:
                env = env or await self.pool.acquire(wait=True)
            except Exception as exc:
                self.account.release()
                self._no_environment(event, exc)
                continue
            assert env is not None
            self._spawn_task(self._run_event(env, event))

    async def _start_and_run(self, event: Event) -> None:
        try:
            env = await self.pool.start_reserved()
        except Exception as exc:
            self.account.release()
            self._no_environment(event, exc)
            return
        await self._run_event(env, event)

    def _no_environment(self, event: Event, exc: Exception) -> None:
        """An event whose environment could not be started: a failed attempt when the
        handler's module cannot start, otherwise the event is queued again."""
        if isinstance(exc, EnvironmentDied):
            event.attempts += 1
            self.counters.invocations += 1
            self.counters.errors += 1
            failure = self._init_failure(event.request_id, str(exc))
            self._spawn_task(self._settle(event, failure))
            return
        log.exception("no environment for event %s; trying again", event.request_id)
        asyncio.get_running_loop().call_later(SPAWN_RETRY_DELAY_S, self.events.put_nowait, event)

    def _spawn_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_event(self, env: Environment, event: Event) -> None:
        """Run an event on ``env`` with the account slot taken for it, then settle it."""
        event.attempts += 1
        try:
            outcome = await self.run(env, event.payload, event.request_id)
        finally:
            self.account.release()
        await self._settle(event, outcome)

    async def _settle(self, event: Event, outcome: Outcome) -> None:
        """After an attempt: done, retried after the configured delay, or given up."""
        if outcome.ok:
            return
        retries_done = event.attempts - 1
        if retries_done < self.config.max_retries:
            delays = self.config.retry_delays or (0.0,)
            delay = delays[min(retries_done, len(delays) - 1)]
            self.counters.async_retries += 1
            log.info(
                "event %s failed [%d/%d]; retrying in %.1f s",
                event.request_id,
                event.attempts,
                self.config.max_retries + 1,
                delay,
            )
            asyncio.get_running_loop().call_later(delay, self.events.put_nowait, event)
            return
        await self._give_up(event, outcome, "RetriesExhausted")

    async def _give_up(self, event: Event, outcome: Outcome | None, condition: str) -> None:
        self.counters.async_failed += 1
        destination = self.config.on_failure
        if not destination:
            log.warning(
                "event %s dropped after %s (no on-failure destination)", event.request_id, condition
            )
            return
        record = destination_record(self.config, event, outcome, condition)
        try:
            await asyncio.get_running_loop().run_in_executor(None, _send, destination, record)
        except Exception:
            log.exception("could not send event %s to %s", event.request_id, destination)


def destination_record(
    config: FunctionConfig, event: Event, outcome: Outcome | None, condition: str
) -> dict[str, Any]:
    """The on-failure record, in the shape Lambda sends to a destination."""
    try:
        payload: Any = json.loads(event.payload) if event.payload else {}
    except ValueError:
        payload = event.payload.decode(errors="replace")
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": _now(),
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": f"{config.arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": payload,
    }
    if outcome is not None:
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
        record["responsePayload"] = outcome.error()
    return record


_destination_clients: dict[str, Any] = {}


def _send(destination: str, record: dict[str, Any]) -> None:
    """Deliver one on-failure record: an SQS queue URL, or a JSON-lines file."""
    if destination.startswith(("http://", "https://")):
        client = _destination_clients.get(destination)
        if client is None:
            client = _destination_clients[destination] = client_for_queue(destination)
        client.send_message(QueueUrl=destination, MessageBody=json.dumps(record))
    else:
        with open(destination, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def _too_large(size: int) -> dict[str, str]:
    return {
        "errorMessage": f"Response payload size ({size} bytes) exceeded maximum allowed "
        f"payload size ({RESPONSE_LIMIT} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }


def _now() -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        + f".{int(time.time() * 1000) % 1000:03d}Z"
    )
