"""How many Invoke calls the manager keeps in flight: additive increase, multiplicative
decrease (AIMD). A throttle halves the limit once per round of invokes; each accepted
invoke grows it back by one, up to the configured most."""

from __future__ import annotations

import asyncio
import collections


class InvokeLimit:
    """How many Invoke calls may be in flight: ``ceiling`` until Lambda throttles, then
    additive increase, multiplicative decrease (AIMD, as TCP paces a congested link).

    A throttle halves the limit (never below 1), once per round: the 429s of calls sent
    before the last decrease say nothing about the new limit, so a burst of throttled
    answers halves it once, not once each. Every accepted invoke raises it by one, back
    up to ``ceiling``. Waiters are served in arrival order. Used on one asyncio loop only.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        #: decreases so far; a call remembers the round it was sent in
        self.round = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Wait for a slot (the fast path, under the limit with nobody waiting, is a count)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # ``_wake`` counted the slot as ours
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def accepted(self) -> None:
        """An invoke was accepted: one more allowed in flight, up to the ceiling."""
        if self.limit < self.ceiling:
            self.limit += 1
            self._wake()

    def throttled(self, sent_in_round: int) -> None:
        """An invoke sent in ``sent_in_round`` was throttled: halve, once per round."""
        if sent_in_round == self.round:
            self.limit = max(1, self.limit // 2)
            self.round += 1

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
