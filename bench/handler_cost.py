"""What one delivery costs inside its execution environment, apart from the Lambda
service and the runtime's loop: the real `lambda_delivery` handler on a real SQLite
ledger, called in forked processes that sleep through their trips as environments do.

    python -m bench.handler_cost [--processes 1,64] [--calls 100] [--time-scale 0.01]

For each process count it runs three variants, interleaved: ``hot`` (one process, no
trip, the handler called back to back: the best case), ``ledger`` (the handler as it
ships) and ``no-ledger`` (the ledger's claim and completion replaced by constants), and
prints the user and system CPU per call over the processes (each process's own
``getrusage`` around its timed calls, after one untimed call that opens the ledger).
The gap between ``hot`` and ``ledger`` is what running cold costs: a process woken after
its trip finds its caches taken by the others. Writes nothing but a scratch ledger.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from typing import Any

#: the handler's settings: the lab's delays at the short regime's time scale
DELAYS = {"COURIERFLOW_DELAY_MIN": "2", "COURIERFLOW_DELAY_MAX": "10"}


class _Context:
    function_name = "lambda_delivery"
    memory_limit_in_mb = "128"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:lambda_delivery"
    aws_request_id = ""

    def get_remaining_time_in_millis(self) -> int:
        return 15_000


def _child(variant: str, index: int, calls: int, work: str, report: int) -> None:
    """One process: a first delivery (the ledger's connection opens), then ``calls``
    timed ones, its output into a memory file as in an environment (emptied per call);
    writes its user and system CPU seconds of the timed calls to ``report``."""
    from courierflow.functions import delivery  # imported after the environment is set
    from courierflow.ledger.base import ClaimResult

    if variant == "no-ledger":
        ledger: Any = delivery._courier.ledger
        ledger.claim_delivery = lambda *_args: ClaimResult.CLAIMED
        ledger.complete_delivery = lambda *_args: True
    output = os.memfd_create("output")
    os.dup2(output, 1)
    os.dup2(output, 2)
    context = _Context()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for call in range(-1, calls):
        if call == 0:
            before = resource.getrusage(resource.RUSAGE_SELF)
        order_id = f"{work}-{variant}-{index}-{call}"
        context.aws_request_id = order_id
        delivery.lambda_handler({"order_id": order_id}, context)
        os.lseek(output, 0, os.SEEK_SET)
        os.ftruncate(output, 0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    line = f"{after.ru_utime - before.ru_utime} {after.ru_stime - before.ru_stime}\n"
    os.write(report, line.encode())
    os._exit(0)


def run(variant: str, processes: int, calls: int, time_scale: float) -> dict[str, float]:
    """CPU per call of ``processes`` forked processes making ``calls`` deliveries each."""
    work = tempfile.mkdtemp(prefix="courierflow-handler-cost-")
    scale = "0" if variant == "hot" else str(time_scale)
    env = {
        "COURIERFLOW_LEDGER_URL": f"sqlite:///{work}/ledger.db",
        "COURIERFLOW_TIME_SCALE": scale,
        **DELAYS,
    }
    read_end, write_end = os.pipe()
    began = time.perf_counter()
    pids = []
    for index in range(processes):
        pid = os.fork()
        if pid == 0:
            os.environ.update(env)
            gc.freeze()
            _child(variant, index, calls, os.path.basename(work), write_end)
        pids.append(pid)
    os.close(write_end)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read_end) as reports:
        times = [tuple(map(float, line.split())) for line in reports]
    n = len(times) * calls
    return {
        "user_us": sum(t[0] for t in times) / n * 1e6,
        "system_us": sum(t[1] for t in times) / n * 1e6,
        "calls_per_s": processes * calls / (time.perf_counter() - began),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", default="1,64")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| processes | variant | user µs/call | system µs/call | total |")
    print("|---|---|---|---|---|")
    for processes in (int(p) for p in args.processes.split(",")):
        for _ in range(args.repeats):
            for variant in ("hot", "ledger", "no-ledger"):
                count = 1 if variant == "hot" else processes
                calls = args.calls * processes if variant == "hot" else args.calls
                got = run(variant, count, calls, args.time_scale)
                total = got["user_us"] + got["system_us"]
                print(
                    f"| {processes} | {variant} | {got['user_us']:.0f} | "
                    f"{got['system_us']:.0f} | {total:.0f} |",
                    flush=True,
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
