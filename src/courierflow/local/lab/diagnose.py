"""The usual mistakes of lab code, recognised from what a run left behind and explained in
plain words: what happened, how it shows, and what to change."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from courierflow.local.lab.follow import Invocation, Observation

#: a Lambda API 404 as botocore prints it: the function name the manager asked for
NOT_FOUND = re.compile(
    r"Function not found: arn:aws:lambda:[^:]*:\d*:function:(?P<name>[^\s:'\"]+)"
)
#: a queue declared twice with different arguments (durable in one program, not the other)
PRECONDITION = re.compile(r"PRECONDITION_FAILED[^\n]*")
#: lines of a program's output shown with an explanation
SHOWN_LINES = 6


class Mistake(StrEnum):
    """What went wrong, one member per explanation."""

    #: the manager invoked a function that does not exist (ResourceNotFoundException)
    WRONG_FUNCTION_NAME = "wrong_function_name"
    #: messages were acknowledged that never led to a delivery invoke
    ACKED_WITHOUT_INVOKE = "acked_without_invoke"
    #: messages were received and never acknowledged
    NEVER_ACKED = "never_acked"
    #: messages wait in a queue that nobody consumes
    NO_CONSUMER = "no_consumer"
    #: the manager's process ended
    MANAGER_EXITED = "manager_exited"
    #: a function's handler raised
    HANDLER_RAISED = "handler_raised"
    #: a function ran past its timeout
    TIMED_OUT = "timed_out"
    #: a queue declared with different arguments by two programs
    QUEUE_MISMATCH = "queue_mismatch"
    #: the publisher published fewer messages than the file has rows
    FEW_PUBLISHED = "few_published"
    #: the publisher was never invoked
    PUBLISHER_NOT_INVOKED = "publisher_not_invoked"


@dataclass(frozen=True)
class Finding:
    mistake: Mistake
    text: str


def diagnose(seen: Observation, manager_log: Path, function_logs: dict[str, Path]) -> list[Finding]:
    """Every mistake the run shows, the likeliest cause first."""
    manager_output = _read(manager_log)
    findings: list[Finding] = []
    findings += _wrong_names(seen, manager_output)
    findings += _queue_mismatch(manager_output, function_logs)
    findings += _acks(seen, manager_output)
    findings += _idle_queues(seen, manager_output)
    shown_exit = (Mistake.NO_CONSUMER, Mistake.ACKED_WITHOUT_INVOKE)
    if seen.manager_exit is not None and not any(f.mistake in shown_exit for f in findings):
        findings.append(
            Finding(
                Mistake.MANAGER_EXITED,
                f"The manager exited (code {seen.manager_exit}) during the run; it should "
                f"keep consuming until stopped. Its last lines:\n{_tail(manager_output)}",
            )
        )
    findings += _publisher(seen)
    for function in (seen.publisher, seen.delivery):
        findings += _function_errors(seen, function, function_logs.get(function))
    return findings


def _read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except OSError:
        return ""


def _tail(text: str, lines: int = SHOWN_LINES) -> str:
    shown = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in shown) or "    (no output)"


def _known(seen: Observation) -> str:
    names = sorted(seen.health.get("functions", {}) or {seen.publisher, seen.delivery})
    return " and ".join(f"'{name}'" for name in names)


def _wrong_names(seen: Observation, manager_output: str) -> list[Finding]:
    asked = Counter(m["name"] for m in NOT_FOUND.finditer(manager_output))
    known = set(seen.health.get("functions", {})) | {seen.publisher, seen.delivery}
    findings = []
    for name, times in asked.items():
        if name in known:
            continue
        findings.append(
            Finding(
                Mistake.WRONG_FUNCTION_NAME,
                f"The manager invoked a function named '{name}', which does not exist: the "
                f"Lambda API answered ResourceNotFoundException ({times} time(s), see the "
                f"manager's output). The functions here are {_known(seen)}: fix "
                "FunctionName= in the manager's invoke call.",
            )
        )
    return findings


def _queue_mismatch(manager_output: str, function_logs: dict[str, Path]) -> list[Finding]:
    texts = [manager_output, *(_read(path) for path in function_logs.values())]
    found = next((m.group(0) for text in texts for m in PRECONDITION.finditer(text)), "")
    if not found:
        return []
    return [
        Finding(
            Mistake.QUEUE_MISMATCH,
            "Two programs declared the same queue with different settings, and RabbitMQ "
            f"refused the second ({found.strip()[:200]}). Declare the queue the same way "
            "(same name, same durable=...) in the publisher and the manager.",
        )
    ]


def _acks(seen: Observation, manager_output: str) -> list[Finding]:
    if not seen.queues:
        return []
    acked = seen.queue_total("ack")
    invoked = seen.counter(seen.delivery, "async_accepted")
    unacked = seen.queue_total("messages_unacknowledged")
    findings = []
    if acked > invoked:
        crashed = (
            f" The manager exited (code {seen.manager_exit}); its last lines:\n"
            f"{_tail(manager_output)}"
            if seen.manager_exit is not None
            else ""
        )
        findings.append(
            Finding(
                Mistake.ACKED_WITHOUT_INVOKE,
                f"The manager acknowledged {acked} message(s) but the Lambda API accepted "
                f"only {invoked} invoke(s) of '{seen.delivery}': {acked - invoked} order(s) "
                "were taken off the queue without a delivery, and RabbitMQ never gives an "
                "acknowledged message back. Call basic_ack only after invoke(...) returned "
                "(StatusCode 202), so that a failed or skipped invoke leaves the message "
                f"on the queue for another try.{crashed}",
            )
        )
    if unacked:
        findings.append(
            Finding(
                Mistake.NEVER_ACKED,
                f"{unacked} message(s) were received by the manager and never acknowledged: "
                "RabbitMQ keeps them as 'unacked' and delivers them again when the manager's "
                "connection closes, so those orders would be delivered twice. Call "
                "ch.basic_ack(delivery_tag=method.delivery_tag) after each successful invoke "
                "(or consume with auto_ack=True, at the risk of losing orders).",
            )
        )
    return findings


def _idle_queues(seen: Observation, manager_output: str) -> list[Finding]:
    findings = []
    consumed = [q["name"] for q in seen.queues if q.get("consumers")]
    for queue in seen.queues:
        ready = int(queue.get("messages_ready") or 0)
        if not ready or queue.get("consumers"):
            continue
        if seen.manager_exit is not None:
            why = (
                f"the manager exited (code {seen.manager_exit}); its last lines:\n"
                f"{_tail(manager_output)}"
            )
        elif consumed:
            why = (
                f"the manager is running but consumes {', '.join(repr(n) for n in consumed)}: "
                "the publisher and the manager must use the same queue name"
            )
        else:
            why = (
                "the manager is running but consumes no queue: does it call "
                "basic_consume(...) and start_consuming()?"
            )
        findings.append(
            Finding(
                Mistake.NO_CONSUMER,
                f"{ready} message(s) wait in queue '{queue['name']}' and nobody consumes it: {why}",
            )
        )
    return findings


def _publisher(seen: Observation) -> list[Finding]:
    if not seen.attempts(seen.publisher):
        return [
            Finding(
                Mistake.PUBLISHER_NOT_INVOKED,
                f"'{seen.publisher}' was never invoked for the upload: see the relay's "
                "log (the S3 notification's last hop) and the Lambda service's log.",
            )
        ]
    published = seen.queue_total("publish")
    if seen.queues and published < seen.rows:
        return [
            Finding(
                Mistake.FEW_PUBLISHED,
                f"'{seen.publisher}' published {published} message(s) for {seen.rows} "
                "row(s) of the file: it should publish one message per row.",
            )
        ]
    return []


def _function_errors(seen: Observation, function: str, log: Path | None) -> list[Finding]:
    failures: list[Invocation] = [
        attempt for tries in seen.attempts(function).values() for attempt in tries if attempt.error
    ]
    findings = []
    timeouts = [a for a in failures if a.error_type == "timeout"]
    if timeouts:
        timeout = timeouts[0].error.rsplit(" ", 2)[-2]
        findings.append(
            Finding(
                Mistake.TIMED_OUT,
                f"{len(timeouts)} invocation(s) of '{function}' ran past its {timeout} s "
                f"timeout and were stopped ('{timeouts[0].error}'). The lab's delivery "
                "sleeps 2 to 10 s: check the sleep, or anything that waits forever.",
            )
        )
    raised = Counter(a.error for a in failures if a.error_type != "timeout")
    for error, times in raised.most_common(3):
        findings.append(
            Finding(
                Mistake.HANDLER_RAISED,
                f"'{function}' failed {times} time(s) with {error} (the whole traceback is "
                f"in {log}). Lambda retries a failed asynchronous invocation twice.",
            )
        )
    return findings
