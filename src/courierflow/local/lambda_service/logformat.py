"""The CloudWatch shape of one invocation's log: START, output, END, REPORT."""

from __future__ import annotations

import math


def log_block(
    request_id: str,
    output: str,
    duration_ms: float,
    memory_size_mb: int,
    max_memory_mb: int,
    init_ms: float | None = None,
) -> str:
    """The text of one invocation as it appears in the function's log."""
    if output and not output.endswith("\n"):
        output += "\n"
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {memory_size_mb} MB\t"
        f"Max Memory Used: {max_memory_mb} MB"
    )
    if init_ms is not None:
        report += f"\tInit Duration: {init_ms:.2f} ms"
    return (
        f"START RequestId: {request_id} Version: $LATEST\n{output}"
        f"END RequestId: {request_id}\n{report}\n"
    )
