"""The functions' log lines have Powertools Logger's keys and values, and their metric
records follow CloudWatch's embedded metric format specification.

The handlers run in a child process, as in a Lambda execution environment: a cold start
is a process's first invocation, and the handler modules set up the root logger when
imported, which the test process must not have done to it."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from courierflow import logs, metrics
from courierflow.config import LogSettings, xray_trace_id
from courierflow.metrics import Metric, Unit

pytestmark = pytest.mark.timeout(60)

#: Powertools Logger's standard keys outside an invocation
BASE_KEYS = {"level", "location", "message", "timestamp", "service"}
#: ... and those its inject_lambda_context adds
CONTEXT_KEYS = {
    "cold_start",
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
}
#: Powertools' timestamp in its ISO 8601 form: milliseconds and an offset
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
TRACE_ID = "1-5759e988-bd862e3fe1be46a994272793"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:lambda_delivery"

# --- a validator of the embedded metric format specification's rules --------------------
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

#: the units a MetricDefinition may name
EMF_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes",
    "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
    "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
    "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second",
    "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _name_ok(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 1024


def emf_errors(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the specification's rules; empty when it is valid."""
    if not isinstance(doc, dict):
        return ["the root node is not an object"]
    meta = doc.get("_aws")
    if not isinstance(meta, dict):
        return ["no _aws metadata object"]
    errors: list[str] = []
    timestamp = meta.get("Timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        errors.append(f"_aws.Timestamp {timestamp!r} is not an integer of milliseconds")
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list):
        return [*errors, "_aws.CloudWatchMetrics is not a list"]
    for directive in directives:
        if not isinstance(directive, dict):
            errors.append(f"directive {directive!r} is not an object")
            continue
        if set(directive) - {"Namespace", "Dimensions", "Metrics"}:
            errors.append(f"directive has other members: {sorted(directive)}")
        if not _name_ok(directive.get("Namespace")):
            errors.append(f"Namespace {directive.get('Namespace')!r}")
        dimension_sets = directive.get("Dimensions")
        if not isinstance(dimension_sets, list) or not all(
            isinstance(s, list) for s in dimension_sets
        ):
            errors.append(f"Dimensions {dimension_sets!r} is not a list of lists")
            dimension_sets = []
        for dimension_set in dimension_sets:
            if len(dimension_set) > 30:
                errors.append(f"{len(dimension_set)} dimension keys in one set (at most 30)")
            for key in dimension_set:
                if not isinstance(key, str) or not _name_ok(doc.get(key)):
                    errors.append(f"dimension {key!r} is not a top-level string")
        definitions = directive.get("Metrics")
        if not isinstance(definitions, list):
            errors.append("Metrics is not a list")
            continue
        if len(definitions) > 100:
            errors.append(f"{len(definitions)} metrics in one directive (at most 100)")
        for definition in definitions:
            if not isinstance(definition, dict) or not _name_ok(definition.get("Name")):
                errors.append(f"metric definition {definition!r} has no Name")
                continue
            if set(definition) - {"Name", "Unit", "StorageResolution"}:
                errors.append(f"metric definition has other members: {sorted(definition)}")
            if "Unit" in definition and definition["Unit"] not in EMF_UNITS:
                errors.append(f"unit {definition['Unit']!r}")
            value = doc.get(definition["Name"])
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > 100 or not all(_is_number(v) for v in values):
                errors.append(f"metric {definition['Name']!r} is not a top-level number")
    return errors


def test_the_validator_finds_each_rule_broken() -> None:
    good = metrics.emf_record({"Hits": (1, "Count")}, {"service": "s"}, timestamp_ms=1)
    assert emf_errors(good) == []
    flat = {**good["_aws"]["CloudWatchMetrics"][0], "Dimensions": ["service"]}
    broken = {
        "no _aws": {"Hits": 1},
        "float timestamp": {**good, "_aws": {**good["_aws"], "Timestamp": 1.5}},
        "metric missing": {k: v for k, v in good.items() if k != "Hits"},
        "metric a string": {**good, "Hits": "1"},
        "dimension a number": {**good, "service": 3},
        "dimensions not nested": {**good, "_aws": {**good["_aws"], "CloudWatchMetrics": [flat]}},
        "unknown unit": metrics.emf_record({"Hits": (1, "Hits")}, {}, timestamp_ms=1),
    }
    for what, doc in broken.items():
        assert emf_errors(doc), what


# --- the handlers, in a child process ---------------------------------------------------

