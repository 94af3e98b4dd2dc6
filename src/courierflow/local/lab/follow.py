"""Following a lab's orders without a ledger: what the Lambda service and RabbitMQ record.

The student's code writes no ledger, so a run is read from what the stand-ins keep on
their own: each function's CloudWatch-shaped log (one START/END/REPORT block per
invocation, written at its end, with the request id and the duration), the service's
``/health`` counters (invocations, async events accepted, environments busy) and
RabbitMQ's management API (per queue: published, acknowledged, ready, unacknowledged,
consumers). An invocation's end is when its block appears in the log (looked at every
``POLL_S``), its start that minus its duration.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from courierflow.ledger.base import OrderRecord
from courierflow.local.lab.stack import BROKER_PASSWORD, BROKER_USER, MAX_RETRIES, Lab
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary, peak_concurrency

#: seconds between looks at the logs and the service's counters
POLL_S = 0.1
#: seconds between looks at RabbitMQ's queues
QUEUES_EVERY_S = 1.0
#: seconds without change, once nothing more can happen (``_settled``), before the run
#: is taken as over
SETTLED_S = 4.0
#: seconds, at most, for RabbitMQ's figures to settle after the run
FINAL_LOOK_S = 12.0

#: one invocation's block in a function's log (logformat.log_block), written at its end
BLOCK = re.compile(
    r"START RequestId: (?P<id>\S+) Version: \S+\n(?P<output>.*?)"
    r"END RequestId: (?P=id)\nREPORT RequestId: (?P=id)\tDuration: (?P<ms>[\d.]+) ms[^\n]*\n",
    re.DOTALL,
)
ERROR_LINE = re.compile(r"^\[ERROR\] (?P<type>[\w.]+): (?P<message>.*)$", re.MULTILINE)
TIMED_OUT = re.compile(r"Task timed out after [\d.]+ seconds")
RUNTIME_EXIT = re.compile(r"Error: Runtime exited[^\n]*")


@dataclass
class Invocation:
    """One attempt of one invocation, as the function's log shows it."""

    function: str
    request_id: str
    started_at: float
    finished_at: float
    output: str
    #: "" when it succeeded; else what went wrong, in the log's words
    error: str = ""
    #: the error's kind: "timeout", "exit", or the exception's type
    error_type: str = ""


def parse_block(function: str, match: re.Match[str], seen_at: float) -> Invocation:
    duration = float(match["ms"]) / 1000
    output = match["output"]
    error = error_type = ""
    if timed_out := TIMED_OUT.search(output):
        error, error_type = timed_out.group(0), "timeout"
    elif raised := ERROR_LINE.search(output):
        error, error_type = f"{raised['type']}: {raised['message']}", raised["type"]
    elif exited := RUNTIME_EXIT.search(output):
        error, error_type = exited.group(0), "exit"
    return Invocation(function, match["id"], seen_at - duration, seen_at, output, error, error_type)


@dataclass
class LogFollower:
    """Reads a function's log as it grows, one complete block at a time."""

    function: str
    path: Path
    offset: int = 0
    pending: str = ""

    def read(self, now: float) -> list[Invocation]:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        self.pending += data.decode("utf-8", "replace")
        found: list[Invocation] = []
        end = 0
        for match in BLOCK.finditer(self.pending):
            found.append(parse_block(self.function, match, now))
            end = match.end()
        self.pending = self.pending[end:]
        return found


