"""Structured logs in the shape of Powertools for AWS Lambda (Python)'s Logger, without
depending on it (the functions' layer ships only pika and courierflow).

One JSON object per line with Powertools' standard keys: ``level``, ``location``
("function:line"), ``message``, ``timestamp``, ``service``; inside Lambda, once a handler
has called :func:`inject_context`, ``cold_start``, ``function_name``,
``function_memory_size``, ``function_arn`` and ``function_request_id``; ``xray_trace_id``
when tracing is on; ``exception`` and ``exception_name`` with a traceback. Our own keys
(``order_id``, ``request_id``, ``file``, passed with ``extra=``) sit beside them at the
top level. The timestamp is written as Powertools writes it in its RFC 3339 / ISO 8601
form (``use_rfc3339``): UTC, milliseconds, offset, e.g. "2024-05-01T12:00:00.123+00:00".
See https://docs.aws.amazon.com/powertools/python/latest/core/logger/ ("Standard
structured keys", "Capturing Lambda context info").

The lines stay JSON whatever Lambda's log format: with ``AWS_LAMBDA_LOG_FORMAT=JSON``
Lambda passes a line that is already a JSON object through unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any

from courierflow.config import LogSettings

#: attributes of a LogRecord that are not user-supplied ``extra`` fields, and
#: ``aws_request_id``, which Lambda's runtime puts on every record (it is
#: ``function_request_id`` here, as in Powertools)
_RECORD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "aws_request_id",
}
#: the keys an ``extra`` field may not replace
_STANDARD_KEYS = {
    "level",
    "location",
    "message",
    "timestamp",
    "service",
    "cold_start",
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "exception",
    "exception_name",
    "xray_trace_id",
}
#: Lambda's level names (AWS_LAMBDA_LOG_LEVEL) that Python's logging spells otherwise
_LAMBDA_LEVELS = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}
#: libraries whose INFO lines would drown ours
_NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "pika")
#: one encoder for every line: ``json.dumps`` with options builds a new one per call,
#: which was a fifth of a log line's cost in a delivery environment
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))


def encode_line(doc: dict[str, Any]) -> str:
    """``doc`` as one compact JSON line (non-ASCII kept, unknown types as ``str``)."""
    return _ENCODER.encode(doc)


class _Seconds:
    """The RFC 3339 text of the current second, formatted once per second: a delivery
    logs a few lines in the same second, and ``datetime.isoformat`` per line costs more
    than the rest of the timestamp."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def timestamp(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((created - second) * 1000):03d}+00:00"


_seconds = _Seconds()


class _Invocation:
    """The Lambda context keys of the invocation in progress, one per process (an
    execution environment serves one invocation at a time)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.xray_trace_id = ""
        #: no invocation has run in this process yet
        self.cold = True


_invocation = _Invocation()


def inject_context(context: Any, xray_trace_id: str = "") -> None:
    """Put the Lambda context of this invocation on every following line; call it first
    in each ``lambda_handler``. ``cold_start`` is true on the first call in the process
    only. ``xray_trace_id`` comes from ``config.xray_trace_id()``; a ``None`` context
    (a handler called outside Lambda) adds no keys."""
    _invocation.xray_trace_id = xray_trace_id
    if context is None:
        _invocation.keys = {}
        return
    memory: Any = getattr(context, "memory_limit_in_mb", 0)
    with contextlib.suppress(TypeError, ValueError):  # Lambda's runtime gives a string
        memory = int(memory)
    _invocation.keys = {
        "cold_start": _invocation.cold,
        "function_name": getattr(context, "function_name", ""),
        "function_memory_size": memory,
        "function_arn": getattr(context, "invoked_function_arn", ""),
        "function_request_id": getattr(context, "aws_request_id", ""),
    }
    _invocation.cold = False


class PowertoolsFormatter(logging.Formatter):
    """Render a record as one JSON line with Powertools Logger's keys, then any extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": _message(record),
            "timestamp": _seconds.timestamp(record.created),
            "service": self.service,
            **_invocation.keys,
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key in _STANDARD_KEYS or key.startswith("_"):
                continue
            doc[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = self.formatException(record.exc_info)
            doc["exception_name"] = record.exc_info[0].__name__
        if _invocation.xray_trace_id:
            doc["xray_trace_id"] = _invocation.xray_trace_id
        return encode_line(doc)


def _message(record: logging.LogRecord) -> Any:
    """A dict logged as such stays an object, as in Powertools; anything else is text."""
    if isinstance(record.msg, dict) and not record.args:
        return record.msg
    return record.getMessage()


def setup_logging(settings: LogSettings | None = None) -> None:
    """Make every handler of the root logger write Powertools-shaped JSON lines (adding
    one on stderr if none).

    On Lambda the runtime installed a handler (on stdout, with its own text or JSON
    formatter) before importing the function: it is kept and given our formatter, so
    the lines go where Lambda reads them. ``settings`` default to ``LogSettings.from_env()``.
    """
    settings = settings or LogSettings.from_env()
    root = logging.getLogger()
    level = _LAMBDA_LEVELS.get(settings.level, settings.level)
    unknown = level not in logging.getLevelNamesMapping()
    root.setLevel("INFO" if unknown else level)
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = PowertoolsFormatter(settings.service)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if unknown:
        logging.getLogger(__name__).warning("unknown log level %r: using INFO", settings.level)
