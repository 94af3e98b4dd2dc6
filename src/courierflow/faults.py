"""Fault injection by configuration, for tests and demonstrations of the guarantees.

Orders are chosen by a hash of their id, so the same orders are chosen on every attempt
(retries cannot hide the fault) and a test can count exactly how many were chosen.
"""

from __future__ import annotations

import zlib

#: resolution of the rates (1/10,000)
_BUCKETS = 10_000


def chosen(order_id: str, rate: float, salt: str = "") -> bool:
    """Whether ``order_id`` is among the fraction ``rate`` of orders picked for a fault.

    ``salt`` keeps different faults (failures, duplicates) from picking the same orders.
    """
    return rate > 0 and (zlib.crc32((salt + order_id).encode()) % _BUCKETS) < rate * _BUCKETS
