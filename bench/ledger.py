"""Ledger: a burst of claims from many processes at once on the SQLite ledger.

This is what a fleet of delivery environments does when a file's first orders arrive:
every process claims its order in the same file at the same moment.
Standalone: ``python -m bench.ledger [PROCESSES] [CLAIMS_EACH]``.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary
from courierflow.ledger.sqlite import SQLiteLedger

#: seconds the processes get to start and open the ledger before the burst
START_DELAY_S = 2.0


def _claimer(path: str, start_at: float, claims: int, out: Any) -> None:
    ledger = SQLiteLedger(path)
    ledger.get_order("warm-up")  # the connection is open before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(claims):
        ledger.claim_delivery(f"O-{multiprocessing.current_process().pid}-{i}", "r", 60, 1.0)
    out.put(time.time() - start_at)


def burst(processes: int, claims: int) -> dict[str, float]:
    """Seconds until every process made its claims, and claims per second."""
    with tempfile.TemporaryDirectory(prefix="courierflow-ledger-bench-") as work:
        path = str(Path(work) / "ledger.db")
        SQLiteLedger(path).add_queued(["warm-up"], "bench", 0.0)
        out: multiprocessing.Queue[float] = multiprocessing.Queue()
        start_at = time.time() + START_DELAY_S
        workers = [
            multiprocessing.Process(target=_claimer, args=(path, start_at, claims, out))
            for _ in range(processes)
        ]
        for proc in workers:
            proc.start()
        try:
            done = [out.get(timeout=120) for _ in workers]
        finally:
            for proc in workers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    makespan = max(done)
    return {"all_done_s": makespan, "claims_per_s": processes * claims / makespan}


def run(processes: int, claims: int, repeats: int) -> dict[str, Any]:
    runs = [burst(processes, claims) for _ in range(repeats)]
    return {
        "processes": processes,
        "claims_each": claims,
        "all_done_s": summary([r["all_done_s"] for r in runs]),
        "claims_per_s": summary([r["claims_per_s"] for r in runs]),
    }


if __name__ == "__main__":
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    claims = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    print(json.dumps(run(processes, claims, repeats=3), indent=2))
