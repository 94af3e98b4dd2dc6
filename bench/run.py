"""`make bench`: every benchmark against its peers, on the same machine and data.

Writes bench/results/latest.json (or smoke.json), a markdown table and PNG plots.
``--smoke`` runs a tiny version that only checks the benchmarks still work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import (
    dispatch,
    e2e,
    invoker_framing,
    lambda_service_bench,
    ledger,
    publish,
    publisher_ledger,
    short,
)
from bench.common import RESULTS, services, spread


def machine() -> dict[str, Any]:
    try:
        rabbit = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
    except OSError:
        rabbit = "unknown"
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "rabbitmq": rabbit,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, {m['ram_gb']} GB RAM, Python {m['python']}, "
        f"RabbitMQ {m['rabbitmq']} ({m['date']}). "
        "Medians of the runs [min-max]; ratios of medians against peers.",
        "",
        "| measure | courierflow | peer | ratio |",
        "|---|---|---|---|",
    ]
    for rows, entry in results["publish"].items():
        ours = entry["courierflow"]["orders_per_s"]["median"]
        lines.append(
            f"| publish {int(rows):,} rows, orders/s (peak RSS) | "
            f"{spread(entry['courierflow']['orders_per_s'])} "
            f"({entry['courierflow']['rss_mb']['median']:.0f} MB) | "
            + (
                f"lab with confirms {entry['lab_confirms']['orders_per_s']['median']:,.0f}; "
                f"without {entry['lab']['orders_per_s']['median']:,.0f} | "
                f"{ours / entry['lab_confirms']['orders_per_s']['median']:.1f}x |"
                if "lab_confirms" in entry
                else "lab not run at this size | - |"
            )
        )
    for latency, entry in results["dispatch"].items():
        ours = entry["courierflow"]["orders_per_s"]["median"]
        lab = entry["lab"]["orders_per_s"]["median"]
        lines.append(
            f"| dispatch, Invoke latency {latency}, orders/s | "
            f"{spread(entry['courierflow']['orders_per_s'])} "
            f"| lab manager {lab:,.0f} | {ours / lab:.1f}x |"
        )
    if "invoker_framing" in results:
        fr = results["invoker_framing"]
        hand, aio = fr["orders_per_s"]["hand"], fr["orders_per_s"]["aiohttp"]
        ratio = fr["ratio_aiohttp_over_hand"]
        per = ratio["per_repetition"]
        lines.append(
            f"| manager's own HTTP framing, dispatch orders/s | {spread(hand)} | aiohttp "
            f"{spread(aio)} | aiohttp/hand {ratio['of_medians']:.2f} (per repetition "
            f"{per['min']:.2f}-{per['max']:.2f}) |"
        )
    e = results["e2e"]
    pool = e["celery"]["best_pool"]
    celery = e["celery"][pool]
    others = ", ".join(
        f"{name} {e['celery'][name]['deliveries_per_s']['median']:,.0f}/s"
        for name in e["celery"]
        if name not in ("best_pool", pool)
    )
    first = e["courierflow"]["runs"][0]
    variants = [("courierflow", "environments on demand"), ("courierflow_warm", "warm fleet")]
    for key, label in [(k, v) for k, v in variants if k in e]:
        ours = e[key]
        lines += [
            f"| end to end {first['orders']:,} orders, fleet {e['fleet']}, "
            f"delays x{e['time_scale']}, {label}: makespan s | "
            f"{spread(ours['makespan_s'], '.1f')} "
            f"({ours['makespan_over_ideal']['median']:.2f}x ideal) | Celery, {pool} pool: "
            f"{celery['makespan_s']['median']:.1f} | - |",
            f"| end to end, {label}: deliveries/s | {spread(ours['deliveries_per_s'])} | "
            f"Celery {pool} {celery['deliveries_per_s']['median']:,.0f} (other pools: "
            f"{others}) | "
            f"{ours['deliveries_per_s']['median'] / celery['deliveries_per_s']['median']:.2f}x |",
        ]
    qs = first["queue_to_start_s"]
    lines.append(
        f"| queue-to-start p50/p95/p99 s | {qs['p50']:.2f} / {qs['p95']:.2f} / "
        f"{qs['p99']:.2f} | - | - |"
    )
    if "upload_to_first_start_s" in first:
        over = first["delivery_overhead_s"]
        lines.append(
            f"| upload to first delivery start s; delivery overhead p50/p99 ms | "
            f"{first['upload_to_first_start_s']:.2f}; {over['p50'] * 1000:.1f} / "
            f"{over['p99'] * 1000:.1f} | - | - |"
        )
    if "ledger" in results:
        led = results["ledger"]
        lines.append(
            f"| ledger (SQLite): {led['processes']} processes claim {led['claims_each']} "
            f"orders each at once, s until all done | {spread(led['all_done_s'], '.2f')} "
            f"({led['claims_per_s']['median']:,.0f} claims/s) | - | - |"
        )
    if "publisher_ledger" in results:
        pl = results["publisher_ledger"]
        batched, per_order = pl["batched_ms_per_order"], pl["per_order_ms_per_order"]
        lines.append(
            f"| ledger (DynamoDB on moto): add_queued of {pl['orders']:,} new orders, "
            f"{pl['batch']} a call, client CPU ms/order | {spread(batched, '.3f')} | one "
            f"conditional write per order ({pl['per_order_orders']:,} orders): "
            f"{spread(per_order, '.3f')} | {per_order['median'] / batched['median']:.1f}x "
            "less CPU |"
        )
    if "short" in results:
        lines += short.rows(results["short"])
    ls = results["lambda_service"]
    acc = ls["accept"]["latency_ms"]
    env = ls["environments"]
    lines += [
        f"| Lambda service: Event accept at {ls['accept']['target_rate']}/s, p50/p99 ms "
        f"(client on the same 2 cores) | {acc['p50']:.1f} / {acc['p99']:.1f} | - | - |",
        f"| Lambda service: cold invoke / warm invoke p50, ms | "
        f"{ls['starts']['cold_invoke_ms']:.1f} / {ls['starts']['warm_invoke_ms']['p50']:.1f} "
        "| - | - |",
        f"| Lambda service: {env['environments']} sleeping environments, PSS (RSS sum) | "
        f"{env['pss_mb']:,.0f} MB ({env['rss_mb']:,.0f} MB) | - | - |",
    ]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    pub = results["publish"]
    sizes = [s for s in pub if "lab_confirms" in pub[s]]
    x = range(len(sizes))
    for offset, (name, label) in enumerate(
        [
            ("courierflow", "courierflow"),
            ("lab_confirms", "lab, confirms"),
            ("lab", "lab, no confirms"),
        ]
    ):
        axes[0].bar(
            [i + offset * 0.27 for i in x],
            [pub[s][name]["orders_per_s"]["median"] for s in sizes],
            width=0.27,
            label=label,
        )
    axes[0].set_xticks([i + 0.27 for i in x], [f"{int(s):,} rows" for s in sizes])
    axes[0].set_ylabel("orders/s confirmed")
    axes[0].set_title("Publish")
    axes[0].legend()
    disp = results["dispatch"]
    lat = list(disp)
    for offset, name in enumerate(["courierflow", "lab"]):
        axes[1].bar(
            [i + offset * 0.4 for i in range(len(lat))],
            [disp[k][name]["orders_per_s"]["median"] for k in lat],
            width=0.4,
            label=name,
        )
    axes[1].set_xticks([i + 0.2 for i in range(len(lat))], [f"Invoke latency {k}" for k in lat])
    axes[1].set_ylabel("invocations accepted/s")
    axes[1].set_title("Dispatch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)


def measure(smoke: bool, short_orders: int = short.ORDERS) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "smoke": smoke}
    with services() as svc:
        sizes = [2000] if smoke else [10_000, 100_000, 1_000_000]
        print("publish ...", flush=True)
        results["publish"] = publish.run(svc, sizes, 1 if smoke else 3)
        print("dispatch ...", flush=True)
        results["dispatch"] = dispatch.run(svc, 300 if smoke else 5000, 1 if smoke else 3)
        print("invoker framing ...", flush=True)
        results["invoker_framing"] = invoker_framing.run(
            svc, 1000 if smoke else 5000, 1 if smoke else 5
        )
        print("lambda service ...", flush=True)
        results["lambda_service"] = lambda_service_bench.run(svc, smoke)
        print("ledger ...", flush=True)
        results["ledger"] = ledger.run(32 if smoke else 256, 10, 1 if smoke else 3)
        print("publisher ledger ...", flush=True)
        results["publisher_ledger"] = publisher_ledger.run(
            svc.moto_url, 500 if smoke else 10_000, 1 if smoke else 3
        )
        print("end to end ...", flush=True)
        # the smoke's fleet is small: starting 256 warm environments took most of its time
        results["e2e"] = e2e.run(
            svc, 200 if smoke else 10_000, 32 if smoke else 256, 0.1, 1 if smoke else 2
        )
        print("short deliveries ...", flush=True)
        results["short"] = (
            short.run(svc, 300, fleet=32, repeats=1)
            if smoke
            else short.run(svc, short_orders, repeats=2)
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks it all still works"
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="only rebuild the table and plots from the saved results (runs nothing)",
    )
    parser.add_argument(
        "--short-orders",
        type=int,
        default=short.ORDERS,
        help="orders of the short-deliveries regime (e.g. 5000 for a quick run)",
    )
    args = parser.parse_args()
    smoke = args.smoke
    out = RESULTS if not smoke else RESULTS / "tmp"
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke.json" if smoke else "latest.json"
    if args.redraw:
        results = json.loads((out / name).read_text())
    else:
        results = measure(smoke, args.short_orders)
        (out / name).write_text(json.dumps(results, indent=2))
    text = table(results)
    (out / "table.md").write_text(text)
    plots(results, out)
    print(text)
    print(f"results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
