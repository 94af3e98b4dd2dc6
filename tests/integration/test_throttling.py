"""Throttling on real parts: the local Lambda service set up like an account with reduced
quotas (AWS Academy's Learner Lab: a concurrency of 10) refuses Event invokes past its
request rate with 429 ``TooManyRequestsException``, as Lambda does, and the manager backs
off and delivers every order anyway, dead-lettering none."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from courierflow.errors import InvokeThrottled
from courierflow.ledger.base import open_ledger
from courierflow.local.processes import rabbitmq_available
from courierflow.manager.dispatcher import Dispatcher
from courierflow.manager.event_invoker import EventInvoker
from courierflow.orders import Order, OrderState
from courierflow.transports.base import OutgoingMessage, open_transport
from tests.integration.test_lambda_service import Service, start_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: the quotas of a Learner Lab account, and a request rate low enough to be hit often
LAB_CONCURRENCY = 10
LOW_RATE = 40
LOW_BURST = 10


def health(service: Service) -> dict[str, Any]:
    with urllib.request.urlopen(f"{service.url}/health", timeout=5) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def wait_until_idle(service: Service, timeout_s: float = 30.0) -> None:
    """Until no event waits in a queue and the account runs nothing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = health(service)
        queued = sum(fn["event_queue"] for fn in doc["functions"].values())
        if queued == 0 and doc["account"]["running"] == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the service is still busy after {timeout_s} s")


@pytest.fixture
def rate_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """A service allowing 5 Event invokes at once, then 5 a second, and 3 executions at
    once: set in its TOML file, its environment and its command line, one each."""
    config = tmp_path / "lambda.toml"
    config.write_text(
        "[account]\nconcurrency = 3\n\n"
        '[functions.echo]\nhandler = "samples:echo"\n\n'
        '[functions.sleepy]\nhandler = "samples:sleepy"\nconcurrency = 50\n'
    )
    monkeypatch.setenv("COURIERFLOW_LAMBDA_ASYNC_INVOKE_RATE", "5")
    svc = start_service(tmp_path, "--config", str(config), "--async-invoke-burst", "5")
    try:
        yield svc
    finally:
        svc.process.stop()


