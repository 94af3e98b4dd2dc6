"""The publisher at any file size: it stops at a checkpoint before its invocation's
deadline, and the next attempt resumes there, on the SQLite ledger and on DynamoDB (moto
in process). The queue is a recording stand-in that confirms what it is given."""

from __future__ import annotations

import csv
import io
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from courierflow.errors import PublishError, PublishIncomplete
from courierflow.ledger.base import FileState, Ledger
from courierflow.ledger.dynamodb import DynamoDBLedger, table_definition
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState
from courierflow.publishing import LEDGER_BATCH, OrderPublisher
from courierflow.transports.base import DeadLetter, OutgoingMessage, QueuedMessage, Transport

pytestmark = pytest.mark.timeout(120)
BUCKET, KEY = "uploads", "big.csv"
SOURCE = f"s3://{BUCKET}/{KEY}"
#: data rows; every hundredth (50, 150, ...) has a bad quantity, and the last repeats an
#: early id, so a reject sits both before and after the checkpoint
ROWS = 1301
BAD = {i for i in range(ROWS - 1) if i % 100 == 50}
VALID = [f"ORD-{i:05d}" for i in range(ROWS - 1) if i not in BAD]
#: rows the first attempt handles when it stops after one batch: 500 orders, 5 rejects
FIRST_ROWS = LEDGER_BATCH + 5


