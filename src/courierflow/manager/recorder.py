"""What the manager keeps besides its invokes: the dispatches it records in the ledger
(many per write, from a thread of their own) and its counters."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from courierflow.ledger.base import Ledger

log = logging.getLogger(__name__)

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