def test_event_invokes_past_the_request_rate_get_429_too_many_requests(
    rate_limited: Service,
) -> None:
    client = rate_limited.client()
    accepted = 0
    refused: list[Any] = []
    started = time.monotonic()
    for _ in range(30):  # far faster than 5 a second
        try:
            answer = client.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
        except client.exceptions.TooManyRequestsException as exc:
            refused.append(exc)
        else:
            assert answer["StatusCode"] == 202
            accepted += 1
    came_back = (time.monotonic() - started) * 5  # tokens refilled meanwhile
    assert 5 <= accepted <= 5 + came_back + 1
    assert accepted < 20
    assert len(refused) == 30 - accepted
    error = refused[0].response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Error"]["Code"] == "TooManyRequestsException"
    assert error["Reason"] == "CallerRateLimitExceeded"
    assert error["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    counters = health(rate_limited)["functions"]["echo"]
    assert counters["async_throttles"] == len(refused)
    assert counters["async_accepted"] == accepted

    # the rate concerns Event invokes only (once the accepted events ran: the account's
    # concurrency is 3), and tokens come back with time
    wait_until_idle(rate_limited)
    assert client.invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
    time.sleep(0.5)
    assert client.invoke(FunctionName="echo", InvocationType="Event")["StatusCode"] == 202


def test_the_managers_invoker_raises_invoke_throttled_with_the_retry_after_hint(
    rate_limited: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = rate_limited.client()
    invoker = EventInvoker(client)

    async def burst() -> list[BaseException | str]:
        calls = [invoker.invoke_event("echo", b"{}") for _ in range(20)]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await invoker.close()

    results = asyncio.run(burst())
    throttled = [r for r in results if isinstance(r, InvokeThrottled)]
    accepted = [r for r in results if isinstance(r, str)]
    assert len(throttled) + len(accepted) == 20, results
    assert len(throttled) >= 10 and len(accepted) >= 5
    assert "TooManyRequestsException" in str(throttled[0])
    assert throttled[0].retry_after_s == 1.0

    # the boto3 path (the one taken behind a proxy) recognises it too
    monkeypatch.setattr("courierflow.manager.event_invoker._proxied", lambda scheme, host: True)
    through_boto3 = EventInvoker(client)

    async def one_by_one() -> None:
        for _ in range(10):
            await through_boto3.invoke_event("echo", b"{}")

    with pytest.raises(InvokeThrottled) as caught:
        asyncio.run(one_by_one())
    assert "TooManyRequestsException" in str(caught.value)
    assert caught.value.retry_after_s == 1.0


def test_account_settings_report_the_configured_concurrency(rate_limited: Service) -> None:
    settings = rate_limited.client().get_account_settings()
    assert settings["AccountLimit"]["ConcurrentExecutions"] == 3
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 3
    assert settings["AccountUsage"]["FunctionCount"] == 2


def test_account_concurrency_keeps_events_waiting_in_the_queue(rate_limited: Service) -> None:
    """Nine half-second events on a function allowed 50 environments, in an account
    allowed 3 executions: at most 3 run (and exist) at once, and all nine run."""
    client = rate_limited.client()
    time.sleep(1.0)  # a full bucket: the 5 of the burst, then one each 0.2 s
    for i in range(9):
        while True:
            try:
                client.invoke(FunctionName="sleepy", InvocationType="Event", Payload=b"{}")
                break
            except client.exceptions.TooManyRequestsException:
                time.sleep(0.1)
        if i == 2:  # the account is now full: a synchronous invoke is refused at once
            with pytest.raises(client.exceptions.TooManyRequestsException) as caught:
                client.invoke(FunctionName="echo", Payload=b"{}")
            assert caught.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
    most_running, most_environments = 0, 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = health(rate_limited)
        sleepy = doc["functions"]["sleepy"]
        most_running = max(most_running, doc["account"]["running"])
        most_environments = max(most_environments, sleepy["total"])
        if sleepy["invocations"] == 9 and doc["account"]["running"] == 0:
            break
        time.sleep(0.05)
    assert sleepy["invocations"] == 9 and sleepy["errors"] == 0
    assert most_running == 3
    assert most_environments <= 3


@pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server is not installed")
def test_manager_on_a_lab_account_delivers_every_order_through_throttling(
    tmp_path: Path, amqp_url: str
) -> None:
    """200 orders through a real RabbitMQ queue and the real delivery function, on a
    service with the Learner Lab's concurrency of 10 and a low Event rate: many invokes
    are throttled, every order is delivered, none is dead-lettered."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    svc = start_service(
        tmp_path,
        "--function", "lambda_delivery=courierflow.functions.delivery:lambda_handler",
        "--set", f"lambda_delivery.env.COURIERFLOW_LEDGER_URL={ledger_url}",
        "--set", "lambda_delivery.env.COURIERFLOW_TIME_SCALE=0.01",
        "--set", "lambda_delivery.concurrency=64",
        "--account-concurrency", str(LAB_CONCURRENCY),
        "--async-invoke-rate", str(LOW_RATE), "--async-invoke-burst", str(LOW_BURST),
    )  # fmt: skip
    ids = [f"THR-{i:04d}" for i in range(200)]
    ledger = open_ledger(ledger_url)
    transport = open_transport(amqp_url, f"throttle-{uuid.uuid4().hex[:8]}")
    ledger.add_queued(ids, "test://throttling", time.time())
    transport.publish(
        OutgoingMessage(Order(i, customer="c", address="a").to_json(), i, f"order:{i}") for i in ids
    )
    dispatcher = Dispatcher(transport, EventInvoker(svc.client()), ledger, "lambda_delivery")
    manager = threading.Thread(target=dispatcher.run, name="manager")
    manager.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ledger.counts()[OrderState.DELIVERED] == len(ids):
                break
            time.sleep(0.2)
        lambda_side = health(svc)
    finally:
        dispatcher.stop()
        manager.join(60)
        svc.process.stop()
    assert not manager.is_alive()
    assert {r.order_id: r.state for r in ledger.orders()} == dict.fromkeys(
        ids, OrderState.DELIVERED
    )
    stats = dispatcher.stats
    assert stats.dispatched == len(ids)
    assert stats.dead_lettered == 0
    assert stats.throttles > 0
    assert transport.dead_letters() == []
    delivery = lambda_side["functions"]["lambda_delivery"]
    assert delivery["async_throttles"] == stats.throttles
    assert delivery["total"] <= LAB_CONCURRENCY, "environments beyond the account's cap"
    transport.close()