class RecordingTransport(Transport):
    """Confirms every message it is given; ``fail_after`` messages in all, it fails."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.published: list[str] = []
        self.fail_after = fail_after

    def publish(self, messages: Iterable[OutgoingMessage]) -> int:
        confirmed = 0
        for message in messages:
            if self.fail_after is not None and len(self.published) >= self.fail_after:
                raise PublishError("broker went away")
            self.published.append(message.order_id)
            confirmed += 1
        return confirmed

    def consume(
        self, on_message: Callable[[QueuedMessage], None], prefetch: int, stop: threading.Event
    ) -> None:
        raise NotImplementedError

    def depth(self) -> int:
        return 0

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        return []

    def replay_dead_letters(self, order_id: str | None = None) -> int:
        return 0


def runs_out_after(batches: int) -> Callable[[], float]:
    """Lambda's remaining time, as it looks to a publisher that has time for the start
    and ``batches`` ledger batches, and then has 5 s left."""
    calls = itertools.count()
    return lambda: 900.0 if next(calls) < batches else 5.0


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["order_id", "customer", "address", "items", "quantity"])
        for i in range(ROWS - 1):
            quantity = "many" if i in BAD else str(1 + i % 3)
            writer.writerow([f"ORD-{i:05d}", f"Customer {i}", f"{i} Main St", "parcel", quantity])
        writer.writerow(["ORD-00003", "Again", "3 Main St", "parcel", "1"])  # a duplicate id
        client.put_object(Bucket=BUCKET, Key=KEY, Body=out.getvalue().encode())
        yield client


@pytest.fixture(params=["sqlite", "dynamodb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, s3: Any) -> Ledger:
    if request.param == "sqlite":
        return SQLiteLedger(tmp_path / "ledger.db")
    client = boto3.client("dynamodb", region_name="us-east-1")  # inside s3's mock_aws
    client.create_table(**table_definition("ledger"))
    return DynamoDBLedger("ledger", client=client)


def etag_of(s3: Any) -> str:
    return str(s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"]).strip('"')


def rejects_report(s3: Any) -> list[list[str]]:
    body = s3.get_object(Bucket=BUCKET, Key=f"rejects/{KEY}")["Body"].read().decode()
    return list(csv.reader(io.StringIO(body)))


@pytest.mark.parametrize("retry", ["same_attempt", "new_attempt"])
def test_a_file_cut_short_by_the_deadline_resumes_after_its_checkpoint_publishing_each_order_once(
    s3: Any, ledger: Ledger, retry: str
) -> None:
    """Lambda's async retry carries the same request id; an SQS redelivery comes as a new
    invocation: both resume at once after the checkpoint."""
    transport = RecordingTransport()
    publisher = OrderPublisher(s3, transport, ledger)

    with pytest.raises(PublishIncomplete, match=f"after {FIRST_ROWS} rows"):
        publisher.process(BUCKET, KEY, time_left=runs_out_after(batches=1), attempt="req-1")

    assert transport.published == VALID[:LEDGER_BATCH]
    record = ledger.get_file(BUCKET, KEY, etag_of(s3))
    assert record is not None and record.state is FileState.PROCESSING
    assert (record.rows, record.published, record.rejected, record.skipped) == (
        FIRST_ROWS, LEDGER_BATCH, 5, 0,
    )  # fmt: skip
    assert record.checkpoint_at is not None and record.lease_until is None

    again = "req-1" if retry == "same_attempt" else "req-2"
    summary = publisher.process(BUCKET, KEY, attempt=again)

    assert (summary.status, summary.rows, summary.published, summary.rejected) == (
        "done", ROWS, len(VALID), len(BAD) + 1,
    )  # fmt: skip
    assert Counter(transport.published) == Counter(VALID), "every order exactly once"
    done = ledger.get_file(BUCKET, KEY, etag_of(s3))
    assert done is not None and done.state is FileState.DONE
    assert (done.rows, done.published, done.rejected) == (ROWS, len(VALID), len(BAD) + 1)
    report = rejects_report(s3)
    assert report[0] == ["line", "reason", "raw"]
    lines = [int(row[0]) for row in report[1:]]
    assert lines == [i + 2 for i in sorted(BAD)] + [ROWS + 1], "rejects of both attempts"
    assert "duplicate" in report[-1][1]
    assert ledger.counts(SOURCE)[OrderState.QUEUED] == len(VALID)


@pytest.mark.parametrize("retry", ["same_attempt", "new_attempt_after_the_lease"])
def test_a_retry_of_an_attempt_killed_mid_file_resumes_instead_of_waiting(
    s3: Any, ledger: Ledger, retry: str
) -> None:
    """A killed attempt (timeout, out of memory) leaves the file processing, held until
    its deadline: its own retry takes it over at once, another attempt once the lease
    has passed, and before that a second notification publishes nothing."""
    now = [1000.0]
    assert ledger.begin_file(BUCKET, KEY, etag_of(s3), now[0], attempt="req-1",
                             lease_until=1065.0)  # fmt: skip
    transport = RecordingTransport()
    publisher = OrderPublisher(s3, transport, ledger, clock=lambda: now[0])
    now[0] = 1030.0
    busy = publisher.process(BUCKET, KEY, time_left=lambda: 60.0, attempt="req-other")
    assert busy.status == "duplicate" and transport.published == []

    if retry == "new_attempt_after_the_lease":
        now[0] = 1066.0
    again = "req-1" if retry == "same_attempt" else "req-2"
    summary = publisher.process(BUCKET, KEY, time_left=lambda: 60.0, attempt=again)

    assert (summary.status, summary.published) == ("done", len(VALID))
    assert Counter(transport.published) == Counter(VALID)
    record = ledger.get_file(BUCKET, KEY, etag_of(s3))
    assert record is not None and record.state is FileState.DONE


def test_a_broker_failure_lets_go_of_the_file_keeping_its_checkpoint(
    s3: Any, ledger: Ledger
) -> None:
    """The queue fails in the second attempt: the file keeps the first attempt's
    checkpoint and is free at once, and the third attempt resumes from it; orders the
    failed attempt sent may go out twice, the checkpointed ones never."""
    transport = RecordingTransport()
    publisher = OrderPublisher(s3, transport, ledger)
    with pytest.raises(PublishIncomplete):
        publisher.process(BUCKET, KEY, time_left=runs_out_after(batches=1), attempt="req-1")

    transport.fail_after = LEDGER_BATCH + 200
    with pytest.raises(PublishError):
        publisher.process(BUCKET, KEY, time_left=lambda: 900.0, attempt="msg-2")
    record = ledger.get_file(BUCKET, KEY, etag_of(s3))
    assert record is not None and record.state is FileState.PROCESSING
    assert (record.rows, record.published, record.lease_until) == (FIRST_ROWS, LEDGER_BATCH, None)

    transport.fail_after = None
    summary = publisher.process(BUCKET, KEY, time_left=lambda: 900.0, attempt="msg-3")

    assert summary.status == "done"
    sent = Counter(transport.published)
    assert set(sent) == set(VALID)
    assert all(sent[o] == 1 for o in VALID[:LEDGER_BATCH]), "checkpointed: never again"
    assert sorted(o for o, n in sent.items() if n == 2) == VALID[LEDGER_BATCH : LEDGER_BATCH + 200]


def test_every_attempt_publishes_at_least_one_batch(s3: Any, ledger: Ledger) -> None:
    """With too little time from the start, each attempt still makes a batch of
    progress, so the retries always reach the end of the file."""
    transport = RecordingTransport()
    publisher = OrderPublisher(s3, transport, ledger)
    attempts = 0
    while True:
        attempts += 1
        try:
            summary = publisher.process(BUCKET, KEY, time_left=lambda: 1.0, attempt=f"r{attempts}")
            break
        except PublishIncomplete:
            assert attempts < 10
    assert attempts == 3  # 1287 orders in batches of 500
    assert summary.published == len(VALID)
    assert Counter(transport.published) == Counter(VALID)
