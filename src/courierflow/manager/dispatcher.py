"""The manager: consume orders and hand each to its own delivery Lambda.

Each message is invoked asynchronously (``InvocationType='Event'``) from an asyncio loop
with many calls in flight, so a slow Invoke call never holds up the others, and acked
only once Lambda accepted the event (HTTP 202). Failed invokes are retried with backoff;
after the last attempt the message is dead-lettered and the order marked failed, never
dropped.

A throttled invoke (429 ``TooManyRequestsException``: the account's request rate or
concurrency is used up, as on AWS Academy's Learner Lab with its concurrency of 10) is
not a failure of the order: it is retried with its own backoff, as often as it takes,
while the message stays unacked; and the invokes allowed in flight shrink (halved on a
throttle, one more back per success) so the manager does not hammer Lambda meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from courierflow import faults
from courierflow.backoff import backoff_delay
from courierflow.errors import InvokeError, InvokeThrottled, InvokeUnreachable
from courierflow.ledger.base import Ledger
from courierflow.manager.event_invoker import EventInvoker
from courierflow.manager.invoke_limit import InvokeLimit
from courierflow.orders import Order
from courierflow.transports.base import QueuedMessage, Transport

log = logging.getLogger(__name__)

#: attempts at one Invoke call before the message is dead-lettered
MAX_INVOKE_ATTEMPTS = 5
#: the longest pause after a first failed invoke, doubling per failure up to the largest,
#: in seconds (``backoff_delay``: each pause drawn between zero and that)
INVOKE_BACKOFF_BASE_S = 0.4
INVOKE_BACKOFF_MAX_S = 5.0
#: the same for a throttled invoke, in seconds (the pause is added to Lambda's Retry-After
#: hint, if any; the sum never exceeds the largest). Throttles never use up the attempts
THROTTLE_BACKOFF_BASE_S = 0.1
THROTTLE_BACKOFF_MAX_S = 20.0
#: how often a throttled invoke waiting for its retry looks whether the manager is stopping
THROTTLE_STOP_CHECK_S = 0.25
#: Invoke calls in flight at once (each waits on a network round trip; on the asyncio
#: loop they cost no thread). 256 covers ~8,000 invokes/s at 30 ms
DEFAULT_MAX_IN_FLIGHT = 256
#: unacknowledged messages the broker may hand us
DEFAULT_PREFETCH = 1024
#: seconds a stopping manager waits for its invokes in flight (5 attempts fit in it)
SHUTDOWN_WAIT_S = 180.0
#: most dispatches recorded in one ledger write, and the longest a record waits
RECORD_BATCH = 500
RECORD_EVERY_S = 0.05


class DispatchRecorder:
    """Records dispatches in the ledger from one thread, many per write.

    A write per order from every invoke thread would make the threads queue for the
    ledger (its file lock) instead of calling Lambda. The record is a convenience (the
    delivery's own claim is what keeps an order from running twice), so the message is
    acked without waiting for it; ``close`` writes what is still pending. Each order
    keeps the time Lambda accepted it, not the time of the write.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._pending: dict[str, float] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dispatch-recorder", daemon=True)
        self._thread.start()

    def add(self, order_id: str) -> None:
        accepted_at = time.time()
        with self._cond:
            self._pending[order_id] = accepted_at
            if len(self._pending) >= RECORD_BATCH:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed and len(self._pending) < RECORD_BATCH:
                    self._cond.wait(RECORD_EVERY_S)
                batch, self._pending = self._pending, {}
                closed = self._closed
            if batch:
                try:
                    self.ledger.mark_dispatched(batch)
                except Exception:
                    log.exception("could not record %d dispatches", len(batch))
            if closed and not self._pending:
                return


@dataclass
class DispatchStats:
    """Counters a running manager keeps (thread-safe increments under ``lock``)."""

    dispatched: int = 0
    dead_lettered: int = 0
    #: second invokes sent on purpose (``duplicate_rate``)
    duplicates_injected: int = 0
    invoke_retries: int = 0
    #: invokes Lambda refused with 429 (each retried later, never dead-lettered)
    throttles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class Dispatcher:
    """Consumes a transport and invokes the delivery function once per order.

    Messages arrive on the transport's thread; each becomes a task on one asyncio loop
    (its own thread), where up to ``max_in_flight`` Invoke calls wait for Lambda at once
    (fewer while Lambda throttles: see ``InvokeLimit``)."""

    def __init__(
        self,
        transport: Transport,
        invoker: EventInvoker,
        ledger: Ledger,
        function_name: str,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        prefetch: int = DEFAULT_PREFETCH,
        duplicate_rate: float = 0.0,
    ) -> None:
        self.transport = transport
        self.invoker = invoker
        self.ledger = ledger
        self.function_name = function_name
        self.max_in_flight = max_in_flight
        self.prefetch = prefetch
        self.duplicate_rate = duplicate_rate
        self.stats = DispatchStats()
        self.stop_event = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="invoke-loop", daemon=True
        )
        #: Invoke calls allowed in flight (fewer than ``max_in_flight`` while Lambda throttles)
        self.invoke_limit = InvokeLimit(max_in_flight)
        #: messages handed over by the transport's thread, not yet started on the loop
        self._arrived: list[tuple[Order, QueuedMessage]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tasks_lock = threading.Lock()
        #: messages handed over and not yet settled; ``_idle`` is set when none are
        self._unfinished = 0
        self._idle = threading.Event()
        self._recorder = DispatchRecorder(ledger)

    def run(self) -> None:
        """Consume until ``stop()``; then finish the invokes in flight and settle them."""
        log.info(
            "manager dispatching to %s, %d invokes in flight",
            self.function_name,
            self.max_in_flight,
        )
        self._loop_thread.start()
        try:
            self.transport.consume(self._on_message, self.prefetch, self.stop_event)
        finally:
            with self._tasks_lock:
                if self._unfinished == 0:
                    self._idle.set()
            if not self._idle.wait(SHUTDOWN_WAIT_S):
                log.warning("invokes still running at shutdown; the queue redelivers them")
            asyncio.run_coroutine_threadsafe(self.invoker.close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
            self._recorder.close()
            log.info(
                "manager stopped: %d dispatched, %d dead-lettered, %d duplicates injected, "
                "%d throttled invokes",
                self.stats.dispatched,
                self.stats.dead_lettered,
                self.stats.duplicates_injected,
                self.stats.throttles,
            )

    def stop(self) -> None:
        self.stop_event.set()

    def _on_message(self, message: QueuedMessage) -> None:
        try:
            order = Order.from_message(message.body)
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("not a valid order, dead-lettered: %s (%r)", exc, message.body[:200])
            self.stats.add("dead_lettered")
            message.reject(requeue=False)
            return
        with self._tasks_lock:
            wake = not self._arrived
            self._arrived.append((order, message))
            self._unfinished += 1
            self._idle.clear()
        if wake:  # one wake-up of the loop takes every message that arrived meanwhile
            self._loop.call_soon_threadsafe(self._start_arrived)

    def _start_arrived(self) -> None:
        with self._tasks_lock:
            arrived, self._arrived = self._arrived, []
        for order, message in arrived:
            task = self._loop.create_task(self._dispatch(order, message))
            self._tasks.add(task)  # a reference until it is done (the loop keeps none)
            task.add_done_callback(self._tasks.discard)

    def _finished(self) -> None:
        with self._tasks_lock:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._idle.set()

    async def _dispatch(self, order: Order, message: QueuedMessage) -> None:
        try:
            await self._invoke_with_retries(order, message)
        except Exception:  # a bug must not leave the message unsettled until a restart
            log.exception("dispatch failed; message requeued", extra={"order_id": order.order_id})
            message.reject(requeue=True)
        finally:
            self._finished()

    async def _invoke_with_retries(self, order: Order, message: QueuedMessage) -> None:
        """Invoke until Lambda accepts; a failed attempt holds its slot while it backs off,
        a throttled one gives the slot up and does not count as an attempt, and neither
        does an unanswered one (an outage of the endpoint: the order waits for it)."""
        extra = {"order_id": order.order_id}
        payload = order.to_json()
        reason = ""
        attempt = 0
        throttles = 0
        outages = 0
        limit = self.invoke_limit
        await limit.acquire()
        holding = True
        try:
            while True:
                sent_in_round = limit.round
                try:
                    await self.invoker.invoke_event(self.function_name, payload)
                except InvokeThrottled as exc:
                    limit.throttled(sent_in_round)
                    limit.release()
                    holding = False
                    throttles += 1
                    if not await self._throttle_pause(exc, throttles, extra):
                        message.reject(requeue=True)  # shutting down: still unacked, requeue
                        return
                    await limit.acquire()
                    holding = True
                    continue
                except InvokeUnreachable as exc:
                    outages += 1
                    if not await self._outage_pause(exc, outages, extra):
                        message.reject(requeue=True)  # shutting down: still unacked, requeue
                        return
                    continue
                except InvokeError as exc:
                    reason = str(exc)
                else:
                    limit.accepted()
                    await self._handed_on(order, message)
                    return
                attempt += 1
                log.warning(
                    "invoke failed [%d/%d]: %s", attempt, MAX_INVOKE_ATTEMPTS, reason, extra=extra
                )
                if self.stop_event.is_set():
                    message.reject(requeue=True)  # shutting down: let another manager have it
                    return
                if attempt >= MAX_INVOKE_ATTEMPTS:
                    break
                self.stats.add("invoke_retries")
                await asyncio.sleep(
                    backoff_delay(attempt, INVOKE_BACKOFF_BASE_S, INVOKE_BACKOFF_MAX_S)
                )
            reason = f"invoke failed {MAX_INVOKE_ATTEMPTS} times: {reason}"
            await asyncio.to_thread(self._dead_letter, order, message, reason)
        finally:
            if holding:
                limit.release()

    async def _outage_pause(
        self, exc: InvokeUnreachable, outages: int, extra: dict[str, str]
    ) -> bool:
        """Wait before trying an unanswered invoke again (the order keeps its slot, so
        an outage stops new invokes instead of piling them up); False when the manager
        is stopping."""
        self.stats.add("invoke_retries")
        log.warning("Lambda did not answer (order held, try %d): %s", outages, exc, extra=extra)
        if self.stop_event.is_set():
            return False
        await asyncio.sleep(backoff_delay(outages, INVOKE_BACKOFF_BASE_S, INVOKE_BACKOFF_MAX_S))
        return not self.stop_event.is_set()

    async def _throttle_pause(
        self, exc: InvokeThrottled, throttles: int, extra: dict[str, str]
    ) -> bool:
        """Back off before a throttled invoke is sent again: Lambda's Retry-After hint plus
        exponential backoff with jitter, at most ``THROTTLE_BACKOFF_MAX_S``.

        Returns False, at once, when the manager is stopping (the caller requeues)."""
        self.stats.add("throttles")
        jitter = backoff_delay(throttles, THROTTLE_BACKOFF_BASE_S, THROTTLE_BACKOFF_MAX_S)
        delay = min(THROTTLE_BACKOFF_MAX_S, (exc.retry_after_s or 0.0) + jitter)
        log.info(
            "invoke throttled [%d], trying again in %.2f s: %s", throttles, delay, exc, extra=extra
        )
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, THROTTLE_STOP_CHECK_S))
        return False

    async def _handed_on(self, order: Order, message: QueuedMessage) -> None:
        """Lambda accepted the event: ack the message, record the dispatch soon after."""
        if faults.chosen(order.order_id, self.duplicate_rate, salt="duplicate"):
            await self._invoke_again(order)
        self._recorder.add(order.order_id)
        message.ack()
        self.stats.add("dispatched")

    async def _invoke_again(self, order: Order) -> None:
        """Fault injection: the same event a second time, as at-least-once allows."""
        extra = {"order_id": order.order_id}
        try:
            await self.invoker.invoke_event(self.function_name, order.to_json())
        except InvokeError as exc:
            log.warning("injected duplicate invoke failed: %s", exc, extra=extra)
            return
        log.info("injected duplicate invoke", extra=extra)
        self.stats.add("duplicates_injected")

    def _dead_letter(self, order: Order, message: QueuedMessage, reason: str) -> None:
        log.error("dead-lettered: %s", reason, extra={"order_id": order.order_id})
        try:
            self.ledger.mark_failed(order.order_id, reason, time.time())
        except Exception:
            log.exception("could not record the failure", extra={"order_id": order.order_id})
        self.stats.add("dead_lettered")
        message.reject(requeue=False)
