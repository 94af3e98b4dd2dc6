"""The one backoff formula every retry loop uses: exponential, capped, with full jitter.

Full jitter (a pause drawn uniformly between zero and the exponential cap) spreads the
retries of many clients that failed together, so they do not come back together; AWS's
architecture blog ("Exponential Backoff And Jitter") measured it against the variants.
Each caller names its own first and largest pause as constants next to its attempts.
"""

from __future__ import annotations

import random

#: the exponent stops growing here: 2**60 times any base is past every cap, and a
#: larger power of two would overflow a float
MAX_EXPONENT = 60


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure).

    Drawn uniformly from ``[0, min(max_s, base_s * 2**(attempt - 1))]``: the cap doubles
    with each failure, from ``base_s`` up to ``max_s``.

    Parameters:
        attempt: failures so far, counting the one just seen (values below 1 count as 1).
        base_s: the cap after the first failure, in seconds.
        max_s: the largest pause, in seconds.
        rng: the random source (tests pass a seeded one); the ``random`` module otherwise.
    """
    exponent = min(max(attempt, 1) - 1, MAX_EXPONENT)
    cap = min(max_s, base_s * 2.0**exponent)
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(0.0, cap)
