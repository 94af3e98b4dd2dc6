"""The command line and environment of each process the local stack starts: the Lambda
service with both functions, the managers, the reconciler loop and the dashboard, each
a `courierflow` subcommand."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from courierflow.config import DEFAULT_DELIVERY_FUNCTION, DEFAULT_PUBLISHER_FUNCTION

if TYPE_CHECKING:
    from courierflow.local.stack import StackOptions

PUBLISHER = DEFAULT_PUBLISHER_FUNCTION
DELIVERY = DEFAULT_DELIVERY_FUNCTION


def courierflow_argv() -> list[str]:
    """How to start `courierflow` from this interpreter's environment."""
    exe = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "courierflow.cli"]


#: how long the local managers' SQS receives wait (moto's polls cost nothing): a stopping
#: manager finishes its receives within this, well inside `down`'s grace, instead of
#: being killed after 15 s in a 20 s long poll
LOCAL_SQS_WAIT_S = 2


def function_env(options: StackOptions) -> dict[str, str]:
    """What the functions and the managers read for delays and fault injection, and the
    managers' SQS wait."""
    return {
        "COURIERFLOW_TIME_SCALE": str(options.time_scale),
        "COURIERFLOW_DELAY_MIN": str(options.delay_min),
        "COURIERFLOW_DELAY_MAX": str(options.delay_max),
        "COURIERFLOW_FAIL_RATE": str(options.fail_rate),
        "COURIERFLOW_DUPLICATE_RATE": str(options.duplicate_rate),
        "COURIERFLOW_SQS_WAIT_S": str(LOCAL_SQS_WAIT_S),
    }


def lambda_service_argv(
    home: Path,
    port: int,
    options: StackOptions,
    upload_queue_url: str,
    failure_queue_url: str,
    queue_url: str,
) -> list[str]:
    """`courierflow lambda serve` with the publisher fed by the upload queue and the
    delivery sized by ``options`` (fed by the order queue in serverless mode)."""
    delivery_timeout = max(15, int(options.delay_max * options.time_scale) + 5)
    functions = {
        PUBLISHER: "courierflow.functions.publisher:lambda_handler",
        DELIVERY: "courierflow.functions.delivery:lambda_handler",
    }
    configured: dict[str, object] = {
        f"{PUBLISHER}.timeout": 900,
        f"{PUBLISHER}.concurrency": 4,
        f"{DELIVERY}.timeout": delivery_timeout,
        f"{DELIVERY}.concurrency": options.fleet,
        f"{DELIVERY}.provisioned_concurrency": options.provisioned,
        f"{DELIVERY}.retry_delays": options.retry_delays,
        f"{DELIVERY}.on_failure": failure_queue_url,
    }
    sources = {PUBLISHER: upload_queue_url}
    if options.mode == "serverless":
        sources[DELIVERY] = queue_url
        configured[f"{DELIVERY}.sqs_batch_size"] = 1
    return [
        *courierflow_argv(), "lambda", "serve", "--port", str(port),
        "--state-dir", str(home / "lambda"),
        *_repeated("--function", functions),
        *_repeated("--set", configured),
        *_repeated("--event-source-sqs", sources),
    ]  # fmt: skip


def reconciler_argv(options: StackOptions, failure_queue_url: str) -> list[str]:
    """`courierflow reconcile` on the stack's schedule, reading the failure queue."""
    return [
        *courierflow_argv(), "reconcile",
        "--every", str(options.reconcile_every_s),
        "--stuck-after", str(options.stuck_after_s),
        "--failure-queue", failure_queue_url,
    ]  # fmt: skip


def _repeated(option: str, values: Mapping[str, object]) -> list[str]:
    """``option KEY=VALUE`` for each item of ``values``."""
    return [arg for key, value in values.items() for arg in (option, f"{key}={value}")]