@dataclass
class Observation:
    """What a run left behind, for the summary and the explanations."""

    publisher: str
    delivery: str
    rows: int
    started_at: float
    #: every attempt of every invocation, by function, then request id
    invocations: dict[str, dict[str, list[Invocation]]] = field(default_factory=dict)
    #: most environments of the delivery function busy at one look at /health
    peak_busy: int = 0
    #: the service's /health document at the last look
    health: dict[str, Any] = field(default_factory=dict)
    #: RabbitMQ's queues at the last look (empty when the management API did not answer)
    queues: list[dict[str, Any]] = field(default_factory=list)
    #: the manager's exit code (None: still running)
    manager_exit: int | None = None
    #: whether the run ended without every row's delivery finishing
    stalled: bool = False
    ended_at: float = 0.0

    def attempts(self, function: str) -> dict[str, list[Invocation]]:
        return self.invocations.setdefault(function, {})

    def delivered(self) -> dict[str, Invocation]:
        """The delivery's successful attempt, by request id."""
        found: dict[str, Invocation] = {}
        for request_id, tries in self.attempts(self.delivery).items():
            for attempt in tries:
                if not attempt.error:
                    found[request_id] = attempt
        return found

    def failed(self) -> dict[str, Invocation]:
        """The last attempt of each delivery that failed on every attempt Lambda makes."""
        return {
            request_id: tries[-1]
            for request_id, tries in self.attempts(self.delivery).items()
            if len(tries) > MAX_RETRIES and all(t.error for t in tries)
        }

    def counter(self, function: str, name: str) -> int:
        return int(self.health.get("functions", {}).get(function, {}).get(name, 0))

    def queue_total(self, key: str) -> int:
        """A figure summed over the broker's queues (``message_stats.NAME`` or ``NAME``)."""
        total = 0
        for queue in self.queues:
            if key in queue:
                total += int(queue.get(key) or 0)
            else:
                total += int((queue.get("message_stats") or {}).get(key, 0))
        return total


