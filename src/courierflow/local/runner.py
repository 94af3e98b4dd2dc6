"""Upload a file to a running stack and follow its orders through the ledger."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from courierflow.errors import StackError
from courierflow.ledger.base import FileRecord, FileState, Ledger
from courierflow.local.stack import StackInfo, local_client
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary, summarize

#: seconds between looks at the ledger while following a run
POLL_S = 0.5


@dataclass
class Progress:
    """A snapshot while a run is under way."""

    file: FileRecord | None
    counts: dict[OrderState, int]
    elapsed_s: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return self.counts[OrderState.DELIVERED] + self.counts[OrderState.FAILED]


def upload(info: StackInfo, path: Path, key: str | None = None) -> tuple[str, str]:
    """Put ``path`` in the stack's bucket; returns (key, etag)."""
    if not path.is_file():
        raise StackError(f"{path}: no such file")
    s3 = local_client("s3", info.moto_url)
    key = key or path.name
    with open(path, "rb") as body:
        etag = s3.put_object(Bucket=info.bucket, Key=key, Body=body)["ETag"].strip('"')
    return key, etag


def follow(
    ledger: Ledger,
    bucket: str,
    key: str,
    etag: str,
    started_at: float,
    stall_timeout_s: float,
    on_progress: Callable[[Progress], None] = lambda _p: None,
) -> RunSummary:
    """Wait until every order of the file is delivered or failed, or nothing moved for
    ``stall_timeout_s`` (what is left then is reported lost)."""
    source = f"s3://{bucket}/{key}"
    last_change = time.monotonic()
    last_seen: tuple[object, ...] = ()
    while True:
        file = ledger.get_file(bucket, key, etag)
        counts = ledger.counts(source)
        progress = Progress(file, counts, time.time() - started_at)
        on_progress(progress)
        seen = (file.state if file else None, tuple(counts.values()))
        if seen != last_seen:
            last_seen, last_change = seen, time.monotonic()
        file_done = file is not None and file.state is not FileState.PROCESSING
        if file_done and progress.finished == progress.total:
            break
        if time.monotonic() - last_change > stall_timeout_s:
            break
        time.sleep(POLL_S)
    return summarize(ledger.get_file(bucket, key, etag), ledger.orders(source), started_at)
