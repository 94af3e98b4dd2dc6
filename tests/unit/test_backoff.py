"""The one backoff formula: exponential caps, full jitter below them, never past the max."""

from __future__ import annotations

import random

import pytest

from courierflow.backoff import backoff_delay

pytestmark = pytest.mark.unit


def draws(attempt: int, base_s: float, max_s: float, n: int = 2000) -> list[float]:
    rng = random.Random(attempt)
    return [backoff_delay(attempt, base_s, max_s, rng) for _ in range(n)]


@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (40, 10.0)]
)
def test_the_cap_doubles_from_the_base_per_failure_up_to_the_max(attempt: int, cap: float) -> None:
    delays = draws(attempt, base_s=0.5, max_s=10.0)
    assert max(delays) <= cap
    assert max(delays) > 0.95 * cap, "the draws reach up to the cap"


def test_full_jitter_spreads_the_pause_from_zero_to_the_cap() -> None:
    delays = draws(4, base_s=1.0, max_s=60.0)  # cap 8 s
    assert min(delays) < 0.05 * 8
    assert 3.5 < sum(delays) / len(delays) < 4.5, "uniform: the mean is half the cap"


def test_a_seeded_source_gives_the_same_pauses() -> None:
    assert draws(3, 0.2, 5.0, n=5) == draws(3, 0.2, 5.0, n=5)


def test_a_huge_attempt_count_stays_at_the_max_without_overflowing() -> None:
    assert 0 <= backoff_delay(10**6, 0.1, 20.0) <= 20.0


def test_attempts_below_one_count_as_the_first_failure() -> None:
    assert max(draws(0, 0.5, 10.0)) <= 0.5
    assert max(draws(-3, 0.5, 10.0)) <= 0.5
