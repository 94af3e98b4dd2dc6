"""Run one Lambda handler once, in this process, and print every AWS API call it made.

``python -m tests.integration.call_recorder MODULE.HANDLER OUT`` reads the event as JSON
on stdin, takes its settings from the environment as the function would, and writes to
the file OUT a JSON list of ``[service, operation, params]``, one per call botocore was about to
build (whether or not the service then accepted it). The calls are caught on boto3's
default session, from which every client of the function code is made, hooked before the
handler's module is imported.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3


def main(spec: str, out: Path) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.service_model.signing_name, model.name, dict(params)))

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-parameter-build", record)

    from courierflow.local.lambda_service.runtime import LambdaContext, load_handler

    handler, error = load_handler(spec)
    if handler is None:
        raise SystemExit(f"cannot load {spec}: {error}")
    event = json.load(sys.stdin)
    name = spec.split(".")[-2]
    context = LambdaContext(
        {"name": name, "memory": 256},
        str(uuid.uuid4()),
        time.time() + 60,
        f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
    )
    try:
        handler(event, context)
    except Exception as exc:  # what it called before failing is still the answer
        print(f"handler raised {type(exc).__name__}: {exc}", file=sys.stderr)
    out.write_text(json.dumps(calls, default=str))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
