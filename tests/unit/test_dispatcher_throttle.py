"""The dispatcher under throttling: a 429 is backed off and retried as often as it takes,
never dead-lettered, and shrinks the invokes allowed in flight; real errors keep their
bounded attempts. The queue and Lambda are in-memory stand-ins; the ledger is SQLite."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from courierflow.errors import InvokeError, InvokeThrottled, InvokeUnreachable
from courierflow.ledger.base import Ledger, open_ledger
from courierflow.manager import dispatcher as dispatcher_module
from courierflow.manager.dispatcher import MAX_INVOKE_ATTEMPTS, Dispatcher
from courierflow.manager.invoke_limit import InvokeLimit
from courierflow.orders import Order, OrderState
from courierflow.transports.base import DeadLetter, QueuedMessage, Transport

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


class RecordedMessage(QueuedMessage):
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.settled: str | None = None

    def ack(self) -> None:
        self.settled = "ack"

    def reject(self, requeue: bool) -> None:
        self.settled = "requeue" if requeue else "dead-letter"


class ListTransport(Transport):
    """Hands out its messages once, then waits for ``stop``."""

    def __init__(self, order_ids: list[str]) -> None:
        self.deliveries = [
            RecordedMessage(Order(i, customer="c", address="a").to_json()) for i in order_ids
        ]

    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        for delivery in self.deliveries:
            on_message(delivery)
        stop.wait()

    def settled(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for d in self.deliveries:
            counts[str(d.settled)] += 1
        return dict(counts)

    def publish(self, messages: object) -> int:
        raise NotImplementedError

    def depth(self) -> int:
        return 0

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        return []

    def replay_dead_letters(self, order_id: str | None = None) -> int:
        return 0


class ScriptedLambda:
    """Answers each order's invokes from a script: "throttle", "error", "unreachable",
    then accepts."""

    def __init__(self, script: list[str], retry_after_s: float | None = None) -> None:
        self.script = script
        self.retry_after_s = retry_after_s
        self.calls: dict[str, int] = defaultdict(int)
        self.on_call: Callable[[], None] = lambda: None

    async def invoke_event(self, function_name: str, payload: bytes) -> str:
        order_id = Order.from_message(payload).order_id
        n = self.calls[order_id]
        self.calls[order_id] += 1
        self.on_call()
        await asyncio.sleep(0.001)
        step = self.script[n] if n < len(self.script) else "accept"
        if step == "throttle":
            raise InvokeThrottled("TooManyRequestsException: Rate Exceeded.", self.retry_after_s)
        if step == "error":
            raise InvokeError("ServiceException: boom")
        if step == "unreachable":
            raise InvokeUnreachable("cannot reach Lambda at http://127.0.0.1:9: refused")
        return f"req-{order_id}-{n}"

    async def close(self) -> None:
        pass


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond pauses, and a cap far below any Retry-After the tests send."""
    monkeypatch.setattr(dispatcher_module, "THROTTLE_BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(dispatcher_module, "THROTTLE_BACKOFF_MAX_S", 0.01)
    monkeypatch.setattr(dispatcher_module, "INVOKE_BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(dispatcher_module, "INVOKE_BACKOFF_MAX_S", 0.002)


def run_until(dispatcher: Dispatcher, done: Callable[[], bool], timeout_s: float = 20) -> None:
    thread = threading.Thread(target=dispatcher.run)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    dispatcher.stop()
    thread.join(timeout_s)
    assert not thread.is_alive()


def test_throttled_invokes_are_retried_past_the_attempt_budget_and_never_dead_lettered(
    ledger: Ledger,
) -> None:
    ids = [f"T-{i}" for i in range(40)]
    transport = ListTransport(ids)
    throttles_each = MAX_INVOKE_ATTEMPTS + 3
    lam = ScriptedLambda(["throttle"] * throttles_each, retry_after_s=3600.0)
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery", max_in_flight=16)  # type: ignore[arg-type]
    run_until(dispatcher, lambda: transport.settled().get("ack") == len(ids))
    assert transport.settled() == {"ack": len(ids)}
    assert dispatcher.stats.dispatched == len(ids)
    assert dispatcher.stats.dead_lettered == 0
    assert dispatcher.stats.throttles == throttles_each * len(ids)
    assert dispatcher.stats.invoke_retries == 0, "throttles are not failed attempts"
    assert all(n == throttles_each + 1 for n in lam.calls.values())
    assert ledger.counts()[OrderState.FAILED] == 0


def test_orders_behind_a_throttled_one_go_on_while_it_waits_out_its_pauses(
    ledger: Ledger,
) -> None:
    """One invoke in flight at most: the throttled order gives its slot up between its
    tries, so the orders behind it are accepted meanwhile, not after it."""
    ids = ["SLOW", *[f"Q-{i}" for i in range(5)]]
    transport = ListTransport(ids)
    lam = ScriptedLambda(["throttle"] * 20)
    accepted: list[str] = []

    async def invoke_event(function_name: str, payload: bytes) -> str:
        order_id = Order.from_message(payload).order_id
        if order_id == "SLOW":
            answer = await ScriptedLambda.invoke_event(lam, function_name, payload)
        else:
            await asyncio.sleep(0.001)
            answer = "req"
        accepted.append(order_id)
        return answer

    lam.invoke_event = invoke_event  # type: ignore[method-assign]
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery", max_in_flight=1)  # type: ignore[arg-type]
    run_until(dispatcher, lambda: transport.settled().get("ack") == len(ids))
    assert transport.settled() == {"ack": len(ids)}
    assert accepted == [*[f"Q-{i}" for i in range(5)], "SLOW"]
    assert lam.calls["SLOW"] == 21
    assert dispatcher.stats.throttles == 20


def test_throttles_between_real_errors_do_not_use_up_or_extend_the_attempts(
    ledger: Ledger,
) -> None:
    transport = ListTransport(["E-1"])
    script = ["throttle", "error", "throttle", "throttle"] + ["error"] * MAX_INVOKE_ATTEMPTS
    lam = ScriptedLambda(script)
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery")  # type: ignore[arg-type]
    run_until(dispatcher, lambda: transport.settled() == {"dead-letter": 1})
    assert transport.settled() == {"dead-letter": 1}
    assert lam.calls["E-1"] == 3 + MAX_INVOKE_ATTEMPTS, "five errors, whatever the throttles"
    assert dispatcher.stats.throttles == 3
    assert dispatcher.stats.invoke_retries == MAX_INVOKE_ATTEMPTS - 1


def test_an_endpoint_that_does_not_answer_holds_orders_past_the_attempts_and_loses_none(
    ledger: Ledger,
) -> None:
    # a Lambda service restarting (or an endpoint outage) refuses connections for longer
    # than the attempts' backoff lasts: the orders wait for it, they are not failed
    ids = [f"U-{i}" for i in range(20)]
    transport = ListTransport(ids)
    outage = MAX_INVOKE_ATTEMPTS * 3
    lam = ScriptedLambda(["unreachable"] * outage + ["error"])
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery", max_in_flight=8)  # type: ignore[arg-type]
    run_until(dispatcher, lambda: transport.settled().get("ack") == len(ids))
    assert transport.settled() == {"ack": len(ids)}
    assert dispatcher.stats.dead_lettered == 0
    assert all(n == outage + 2 for n in lam.calls.values()), "an outage, an error, then accepted"
    assert ledger.counts()[OrderState.FAILED] == 0


def test_a_stopping_manager_requeues_what_is_waiting_out_a_throttle(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "THROTTLE_BACKOFF_MAX_S", 60.0)
    transport = ListTransport(["S-1", "S-2", "S-3"])
    lam = ScriptedLambda(["throttle"] * 1000, retry_after_s=30.0)
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery")  # type: ignore[arg-type]
    started = time.monotonic()
    run_until(dispatcher, lambda: dispatcher.stats.throttles >= 3)
    assert time.monotonic() - started < 5, "the 30 s pauses end when the manager stops"
    assert transport.settled() == {"requeue": 3}
    assert dispatcher.stats.dead_lettered == 0
    assert ledger.counts()[OrderState.FAILED] == 0


def test_throttling_shrinks_the_invokes_in_flight_and_successes_grow_them_back(
    ledger: Ledger,
) -> None:
    ids = [f"P-{i}" for i in range(200)]
    transport = ListTransport(ids)
    lam = ScriptedLambda(["throttle"] * 3)
    dispatcher = Dispatcher(transport, lam, ledger, "lambda_delivery", max_in_flight=64)  # type: ignore[arg-type]
    limits: list[int] = []
    lam.on_call = lambda: limits.append(dispatcher.invoke_limit.limit)
    run_until(dispatcher, lambda: transport.settled().get("ack") == len(ids))
    assert transport.settled() == {"ack": len(ids)}
    assert limits[0] == 64
    assert min(limits) <= 4, "halved again and again while every call was throttled"
    assert dispatcher.invoke_limit.limit == 64, "one more per accepted invoke, up to the top"
    assert dispatcher.invoke_limit.in_flight == 0


def test_invoke_limit_halves_once_per_round_and_grows_back_by_one() -> None:
    async def scenario() -> None:
        limit = InvokeLimit(8)
        for _ in range(8):
            await limit.acquire()
        assert limit.in_flight == 8
        sent_in = limit.round
        for _ in range(8):  # eight 429s of calls sent in the same round: one halving
            limit.throttled(sent_in)
            limit.release()
        assert limit.limit == 4
        for _ in range(5):  # later rounds halve again, never below 1
            limit.throttled(limit.round)
        assert limit.limit == 1

        await limit.acquire()
        waiter = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0)
        assert not waiter.done(), "at the limit: the next caller waits"
        limit.accepted()  # one success: one more allowed, the waiter goes
        await asyncio.sleep(0)
        assert waiter.done() and limit.in_flight == 2 and limit.limit == 2
        for _ in range(20):
            limit.accepted()
        assert limit.limit == 8, "back up to the ceiling, no further"

    asyncio.run(scenario())
