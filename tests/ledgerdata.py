"""A large run's SQLite ledger, written in one transaction, for the summary's memory test
and for measuring the summary of a million orders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState

#: the synthetic run's file and when its upload began
SOURCE = "s3://b/big.csv"
T0 = 1_700_000_000.0
#: one order in this many failed; one in STILL_DELIVERING_EVERY never finished
FAIL_EVERY = 131
STILL_DELIVERING_EVERY = 1009


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    """One started every 0.7 ms, trips of 20-117 ms, every other one claimed twice."""
    for i in range(n):
        queued = T0 + i * 0.0007
        start = queued + (i % 1000) * 0.002
        state, end, reason = OrderState.DELIVERED.value, start + 0.02 + (i % 97) * 0.001, ""
        if i % FAIL_EVERY == 0:
            state, reason = OrderState.FAILED.value, f"gave up on {i}"
        elif i % STILL_DELIVERING_EVERY == 0:
            state, end = OrderState.DELIVERING.value, None
        yield (f"ORD-{i:07d}", state, SOURCE, queued, queued, start, end, f"r{i}", 1, i % 2,
               reason, end or start)  # fmt: skip


def synthetic_ledger(path: Path, n: int) -> SQLiteLedger:
    """A SQLite ledger at ``path`` holding ``n`` orders of SOURCE, inserted as they are
    made (the triggers keep the running figures as for any write)."""
    ledger = SQLiteLedger(path)
    with ledger._write() as conn:
        conn.executemany(
            "INSERT INTO orders (order_id, state, source, queued_at, dispatched_at,"
            " started_at, finished_at, request_id, attempts, duplicates, reason, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _rows(n),
        )
    return ledger


def expected_counts(n: int) -> tuple[int, int, int]:
    """(delivered, failed, lost) of an ``n``-order synthetic run."""
    failed = len(range(0, n, FAIL_EVERY))
    lost = sum(1 for i in range(0, n, STILL_DELIVERING_EVERY) if i % FAIL_EVERY)
    return n - failed - lost, failed, lost


def main(argv: list[str]) -> None:
    """``python -m tests.ledgerdata N [DIR] [--report [--started]]``: write an N-order
    ledger (in DIR, default a temporary folder; a ledger already in DIR is read as it is),
    summarise it as `courierflow submit` does at the end of a run, and print the time and
    the process's peak RSS before and after. ``--report`` writes its report.html to DIR
    instead, as `courierflow report` does (no upload time, no summary handed in);
    ``--started`` hands it the upload time."""
    import resource
    import sys
    import tempfile
    import time

    from courierflow.report.html import write_report
    from courierflow.report.summary import summarize_ledger

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    flags = {arg for arg in argv if arg.startswith("--")}
    args = [arg for arg in argv if arg not in flags]
    n = int(args[0])
    folder = Path(args[1]) if len(args) > 1 else Path(tempfile.mkdtemp())
    if not (folder / "ledger.db").exists():
        synthetic_ledger(folder / "ledger.db", n).close()
    written = rss_mb()
    ledger = SQLiteLedger(folder / "ledger.db")
    wall, cpu = time.perf_counter(), time.process_time()
    if "--report" in flags:
        started = T0 if "--started" in flags else None
        write_report(ledger, SOURCE, started, folder / "report.html")
        what = "report.html" + (" (upload time given)" if started else "")
    else:
        summary = summarize_ledger(ledger, None, SOURCE, T0)
        assert (summary.delivered, summary.failed, summary.lost) == expected_counts(n)
        what = f"summary (peak concurrency {summary.peak_concurrency})"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sys.stdout.write(
        f"{n:,} orders: {what} in {wall:.1f} s ({cpu:.1f} s CPU); peak RSS {written:.0f} MB"
        f" before, {rss_mb():.0f} MB after\n"
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