def get_json(url: str, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> Any:
    """A JSON document from ``url``; None when it does not answer."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None


def broker_queues(console_url: str) -> list[dict[str, Any]] | None:
    """RabbitMQ's queues of the default vhost (``GET /api/queues/%2F``)."""
    if not console_url:
        return None
    found = get_json(console_url + "api/queues/%2F", (BROKER_USER, BROKER_PASSWORD))
    return found if isinstance(found, list) else None


def settled_queues(console_url: str, timeout: float = FINAL_LOOK_S) -> list[dict[str, Any]]:
    """The queues once the management API counted their messages and its figures stopped
    changing (they trail the broker by a few seconds); the last answer after
    ``timeout``, or []. A queue nothing went through has no counts: it takes the whole
    ``timeout``."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        time.sleep(QUEUES_EVERY_S)
        found = broker_queues(console_url)
        counted = found is not None and all("message_stats" in q for q in found)
        if counted and last is not None and _figures(found or []) == _figures(last):
            return found or []
        last = found if found is not None else last
    return last or []


def _figures(queues: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (q.get("name"), q.get("messages_ready"), q.get("messages_unacknowledged"),
         q.get("consumers"),
         *((q.get("message_stats") or {}).get(k) for k in ("publish", "ack", "deliver_get")))
        for q in queues
    ]  # fmt: skip


def wait_for_consumer(lab: Lab, timeout: float) -> bool:
    """Whether some queue has a consumer (the manager is listening) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queues = broker_queues(lab.console_url) or []
        if any(q.get("consumers") for q in queues):
            return True
        manager = lab.processes.get("manager")
        if manager is not None and manager.popen.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def follow(
    lab: Lab,
    rows: int,
    started_at: float,
    stall_timeout: float,
    progress: Callable[[Observation], None] | None = None,
) -> Observation:
    """Watch until as many deliveries finished (delivered, or failed on every attempt)
    as ``rows``, or until nothing changed for ``stall_timeout`` seconds."""
    options = lab.options
    seen = Observation(options.publisher, options.delivery, rows, started_at)
    readers = [
        LogFollower(name, lab.function_log(name)) for name in (seen.publisher, seen.delivery)
    ]
    last_change = time.monotonic()
    last_queues = 0.0
    signature: tuple[Any, ...] = ()
    while True:
        now = time.time()
        for reader in readers:
            for attempt in reader.read(now):
                seen.attempts(attempt.function).setdefault(attempt.request_id, []).append(attempt)
        health = get_json(lab.lambda_url + "/health")
        if isinstance(health, dict):
            seen.health = health
            seen.peak_busy = max(seen.peak_busy, seen.counter(seen.delivery, "busy"))
        if time.monotonic() - last_queues >= QUEUES_EVERY_S:
            last_queues = time.monotonic()
            seen.queues = broker_queues(lab.console_url) or seen.queues
        manager = lab.processes.get("manager")
        if manager is not None and seen.manager_exit is None:
            seen.manager_exit = manager.popen.poll()
        if progress is not None:
            progress(seen)
        if len(seen.delivered()) + len(seen.failed()) >= rows:
            break
        now_signature = _signature(seen)
        if now_signature != signature:
            signature, last_change = now_signature, time.monotonic()
        quiet = time.monotonic() - last_change
        if quiet >= stall_timeout or (_settled(seen) and quiet >= SETTLED_S):
            seen.stalled = True
            break
        time.sleep(POLL_S)
    seen.ended_at = time.time()
    seen.queues = settled_queues(lab.console_url) or seen.queues
    manager = lab.processes.get("manager")
    if manager is not None and seen.manager_exit is None:
        seen.manager_exit = manager.popen.poll()
    return seen


def _settled(seen: Observation) -> bool:
    """Whether nothing more can happen: nothing runs or waits in a function's queue, and
    either the manager is gone, or the publisher ran, every delivery the manager handed
    over finished and no message is left in (or held from) a queue."""
    if _busy(seen):
        return False
    if seen.manager_exit is not None:
        return True
    finished = len(seen.delivered()) + len(seen.failed())
    drained = not any(
        q.get("messages_ready") or q.get("messages_unacknowledged") for q in seen.queues
    )
    return (
        bool(seen.attempts(seen.publisher))
        and finished >= seen.counter(seen.delivery, "async_accepted")
        and drained
    )


def _busy(seen: Observation) -> bool:
    """Whether a function runs or holds queued events."""
    return any(
        seen.counter(name, "busy") or seen.counter(name, "event_queue")
        for name in (seen.publisher, seen.delivery)
    )


def _signature(seen: Observation) -> tuple[Any, ...]:
    """What changes while the run makes progress."""
    attempts = sum(len(tries) for tries in seen.attempts(seen.delivery).values())
    attempts += sum(len(tries) for tries in seen.attempts(seen.publisher).values())
    counters = tuple(
        seen.counter(name, key)
        for name in (seen.publisher, seen.delivery)
        for key in ("invocations", "async_accepted", "busy", "event_queue")
    )
    queues = tuple(
        (q.get("name"), q.get("messages_ready"), q.get("messages_unacknowledged"),
         (q.get("message_stats") or {}).get("ack"))
        for q in seen.queues
    )  # fmt: skip
    return attempts, counters, queues


def order_records(seen: Observation) -> list[OrderRecord]:
    """One ledger-shaped record per delivery invocation (its request id standing in for
    the order id the student's code does not report), for report.html."""
    records: list[OrderRecord] = []
    failed = seen.failed()
    for request_id, tries in seen.attempts(seen.delivery).items():
        last = tries[-1]
        ok = next((t for t in tries if not t.error), None)
        shown = ok or last
        if ok is not None:
            state = OrderState.DELIVERED
        elif request_id in failed:
            state = OrderState.FAILED
        else:
            state = OrderState.DISPATCHED  # retried, not finished
        records.append(
            OrderRecord(
                order_id=request_id[:8],
                state=state,
                started_at=shown.started_at,
                finished_at=shown.finished_at,
                request_id=request_id,
                delay_s=round(shown.finished_at - shown.started_at, 3),
                attempts=len(tries),
                reason="" if ok else last.error,
            )
        )
    return records


def summarize(seen: Observation, file: str, records: list[OrderRecord]) -> RunSummary:
    """The figures `courierflow run` reports, from what the stand-ins recorded."""
    delivered = seen.delivered()
    failed = seen.failed()
    published = seen.queue_total("publish")
    ends = [attempt.finished_at for attempt in delivered.values()]
    makespan = max(ends) - seen.started_at if ends else 0.0
    invoked = len(seen.attempts(seen.delivery))
    return RunSummary(
        file=file,
        rows=seen.rows,
        rejected=0,
        published=published,
        skipped=0,
        delivered=len(delivered),
        failed=len(failed),
        lost=max(0, seen.rows - len(delivered) - len(failed)),
        duplicates=max(0, invoked - published) if published else 0,
        makespan_s=round(makespan, 3),
        peak_concurrency=max(seen.peak_busy, peak_concurrency(records)),
        throughput_per_s=round(len(delivered) / makespan, 2) if makespan > 0 else 0.0,
        failures=[(request_id, attempt.error) for request_id, attempt in failed.items()],
    )
