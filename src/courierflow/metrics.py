"""CloudWatch metrics as log lines, in the embedded metric format (EMF).

A function writes one JSON object to stdout; Lambda ships stdout to CloudWatch Logs,
which extracts the metrics from it: no API call, no client, nothing to wait for. The
record follows the specification at
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html:
a root ``_aws`` member with ``Timestamp`` (milliseconds since the epoch) and
``CloudWatchMetrics``, a list of directives each naming a ``Namespace``, its
``Dimensions`` (a list of dimension sets, each a list of keys) and its ``Metrics``
(``Name`` and ``Unit``); every dimension key is a top-level string member and every
metric a top-level number. Locally the same lines land in the function's log.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TextIO

from courierflow.logs import encode_line

#: the CloudWatch namespace of every courierflow metric (the template's dashboard reads it)
NAMESPACE = "courierflow"
#: the specification's limits: dimension keys in a dimension set, metrics in a directive
MAX_DIMENSIONS = 30
MAX_METRICS = 100


class Metric(StrEnum):
    """The metrics the functions emit."""

    #: orders a file put on the queue (publisher, once per file)
    ORDERS_PUBLISHED = "OrdersPublished"
    #: rows of a file refused as invalid (publisher, once per file)
    ORDERS_REJECTED = "OrdersRejected"
    #: orders delivered (delivery, once per order)
    DELIVERIES_COMPLETED = "DeliveriesCompleted"
    #: delivery attempts that failed; Lambda retries them
    DELIVERIES_FAILED = "DeliveriesFailed"
    #: duplicate events for an order already claimed or delivered, skipped
    DUPLICATES_SKIPPED = "DuplicatesSkipped"
    #: a completed delivery's trip, in milliseconds
    DELIVERY_DURATION = "DeliveryDuration"


class Unit(StrEnum):
    """The CloudWatch units courierflow's metrics use."""

    COUNT = "Count"
    MILLISECONDS = "Milliseconds"


def emf_record(
    metrics: Mapping[str, tuple[float, str]],
    dimensions: Mapping[str, str],
    *,
    namespace: str = NAMESPACE,
    properties: Mapping[str, Any] | None = None,
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    """One EMF document: ``metrics`` maps a name to (value, unit), ``dimensions`` a key
    to its value (one dimension set of all of them); ``properties`` are extra top-level
    members for searching the log (an order id), not metrics. Records of the same shape
    share their ``CloudWatchMetrics`` directive: treat a record as read-only.

    Raises:
        ValueError: no metrics, more than the specification allows, a value that is not
            a finite number, or one name used twice.
    """
    extra = dict(properties or {})
    directive = _directive(
        namespace,
        tuple(map(str, dimensions)),
        tuple((str(name), str(unit)) for name, (_, unit) in metrics.items()),
        tuple(extra),
    )
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": directive,
        },
    }
    for key, dimension in dimensions.items():
        doc[str(key)] = str(dimension)
    for name, (number, _) in metrics.items():
        if isinstance(number, bool) or not math.isfinite(number):
            raise ValueError(f"metric {name}: {number!r} is not a finite number")
        doc[str(name)] = number
    doc.update(extra)
    return doc


@functools.lru_cache(maxsize=64)
def _directive(
    namespace: str,
    dimensions: tuple[str, ...],
    metrics: tuple[tuple[str, str], ...],
    properties: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The ``CloudWatchMetrics`` member for records of one shape, checked once: a
    function emits the same few shapes all its life."""
    if not metrics:
        raise ValueError("an EMF record needs at least one metric")
    if len(metrics) > MAX_METRICS or len(dimensions) > MAX_DIMENSIONS:
        raise ValueError(
            f"{len(metrics)} metrics and {len(dimensions)} dimensions: "
            f"at most {MAX_METRICS} and {MAX_DIMENSIONS}"
        )
    names = [*(name for name, _ in metrics), *dimensions, *properties]
    if len(set(names)) != len(names) or "_aws" in names:
        raise ValueError(f"a member named twice among {names}")
    return [
        {
            "Namespace": namespace,
            "Dimensions": [list(dimensions)],
            "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics],
        }
    ]


def emit(
    metrics: Mapping[str, tuple[float, str]],
    dimensions: Mapping[str, str],
    *,
    namespace: str = NAMESPACE,
    properties: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """Write one EMF record as a line on ``stream`` (stdout) and return the line.

    See :func:`emf_record` for the arguments and errors."""
    doc = emf_record(
        metrics,
        dimensions,
        namespace=namespace,
        properties=properties,
        timestamp_ms=int(clock() * 1000),
    )
    line = encode_line(doc)  # an EMF record is a log line: the same compact JSON
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()
    return line
