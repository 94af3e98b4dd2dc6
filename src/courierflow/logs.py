"""Structured logs: one JSON object per line, with ``order_id`` and ``request_id`` when
the record concerns an order (pass them with ``extra=``)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

#: attributes of a LogRecord that are not user-supplied ``extra`` fields
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as a JSON line: time, level, logger, message and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(level: str | None = None) -> None:
    """Make every handler of the root logger write JSON lines (adding one if none).

    On Lambda the runtime already installed a handler; locally we add one on stderr.
    Level from ``COURIERFLOW_LOG_LEVEL`` (default INFO).
    """
    root = logging.getLogger()
    root.setLevel(level or os.environ.get("COURIERFLOW_LOG_LEVEL", "INFO"))
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter = JsonFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
    for noisy in ("botocore", "boto3", "urllib3", "pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
