"""Handlers the benchmarks run in the local Lambda service."""

from __future__ import annotations

import time
from typing import Any


def noop(event: Any, context: Any) -> dict[str, bool]:
    return {"ok": True}


def sleeper(event: Any, context: Any) -> dict[str, float]:
    seconds = float(event.get("seconds", 30)) if isinstance(event, dict) else 30.0
    time.sleep(seconds)
    return {"slept": seconds}