HANDLER_RUN = textwrap.dedent(
    """
    import json, logging, sys

    # Lambda's runtime installs a root handler (on stdout, its own format) before the import
    runtime_handler = logging.StreamHandler(sys.stdout)
    runtime_handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(runtime_handler)

    from courierflow.functions import delivery, publisher
    from courierflow.publishing import FileSummary

    class Context:
        function_name = "lambda_delivery"
        function_version = "$LATEST"
        invoked_function_arn = "ARN"
        memory_limit_in_mb = "256"  # a string, as Lambda's runtime gives it

        def __init__(self, request_id):
            self.aws_request_id = request_id

        def get_remaining_time_in_millis(self):
            return 30_000

    class Publisher:  # stands in for the S3 reads and the queue
        def process(self, bucket, key, etag, *, time_left, attempt):
            source = f"s3://{bucket}/{key}"
            logging.getLogger("courierflow.publishing").info("%s: 2 published", source,
                extra={"file": source})
            return FileSummary(source, "done", rows=3, published=2, rejected=1)

    publisher._publisher = Publisher()
    for request_id in ("req-1", "req-2"):  # one order, then a duplicate event for it
        try:
            delivery.lambda_handler({"order_id": "ORD-1"}, Context(request_id))
        except Exception as exc:  # Lambda would retry the event
            print(json.dumps({"raised": type(exc).__name__}))
    s3_event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": "orders.csv", "eTag": "e"}}}]}
    publisher.lambda_handler(s3_event, Context("req-3"))
    logging.getLogger("courierflow.probe").debug("a debug line")
    print(json.dumps({"root_level": logging.getLevelName(logging.getLogger().level)}))
    """
).replace("ARN", ARN)


def run_handlers(tmp_path: Path, **env: str) -> list[dict[str, Any]]:
    """Run the delivery handler twice (one order, then its duplicate) and the publisher
    once in a fresh process; every line it writes, parsed."""
    child_env = {
        **os.environ,
        "COURIERFLOW_HOME": str(tmp_path),
        "COURIERFLOW_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "COURIERFLOW_TIME_SCALE": "0.001",
        "COURIERFLOW_DELAY_MIN": "2",
        "COURIERFLOW_DELAY_MAX": "2",
        **env,
    }
    for name in ("POWERTOOLS_LOG_LEVEL", "POWERTOOLS_SERVICE_NAME", "_X_AMZN_TRACE_ID"):
        if name not in env:
            child_env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", HANDLER_RUN],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "a line went past Lambda's handler"
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_handler_log_lines_have_exactly_powertools_keys_and_values(tmp_path: Path) -> None:
    lines = run_handlers(
        tmp_path,
        AWS_LAMBDA_LOG_LEVEL="DEBUG",
        AWS_LAMBDA_LOG_FORMAT="JSON",
        COURIERFLOW_LOG_LEVEL="ERROR",
        POWERTOOLS_SERVICE_NAME="deliveries",
        _X_AMZN_TRACE_ID=TRACE_HEADER,
    )
    records = [line for line in lines if "level" in line]
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_request.setdefault(record.get("function_request_id", ""), []).append(record)
    assert set(by_request) == {"req-1", "req-2", "req-3"}

    delivered = by_request["req-1"]
    # one INFO line per delivery; the trip's start only at DEBUG
    assert [(r["level"], r["message"]) for r in delivered] == [
        ("DEBUG", "courier on the road for 2 s"),
        ("INFO", "delivered in 2 s"),
    ]
    for record in delivered:
        assert set(record) == BASE_KEYS | CONTEXT_KEYS | {"xray_trace_id", "order_id", "request_id"}
        assert re.fullmatch(r"deliver:\d+", record["location"])
        assert TIMESTAMP.fullmatch(record["timestamp"])
        age = datetime.now().astimezone() - datetime.fromisoformat(record["timestamp"])
        assert timedelta(0) <= age < timedelta(minutes=1)
        assert record["service"] == "deliveries"
        assert record["cold_start"] is True
        assert record["function_name"] == "lambda_delivery"
        assert record["function_memory_size"] == 256
        assert record["function_arn"] == ARN
        assert record["xray_trace_id"] == TRACE_ID
        assert (record["order_id"], record["request_id"]) == ("ORD-1", "req-1")

    (duplicate,) = by_request["req-2"]
    assert duplicate["message"].startswith("duplicate delivery skipped")
    assert duplicate["cold_start"] is False

    published = [r for r in by_request["req-3"] if r.get("file")]
    assert published and all(r["cold_start"] is False for r in published)
    assert all(r["file"] == "s3://uploads/orders.csv" for r in published)
    # the level came from AWS_LAMBDA_LOG_LEVEL, not COURIERFLOW_LOG_LEVEL
    assert any(r["message"] == "a debug line" and r["level"] == "DEBUG" for r in records)
    assert {"root_level": "DEBUG"} in lines


