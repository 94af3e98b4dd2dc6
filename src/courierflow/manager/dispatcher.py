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
import collections
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

from courierflow import faults
from courierflow.backoff import backoff_delay
from courierflow.errors import InvokeError, InvokeThrottled, InvokeUnreachable
from courierflow.ledger.base import Ledger
from courierflow.manager.event_invoker import EventInvoker
from courierflow.manager.invoke_limit import InvokeLimit
from courierflow.manager.recorder import DispatchRecorder, DispatchStats
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


class Dispatcher:
    """Consumes a transport and invokes the delivery function once per order.

    Messages arrive on the transport's thread and are taken by worker tasks on one
    asyncio loop (its own thread), where up to ``max_in_flight`` Invoke calls wait for
    Lambda at once (fewer while Lambda throttles: see ``InvokeLimit``)."""

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
        #: messages on the loop waiting for a worker (loop thread only)
        self._waiting: collections.deque[tuple[Order, QueuedMessage]] = collections.deque()
        #: workers running (loop thread only), at most ``max_in_flight``
        self._workers = 0
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
        self._waiting.extend(arrived)
        wanted = min(len(self._waiting), max(1, self.max_in_flight) - self._workers)
        for _ in range(wanted):
            self._workers += 1
            self._spawn(self._work())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)  # a reference until it is done (the loop keeps none)
        task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        """Dispatch waiting messages one after another, each once it has a slot of the
        ``invoke_limit``: a task per slot in flight rather than one per message (making
        the task was 10% of the manager's GIL samples: docs/performance.md). A message
        whose first invoke is not accepted goes on in a task of its own, slot included,
        so a retry or a pause never holds a worker up."""
        limit = self.invoke_limit
        try:
            while self._waiting:
                await limit.acquire()
                if not self._waiting:  # another worker took the last one meanwhile
                    limit.release()
                    return
                order, message = self._waiting.popleft()
                await self._first_attempt(order, message)
        finally:
            self._workers -= 1

    async def _first_attempt(self, order: Order, message: QueuedMessage) -> None:
        """Invoke with the slot the worker holds; on the fast path (accepted) settle the
        message here, otherwise hand the order and its slot to ``_dispatch``."""
        limit = self.invoke_limit
        sent_in_round = limit.round
        try:
            await self.invoker.invoke_event(self.function_name, order.to_json())
        except InvokeError as exc:
            self._spawn(self._dispatch(order, message, (exc, sent_in_round)))
            return
        except Exception:
            limit.release()
            self._requeue_after_bug(order, message)
            self._finished()
            return
        try:
            limit.accepted()
            await self._handed_on(order, message)
        except Exception:
            self._requeue_after_bug(order, message)
        finally:
            limit.release()
            self._finished()

    def _requeue_after_bug(self, order: Order, message: QueuedMessage) -> None:
        """A bug must not leave the message unsettled until a restart."""
        log.exception("dispatch failed; message requeued", extra={"order_id": order.order_id})
        message.reject(requeue=True)

    def _finished(self) -> None:
        with self._tasks_lock:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._idle.set()

    async def _dispatch(
        self, order: Order, message: QueuedMessage, first: tuple[InvokeError, int]
    ) -> None:
        try:
            await self._invoke_with_retries(order, message, first)
        except Exception:
            self._requeue_after_bug(order, message)
        finally:
            self._finished()

    async def _invoke_with_retries(
        self, order: Order, message: QueuedMessage, first: tuple[InvokeError, int]
    ) -> None:
        """Invoke until Lambda accepts; a failed attempt holds its slot while it backs off,
        a throttled one gives the slot up and does not count as an attempt, and neither
        does an unanswered one (an outage of the endpoint: the order waits for it).

        ``first``: how the worker's first attempt failed, and the round it was sent in;
        its slot comes with it (held on entry)."""
        extra = {"order_id": order.order_id}
        payload = order.to_json()
        reason = ""
        attempt = 0
        throttles = 0
        outages = 0
        limit = self.invoke_limit
        pending: tuple[InvokeError, int] | None = first
        holding = True
        try:
            while True:
                try:
                    if pending is not None:  # the worker's attempt, handled as this loop's own
                        failed, sent_in_round = pending
                        pending = None
                        raise failed
                    sent_in_round = limit.round
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
