"""The rehearsal's steps in order: deploy, boot, serve, submit; then again with a changed
delivery handler, to show that a redeploy ships new code."""

from __future__ import annotations

import contextlib
import csv
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from courierflow.aws import artifacts
from courierflow.aws.rehearsal.account import RehearsalError
from courierflow.aws.rehearsal.functions import runtime_interpreter
from courierflow.aws.rehearsal.session import Rehearsal, RehearsalOptions

#: the marker the changed delivery handler logs, to show the second deploy running
CHANGE_MARKER = "courierflow-rehearsal-change"
#: orders of the file submitted after the redeploy (enough to see the change run)
SECOND_RUN_ORDERS = 10


def changed_source(work: Path) -> Path:
    """A copy of the source tree whose delivery handler logs CHANGE_MARKER."""
    root = artifacts.ROOT
    copy = work / "changed-source"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).exists():
            shutil.copy2(root / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(root / "src", copy / "src", ignore=ignore)
    delivery = copy / "src" / "courierflow" / "functions" / "delivery.py"
    delivery.write_text(
        delivery.read_text()
        + "\n\n_first_handler = lambda_handler\n\n\n"
        + "def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:\n"
        + f'    log.info("{CHANGE_MARKER}")\n'
        + "    return _first_handler(event, context)\n"
    )
    return copy


def renamed_orders(orders: Path, out: Path, limit: int = SECOND_RUN_ORDERS) -> Path:
    """The first ``limit`` rows with new order ids (and so a new object): the same file
    again would be recognised as already processed and publish nothing."""
    with orders.open(newline="", encoding="utf-8-sig") as src:
        rows = list(csv.reader(src))
    column = [name.strip().lower().replace(" ", "_") for name in rows[0]].index("order_id")
    with out.open("w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst)
        writer.writerow(rows[0])
        for row in rows[1 : limit + 1]:
            if row:
                row[column] = f"{row[column]}-after-change"
            writer.writerow(row)
    return out


def change_seen(work: Path) -> bool:
    """Whether a delivery environment logged the changed handler's marker."""
    for path in (work / "lambda").rglob("*"):
        if path.is_file() and CHANGE_MARKER in path.read_text(errors="replace"):
            return True
    return False


@contextlib.contextmanager
def rehearsal(options: RehearsalOptions, say: Callable[[str], None]) -> Iterator[Rehearsal]:
    """A started rehearsal, stopped (every process by PID) on the way out."""
    run = Rehearsal(options, say)
    try:
        run.start()
        yield run
    finally:
        run.close()


def rehearse(options: RehearsalOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Deploy to the stand-in account, boot, serve, submit; then again with a changed
    handler. Returns the first submit's summary with ``rehearsal`` details added.

    Raises:
        RehearsalError: a step failed; the message names it and where its log is.
    """
    if options.mode == "serverless" and options.transport != "sqs":
        raise RehearsalError("--mode serverless needs --transport sqs")
    runtime = runtime_interpreter(options.home.absolute() / "rehearsal-runtime", say)
    with rehearsal(options, say) as run:
        started = time.monotonic()
        run.deploy()
        view = run.stack()
        run.boot_instance(view)
        run.serve_functions(view, runtime)
        summary = run.submit(options.orders, run.work / "summary.json")
        details: dict[str, Any] = {
            "transport": options.transport,
            "mode": options.mode,
            "first_run_s": round(time.monotonic() - started, 1),
            # the instance's processes asked the metadata service for the role's keys
            "instance_credentials_from_imds": bool(run.imds and run.imds.requests),
        }
        if options.redeploy:
            say("deploying again with a changed delivery handler ...")
            run.deploy(changed_source(run.work))
            view = run.stack()
            run.boot_instance(view)  # the user data changed: the instance restarts
            run.serve_functions(view, runtime)
            second = renamed_orders(options.orders, run.work / "orders-after-change.csv")
            again = run.submit(second, run.work / "summary-2.json")
            details["second_delivered"] = again.get("delivered", 0)
            details["second_exit_code"] = again["exit_code"]
            details["change_running"] = change_seen(run.work)
        summary["rehearsal"] = details
        return summary


def succeeded(summary: dict[str, Any]) -> bool:
    """Every order delivered, in each run, and the changed handler seen running."""
    details = summary.get("rehearsal", {})
    ok = summary.get("exit_code") == 0 and summary.get("lost", 1) == 0
    if "change_running" in details:
        ok = ok and details["change_running"] and details["second_exit_code"] == 0
    return bool(ok)