def test_handlers_emit_emf_records_per_delivery_and_per_file(tmp_path: Path) -> None:
    lines = run_handlers(tmp_path)
    emf = [line for line in lines if "_aws" in line]
    for record in emf:
        assert emf_errors(record) == [], record
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "courierflow"
        assert directive["Dimensions"] == [["service"]]
        assert record["service"] == "courierflow"
    units = {
        d["Name"]: d["Unit"]
        for record in emf
        for d in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    assert units == {
        "DeliveriesCompleted": "Count",
        "DeliveryDuration": "Milliseconds",
        "DuplicatesSkipped": "Count",
        "OrdersPublished": "Count",
        "OrdersRejected": "Count",
    }
    completed, duplicate, published = emf
    assert completed["DeliveriesCompleted"] == 1 and completed["order_id"] == "ORD-1"
    assert 0 < completed["DeliveryDuration"] < 1000  # a 2 s trip at time scale 0.001
    assert duplicate["DuplicatesSkipped"] == 1 and "DeliveriesCompleted" not in duplicate
    assert (published["OrdersPublished"], published["OrdersRejected"]) == (2, 1)
    assert published["file"] == "s3://uploads/orders.csv"


def test_each_failed_delivery_attempt_counts_as_failed_and_still_raises(tmp_path: Path) -> None:
    lines = run_handlers(tmp_path, COURIERFLOW_FAIL_RATE="1")
    failed = [line for line in lines if "DeliveriesFailed" in line]
    assert [line for line in lines if "raised" in line] == [{"raised": "DeliveryFailed"}] * 2
    assert len(failed) == 2 and all(emf_errors(record) == [] for record in failed)
    assert all(r["DeliveriesFailed"] == 1 and r["order_id"] == "ORD-1" for r in failed)
    assert not any("DeliveriesCompleted" in line or "DuplicatesSkipped" in line for line in lines)


# --- the pieces on their own --------------------------------------------------------------


def test_emf_record_refuses_what_the_specification_forbids() -> None:
    with pytest.raises(ValueError):
        metrics.emf_record({}, {"service": "s"})
    with pytest.raises(ValueError):
        metrics.emf_record({f"M{i}": (1, "Count") for i in range(101)}, {})
    with pytest.raises(ValueError):
        metrics.emf_record({"M": (1, "Count")}, {f"d{i}": "v" for i in range(31)})
    with pytest.raises(ValueError):
        metrics.emf_record({"M": (math.nan, "Count")}, {})
    with pytest.raises(ValueError):
        metrics.emf_record({"service": (1, "Count")}, {"service": "s"})
    widest = metrics.emf_record(
        {f"M{i}": (i, "Count") for i in range(100)}, {f"d{i}": "v" for i in range(30)}
    )
    assert emf_errors(widest) == []


def test_emit_writes_one_json_line_with_the_clock_in_milliseconds(
    tmp_path: Path,
) -> None:
    out = tmp_path / "stdout"
    with out.open("w") as stream:
        line = metrics.emit(
            {Metric.DELIVERY_DURATION: (12.5, Unit.MILLISECONDS)},
            {"service": "courierflow"},
            stream=stream,
            clock=lambda: 1_700_000_000.1234,
        )
    assert out.read_text() == line + "\n"
    doc = json.loads(line)
    assert emf_errors(doc) == []
    assert doc["_aws"]["Timestamp"] == 1_700_000_000_123
    assert doc["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "DeliveryDuration", "Unit": "Milliseconds"}
    ]


@pytest.mark.parametrize(
    ("env", "level"),
    [
        ({}, "INFO"),
        ({"COURIERFLOW_LOG_LEVEL": "debug"}, "DEBUG"),
        ({"COURIERFLOW_LOG_LEVEL": "DEBUG", "AWS_LAMBDA_LOG_LEVEL": "WARN"}, "WARN"),
        ({"AWS_LAMBDA_LOG_LEVEL": "WARN", "POWERTOOLS_LOG_LEVEL": "ERROR"}, "ERROR"),
    ],
)
def test_the_log_level_comes_from_powertools_then_lambda_then_courierflow(
    env: dict[str, str], level: str
) -> None:
    assert LogSettings.from_env(env).level == level


def test_the_trace_id_is_the_root_of_lambdas_trace_header() -> None:
    assert xray_trace_id({"_X_AMZN_TRACE_ID": TRACE_HEADER}) == TRACE_ID
    assert xray_trace_id({}) == ""


def test_an_exception_is_logged_with_its_name_and_traceback() -> None:
    logs.inject_context(None)
    try:
        raise KeyError("order")
    except KeyError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 7, "failed %s", ("ORD-1",), sys.exc_info(), "handler"
        )
    doc = json.loads(logs.PowertoolsFormatter("svc").format(record))
    assert set(doc) == BASE_KEYS | {"exception", "exception_name"}
    assert doc["exception_name"] == "KeyError" and "Traceback" in doc["exception"]
    assert (doc["message"], doc["location"], doc["service"]) == ("failed ORD-1", "handler:7", "svc")


def test_timestamps_are_rfc3339_milliseconds_as_datetime_writes_them() -> None:
    """The per-second cache writes what ``datetime.isoformat`` would, across seconds."""
    cache = logs._Seconds()
    for created in (0.0, 1.0004, 1.9999, 2.5, 1_764_000_000.123456, 1_764_000_000.9996, 59.0):
        expected = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
        assert cache.timestamp(created) == expected
