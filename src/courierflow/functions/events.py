"""Typed, read-only views of the AWS events our handlers receive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True, slots=True)
class S3ObjectRef:
    """One object an S3 notification is about; ``message_id`` is set when it came via SQS."""

    bucket: str
    key: str
    etag: str
    size: int
    message_id: str = ""


def _objects_in_s3_event(doc: dict[str, Any], message_id: str = "") -> Iterator[S3ObjectRef]:
    if doc.get("Event") == "s3:TestEvent":  # sent once when a notification is configured
        return
    for record in doc.get("Records") or []:
        if record.get("eventSource") != "aws:s3":
            continue
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        yield S3ObjectRef(
            bucket=str((s3.get("bucket") or {}).get("name", "")),
            key=unquote_plus(str(obj.get("key", ""))),  # keys arrive URL-encoded
            etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
            size=int(obj.get("size") or 0),
            message_id=message_id,
        )


def s3_objects(event: dict[str, Any]) -> Iterator[S3ObjectRef]:
    """Every object named by an S3 event, given directly or wrapped in SQS records.

    Test events and records from other sources are skipped.
    """
    yield from _objects_in_s3_event(event)
    for record in event.get("Records") or []:
        if record.get("eventSource") != "aws:sqs":
            continue
        try:
            body = json.loads(record.get("body") or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(body, dict):
            yield from _objects_in_s3_event(body, str(record.get("messageId", "")))
