"""The account's limits, shared by every function of the service: concurrent executions,
and the rate of asynchronous Invoke requests.

Both are off unless configured. Set low, they make the service behave like an account
with reduced quotas (AWS Academy's Learner Lab and new accounts get a concurrency of 10):
events wait in their function's queue for a free execution, and Event invokes past the
request rate are refused with 429 ``TooManyRequestsException``, as Lambda refuses them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

#: the concurrency GetAccountSettings reports without a cap (AWS's default quota)
UNCAPPED_CONCURRENCY = 1000


class AccountConcurrency:
    """Executions running at once across every function (the account's concurrency).

    A slot is taken before an environment is, so while the account is full, events wait
    in their queue and start no environment. ``limit`` 0: no cap (executions are still
    counted). Waiters are served in arrival order. Used on the service's loop only.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now."""
        if self.limit and (self.running >= self.limit or self._waiters):
            return False
        self.running += 1
        return True

    async def acquire(self) -> None:
        """Take a slot, waiting for one if the account is at its limit."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # ``release`` handed its slot over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    @property
    def reported(self) -> int:
        """The account's concurrency as GetAccountSettings reports it."""
        return self.limit or UNCAPPED_CONCURRENCY


class TokenBucket:
    """Requests per second with a burst: each request takes a token, tokens come back at
    ``rate`` a second up to ``burst``. The bucket starts full."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> float:
        """Take a token: 0.0 when one was there, else the seconds until there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
