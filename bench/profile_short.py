"""Where the CPU per order goes: the short-deliveries regime (courierflow only) with
py-spy sampling the manager, the Lambda service, the publisher's environment and a few
delivery environments, then each process's hottest functions.

    python -m bench.profile_short [ORDERS] [--environments N] [--fleet N] [--rate HZ]

An environment handles 1/fleet of the orders, so to give py-spy enough samples of the
environments run a small fleet (e.g. 5,000 orders, --fleet 8 --environments 8).

Needs py-spy (``pip install py-spy``; not a dependency of the bench extra). py-spy runs
``--nonblocking`` and counts only active samples (a thread waiting in a system call is
not sampled), so a function's share of samples approximates its share of the process's
CPU; but a process that is runnable and waiting for a core (e.g. preempted inside a
socket write that woke another process) is sampled as active too, so on a crowded
machine the shares lean towards such waits: ``--gil`` keeps only samples holding the
GIL (Python code; system calls that release it are missed). Writes bench/results/profile_short.json
(the raw stacks under bench/results/tmp/profile/, not kept in git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, services, write_orders_csv
from bench.short import FLEET, TIME_SCALE
from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.local import runner, stack

#: samples per second of each py-spy
RATE = 100
#: functions listed per process
TOP = 15
#: frames that sit under everything (an event loop, a module) and say nothing
SKIP_INCLUSIVE = 0.9


def _spy(pid: int, out: Path, rate: int, subprocesses: bool, gil: bool) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if exe is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--nolineno"]
    argv += ["--nonblocking", "--rate", str(rate), "--output", str(out)]
    argv += ["--subprocesses"] if subprocesses else []
    argv += ["--gil"] if gil else []
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hottest(*raws: Path) -> dict[str, Any]:
    """Self and inclusive shares over py-spy raw files (``frame;frame;... count``)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in (text for raw in raws for text in raw.read_text().splitlines()):
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):  # the first frame is the process or thread
            inclusive[frame] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    return {
        "samples": total,
        "self": [(f, round(n / total, 3)) for f, n in own.most_common(TOP)],
        # courierflow's own functions, with what they call: what a change can act on
        "inclusive": [
            (f, round(n / total, 3))
            for f, n in inclusive.most_common()
            if n / total < SKIP_INCLUSIVE and "(courierflow/" in f
        ][:TOP],
    }


def run(
    n: int, environments: int, fleet: int = FLEET, rate: int = RATE, gil: bool = False
) -> dict[str, Any]:
    with services() as svc:
        home = svc.work / "profiled"
        env = {**os.environ, "COURIERFLOW_HOME": str(home), "COURIERFLOW_AMQP_URL": svc.amqp_url}
        options = stack.StackOptions(fleet=fleet, time_scale=TIME_SCALE, provisioned=fleet)
        path = write_orders_csv(svc.work / "profiled.csv", n)
        info = stack.up(Settings.from_env(env), options)
        spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            service = psutil.Process(info.pids["lambda"])
            zygotes = service.children()
            publisher = [z for z in zygotes if stack.PUBLISHER in " ".join(z.cmdline())]
            delivery = [z for z in zygotes if z not in publisher]
            targets = {
                "manager": (info.pids["manager-0"], False),
                "lambda_service": (service.pid, False),
                "reconciler": (info.pids["reconciler"], False),
                "publisher": (publisher[0].pid, True),  # its environment forks on the event
            }
            for i, proc in enumerate(delivery[0].children()[:environments]):
                targets[f"environment-{i}"] = (proc.pid, False)
            for name, (pid, children) in targets.items():
                out = (
                    RESULTS / "tmp" / "profile" / f"{name}-fleet{fleet}{'-gil' if gil else ''}.txt"
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                spies[name] = (_spy(pid, out, rate, children, gil), out)
            time.sleep(1)
            started = time.time()
            key, etag = runner.upload(info, path)
            result = runner.follow(
                open_ledger(info.ledger_url), info.bucket, key, etag, started, 120
            )
        finally:
            for proc, _ in spies.values():
                proc.send_signal(signal.SIGINT)
            for proc, _ in spies.values():
                proc.wait(60)
            stack.down(home)
    profiles = {name: hottest(out) for name, (_, out) in spies.items() if out.exists()}
    stacks = [out for name, (_, out) in spies.items() if name.startswith("environment")]
    if stacks:
        profiles["environments (together)"] = hottest(*[p for p in stacks if p.exists()])
    return {
        "orders": n,
        "fleet": fleet,
        "rate_hz": rate,
        "gil_only": gil,
        "delivered": result.delivered,
        "makespan_s": result.makespan_s,
        "processes": profiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("orders", type=int, nargs="?", default=20_000)
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=FLEET)
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument(
        "--gil", action="store_true", help="only samples holding the GIL (Python's own CPU)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_short.json")
    args = parser.parse_args()
    result = run(args.orders, args.environments, args.fleet, args.rate, args.gil)
    args.out.write_text(json.dumps(result, indent=2))
    for name, prof in result["processes"].items():
        print(f"\n== {name}: {prof['samples']} samples")
        for label, rows in (("self", prof["self"]), ("inclusive", prof["inclusive"])):
            print(f"  {label}:")
            for frame, share in rows:
                print(f"    {share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
