"""A large run's ledger records made on the fly, for the report's size and speed tests."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from courierflow.ledger.base import OrderRecord
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary

#: when the synthetic run's upload began
T0 = 1_700_000_000.0
#: one order in this many fails in the synthetic runs
FAIL_EVERY = 331
#: one order in this many takes a 30 s trip
SLOW_EVERY = 100_003


class SyntheticRun(Collection[OrderRecord]):
    """``n`` orders made afresh each time they are read, as a ledger's cursor would hand
    them over: one published every 0.7 ms, waiting up to 2 s, trips of 20-117 ms (about
    150 on the road at once); one in FAIL_EVERY failed, one in SLOW_EVERY 30 s long."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __contains__(self, item: object) -> bool:
        return any(item == r for r in self)

    def __iter__(self) -> Iterator[OrderRecord]:
        delivered_, failed = OrderState.DELIVERED, OrderState.FAILED
        for i in range(self.n):
            queued = T0 + i * 0.0007
            start = queued + (i % 1000) * 0.002
            end = start + (30.0 if i % SLOW_EVERY == 1 else 0.02 + (i % 97) * 0.001)
            if i % FAIL_EVERY:
                yield OrderRecord(f"ORD-{i:07d}", delivered_, "s3://b/big.csv", queued, queued,
                                  start, end, attempts=1)  # fmt: skip
            else:
                yield OrderRecord(f"ORD-{i:07d}", failed, "s3://b/big.csv", queued, queued,
                                  start, end, attempts=3, reason=f"gave up on {i}")  # fmt: skip

    def failed_ids(self) -> list[str]:
        return sorted(f"ORD-{i:07d}" for i in range(0, self.n, FAIL_EVERY))

    def summary(self) -> RunSummary:
        failed = len(range(0, self.n, FAIL_EVERY))
        return RunSummary("s3://b/big.csv", self.n, 0, self.n, 0, self.n - failed, failed, 0,
                          0, self.n * 0.0007 + 2.2, 160, 1428.6)  # fmt: skip


def main(argv: list[str]) -> None:
    """``python -m tests.reportdata N OUT.html``: write the report of an N-order synthetic
    run and print its size, the time and CPU it took, and the process's peak RSS."""
    import resource
    import sys
    import time
    from pathlib import Path

    from courierflow.report.html import render_report

    n, out = int(argv[0]), Path(argv[1])
    run = SyntheticRun(n)
    wall, cpu = time.perf_counter(), time.process_time()
    out.write_text(render_report(run.summary(), run, T0), encoding="utf-8")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(
        f"{n:,} orders: {out.stat().st_size / 1e6:.3f} MB in {wall:.1f} s "
        f"({cpu:.1f} s CPU), peak RSS {peak_mb:.0f} MB\n"
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
