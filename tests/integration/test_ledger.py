"""The ledger's conditional writes, including the races, against every backend: a real
SQLite file, and DynamoDB on moto's server."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import boto3
import pytest

from courierflow.ledger.base import ClaimResult, FileState, Ledger
from courierflow.ledger.dynamodb import DynamoDBLedger, table_definition
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "dynamodb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        return SQLiteLedger(tmp_path / "ledger.db")
    client = boto3.client(
        "dynamodb", endpoint_url=request.getfixturevalue("moto_server"), region_name="us-east-1"
    )
    table = f"ledger-{uuid.uuid4().hex[:8]}"
    client.create_table(**table_definition(table))
    return DynamoDBLedger(table, client=client)


def test_add_queued_returns_new_orders_and_leaves_delivered_alone(ledger: Ledger) -> None:
    assert ledger.add_queued(["A", "B"], "s3://b/one.csv", 1.0) == ["A", "B"]
    assert ledger.claim_delivery("A", "r1", 30, 2.0) is ClaimResult.CLAIMED
    assert ledger.complete_delivery("A", "r1", 3, 2.0, 5.0)

    again = ledger.add_queued(["A", "B", "C"], "s3://b/two.csv", 6.0)

    assert again == ["B", "C"]
    a = ledger.get_order("A")
    assert a is not None and a.state is OrderState.DELIVERED and a.source == "s3://b/one.csv"


def test_second_claim_on_a_live_claim_is_a_counted_duplicate(ledger: Ledger) -> None:
    ledger.add_queued(["A"], "s", 0.0)
    assert ledger.claim_delivery("A", "r1", 30, 1.0) is ClaimResult.CLAIMED
    assert ledger.claim_delivery("A", "r2", 30, 2.0) is ClaimResult.IN_PROGRESS
    assert ledger.complete_delivery("A", "r1", 4, 1.0, 5.0)
    assert ledger.claim_delivery("A", "r3", 30, 6.0) is ClaimResult.ALREADY_DELIVERED
    record = ledger.get_order("A")
    assert record is not None
    assert record.duplicates == 2
    assert record.request_id == "r1"


def test_expired_claim_can_be_taken_and_the_old_attempt_cannot_complete(ledger: Ledger) -> None:
    ledger.add_queued(["A"], "s", 0.0)
    assert ledger.claim_delivery("A", "dead", 10, 1.0) is ClaimResult.CLAIMED
    assert ledger.claim_delivery("A", "new", 10, 12.0) is ClaimResult.CLAIMED
    assert not ledger.complete_delivery("A", "dead", 3, 1.0, 13.0)
    assert ledger.complete_delivery("A", "new", 3, 12.0, 15.0)
    record = ledger.get_order("A")
    assert record is not None and record.attempts == 2


def test_released_claim_is_retaken_by_lambdas_retry_with_the_same_request_id(
    ledger: Ledger,
) -> None:
    ledger.add_queued(["A"], "s", 0.0)
    assert ledger.claim_delivery("A", "r1", 30, 1.0) is ClaimResult.CLAIMED
    ledger.release_claim("A", "r1", "boom", 2.0)
    record = ledger.get_order("A")
    assert record is not None and record.state is OrderState.DISPATCHED and record.reason == "boom"
    assert ledger.claim_delivery("A", "r1", 30, 3.0) is ClaimResult.CLAIMED


def test_failed_is_never_written_over_delivered(ledger: Ledger) -> None:
    ledger.claim_delivery("A", "r1", 30, 1.0)
    ledger.complete_delivery("A", "r1", 2, 1.0, 3.0)
    ledger.mark_failed("A", "late failure report", 4.0)
    ledger.mark_dispatched({"A": 5.0})
    record = ledger.get_order("A")
    assert record is not None and record.state is OrderState.DELIVERED


def test_a_dispatch_recorded_late_keeps_the_state_and_notes_its_time(ledger: Ledger) -> None:
    """The manager records dispatches in batches, so a fast courier may claim the order
    first: the order stays delivering, and still shows when Lambda accepted it."""
    ledger.add_queued(["A", "B"], "s", 0.0)
    ledger.claim_delivery("A", "r1", 30, 1.2)
    ledger.mark_dispatched({"A": 1.0, "B": 1.1})
    a, b = ledger.get_order("A"), ledger.get_order("B")
    assert a is not None and a.state is OrderState.DELIVERING and a.dispatched_at == 1.0
    assert b is not None and b.state is OrderState.DISPATCHED and b.dispatched_at == 1.1
    ledger.mark_dispatched({"A": 9.0, "B": 9.0})  # re-dispatched later (the reconciler)
    a, b = ledger.get_order("A"), ledger.get_order("B")
    assert a is not None and a.dispatched_at == 1.0, "a delivering order keeps its first"
    assert b is not None and b.dispatched_at == 9.0


def test_stuck_finds_old_unfinished_orders_only(ledger: Ledger) -> None:
    ledger.add_queued(["old", "new", "done"], "s", 0.0)
    ledger.claim_delivery("done", "r", 30, 1.0)
    ledger.complete_delivery("done", "r", 1, 1.0, 2.0)
    ledger.touch(["new"], 100.0)
    stuck = ledger.stuck([OrderState.QUEUED, OrderState.DISPATCHED], older_than=50.0)
    assert [r.order_id for r in stuck] == ["old"]


def test_a_file_version_is_begun_once(ledger: Ledger) -> None:
    assert ledger.begin_file("b", "k.csv", "e1", 1.0)
    assert not ledger.begin_file("b", "k.csv", "e1", 2.0)
    assert ledger.begin_file("b", "k.csv", "e2", 3.0)
    ledger.finish_file("b", "k.csv", "e1", FileState.DONE, rows=3, published=2, rejected=1, now=4)
    record = ledger.get_file("b", "k.csv", "e1")
    assert record is not None and record.state is FileState.DONE and record.rejected == 1
    ledger.forget_file("b", "k.csv", "e1")
    assert ledger.begin_file("b", "k.csv", "e1", 5.0)


def test_add_queued_in_bulk_creates_new_orders_and_requeues_known_ones_unless_delivered(
    ledger: Ledger,
) -> None:
    """More orders than one read (100 keys) or one batch write (25) takes on DynamoDB,
    among them orders already known in every state."""
    ids = [f"O-{i:04d}" for i in range(260)]
    ledger.add_queued(["O-0005", "O-0150", "O-0200", "O-0255"], "s3://b/old.csv", 1.0)
    ledger.claim_delivery("O-0005", "r1", 30, 2.0)
    ledger.complete_delivery("O-0005", "r1", 1, 2.0, 3.0)  # delivered
    ledger.claim_delivery("O-0150", "r2", 30, 2.0)  # delivering
    ledger.mark_failed("O-0200", "courier lost", 3.0)  # failed
    ledger.mark_dispatched({"O-0255": 3.5})  # dispatched

    fresh = ledger.add_queued(ids, "s3://b/new.csv", 4.0)

    assert fresh == [i for i in ids if i != "O-0005"]
    states = {r.order_id: (r.state, r.source) for r in ledger.orders()}
    assert states.pop("O-0005") == (OrderState.DELIVERED, "s3://b/old.csv")
    assert set(states.values()) == {(OrderState.QUEUED, "s3://b/new.csv")}
    assert len(states) == 259
    requeued = ledger.get_order("O-0200")
    assert requeued is not None and requeued.reason == "" and requeued.queued_at == 4.0
    new = ledger.get_order("O-0259")
    assert new is not None and new.queued_at == 4.0 and new.attempts == 0
    assert len(ledger.stuck([OrderState.QUEUED], older_than=5.0)) == 259  # updated_at is set


def test_a_file_left_processing_is_taken_over_by_its_own_retry_or_after_its_lease(
    ledger: Ledger,
) -> None:
    assert ledger.begin_file("b", "k.csv", "e1", 10.0, attempt="req-1", lease_until=70.0)
    other = dict(attempt="req-2", lease_until=200.0)
    assert ledger.resume_file("b", "k.csv", "e1", now=20.0, **other) is None  # req-1 is live
    retry = ledger.resume_file("b", "k.csv", "e1", attempt="req-1", lease_until=80.0, now=21.0)
    assert retry is not None and (retry.attempt, retry.lease_until, retry.rows) == ("req-1", 80, 0)
    taken = ledger.resume_file("b", "k.csv", "e1", now=81.0, **other)  # req-1 timed out
    assert taken is not None and (taken.attempt, taken.state) == ("req-2", FileState.PROCESSING)
    assert ledger.resume_file("b", "k.csv", "e1", attempt="req-1", lease_until=300.0,
                              now=82.0) is None  # fmt: skip
    assert ledger.resume_file("b", "k.csv", "e1", attempt="", lease_until=300.0, now=83.0) is None
    ledger.finish_file("b", "k.csv", "e1", FileState.DONE, rows=1, published=1, rejected=0,
                       now=90.0)  # fmt: skip
    assert ledger.resume_file("b", "k.csv", "e1", attempt="req-2", lease_until=300.0,
                              now=91.0) is None  # fmt: skip
    assert ledger.resume_file("b", "other.csv", "e1", **other, now=91.0) is None


def test_a_checkpoint_lets_go_of_the_file_and_the_next_attempt_resumes_after_it(
    ledger: Ledger,
) -> None:
    assert ledger.begin_file("b", "k.csv", "e1", 10.0, attempt="req-1", lease_until=910.0)
    assert not ledger.checkpoint_file(
        "b", "k.csv", "e1", attempt="req-2", rows=9, published=9, rejected=0, skipped=0, now=11.0
    ), "only the holder may checkpoint"
    assert ledger.checkpoint_file(
        "b", "k.csv", "e1", attempt="req-1", rows=1200, published=996, rejected=3, skipped=1,
        now=890.0,
    )  # fmt: skip
    record = ledger.get_file("b", "k.csv", "e1")
    assert record is not None
    assert (record.state, record.rows, record.published, record.rejected, record.skipped) == (
        FileState.PROCESSING, 1200, 996, 3, 1,
    )  # fmt: skip
    assert (record.lease_until, record.checkpoint_at) == (None, 890.0)
    # at once, long before req-1's lease would have ended
    resumed = ledger.resume_file("b", "k.csv", "e1", attempt="req-9", lease_until=1800.0, now=891.0)
    assert resumed is not None
    assert (resumed.attempt, resumed.rows, resumed.published) == ("req-9", 1200, 996)
    assert not ledger.checkpoint_file(
        "b", "k.csv", "e1", attempt="req-1", rows=1, published=1, rejected=0, skipped=0, now=892.0
    ), "the old holder lost the file"


def _claim_all(path: str, worker: int, order_ids: list[str], out: multiprocessing.Queue) -> None:
    ledger = SQLiteLedger(path)
    won = [
        o for o in order_ids if ledger.claim_delivery(o, f"w{worker}", 60, 1.0).value == "claimed"
    ]
    out.put(won)


@pytest.mark.timeout(60)
def test_processes_racing_for_the_same_orders_each_win_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    ids = [f"O-{i}" for i in range(200)]
    SQLiteLedger(path).add_queued(ids, "s", 0.0)
    out: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_claim_all, args=(path, w, ids, out)) for w in range(6)
    ]
    for p in workers:
        p.start()
    won = [o for _ in workers for o in out.get(timeout=50)]
    for p in workers:
        p.join(timeout=10)
    assert sorted(won) == sorted(ids)
    record = SQLiteLedger(path).get_order("O-0")
    assert record is not None and record.duplicates == 5
    # the running counts, kept by six processes at once, still match the orders
    assert SQLiteLedger(path).counts() == dict.fromkeys(OrderState, 0) | {
        OrderState.DELIVERING: 200
    }


def _queue_one(path: str, order_id: str) -> None:
    SQLiteLedger(path).add_queued([order_id], "s", 1.0)


@pytest.mark.timeout(60)
def test_sqlite_writers_wait_their_turn_in_the_kernel_queue(tmp_path: Path) -> None:
    """A writer sleeps in the writers' queue (flock) while another process holds it, and
    writes as soon as it is handed on."""
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path)
    ledger.add_queued(["O-first"], "s", 0.0)  # creates the file and the queue's lock file
    holder = os.open(tmp_path / "ledger.db-writer.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    writer = multiprocessing.Process(target=_queue_one, args=(str(path), "O-second"))
    try:
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive() and ledger.get_order("O-second") is None
        fcntl.flock(holder, fcntl.LOCK_UN)
        writer.join(timeout=30)
        assert writer.exitcode == 0
        record = ledger.get_order("O-second")
        assert record is not None and record.state is OrderState.QUEUED
    finally:
        os.close(holder)
        if writer.is_alive():
            writer.kill()
            writer.join()


def _run_through_every_transition(ledger: Ledger) -> None:
    """Orders of two files through every state change the pipeline makes, the races
    and re-uploads included, with deliveries finishing over several seconds."""
    one, two = "s3://b/one.csv", "s3://b/two.csv"
    ledger.add_queued([f"A{i}" for i in range(12)], one, 100.0)
    ledger.add_queued(["B0", "B1", "B2"], two, 100.5)
    ledger.mark_dispatched({f"A{i}": 101.0 + i / 10 for i in range(10)})
    for i in range(8):
        assert ledger.claim_delivery(f"A{i}", f"r{i}", 30, 102.0 + i) is ClaimResult.CLAIMED
    assert ledger.claim_delivery("A0", "dup", 30, 102.5) is ClaimResult.IN_PROGRESS
    for i in range(6):
        assert ledger.complete_delivery(f"A{i}", f"r{i}", 1.0, 102.0 + i, 103.2 + i)
    ledger.release_claim("A6", "r6", "courier fell ill", 109.0)
    ledger.mark_failed("A7", "gave up", 109.5)
    ledger.mark_failed("A5", "late report of a delivered order", 110.0)  # left alone
    ledger.claim_delivery("B0", "rb", 30, 110.0)  # claimed before its dispatch was recorded
    ledger.mark_dispatched({"B0": 109.9, "B1": 110.1})
    ledger.add_queued(["A7", "A0", "C0"], two, 111.0)  # re-upload: A7 moves files, A0 stays
    ledger.claim_delivery("X", "rx", 30, 111.5)  # an order the ledger never saw queued


def test_counts_and_activity_are_what_the_orders_say(ledger: Ledger) -> None:
    """The running figures each backend keeps agree with the orders themselves, per file
    and for all, after every kind of change."""
    from courierflow.ledger.activity import activity_of

    _run_through_every_transition(ledger)
    records = ledger.orders()
    assert len(records) == 17
    for source in (None, "s3://b/one.csv", "s3://b/two.csv"):
        mine = [r for r in records if source is None or r.source == source]
        expected = activity_of(mine, now=108.7, window_s=5, latest=6)
        assert ledger.counts(source) == expected.counts, source
        got = ledger.activity(now=108.7, window_s=5, latest=6, source=source)
        assert (got.counts, got.waiting, got.recent_deliveries) == (
            expected.counts, expected.waiting, expected.recent_deliveries,
        ), source  # fmt: skip
        assert got.first_queued_at == expected.first_queued_at, source
        if source is None:
            assert got.last_finished_at == expected.last_finished_at
        if isinstance(ledger, SQLiteLedger):  # DynamoDB keeps no latest changes
            assert got.latest == expected.latest, source
            # the latest finish ever written for the file: A7 finished in one.csv, then
            # moved to two.csv, taking its finish time along
            assert got.last_finished_at is not None and expected.last_finished_at is not None
            assert got.last_finished_at >= expected.last_finished_at, source
    everything = ledger.activity(now=108.7, window_s=5, latest=6)
    assert everything.counts[OrderState.DELIVERED] == 6
    assert everything.recent_deliveries == 5  # finished in seconds 104..108
    assert everything.waiting == 7  # A8-A11, B1, B2, C0: never started (A6, A7 had)


def test_the_streamed_orders_and_trip_events_give_the_summary_of_every_record(
    ledger: Ledger,
) -> None:
    """Each backend streams a file's orders and its trips' events in time order; the
    summary made from them is the one made from every record held in a list."""
    from courierflow.ledger.trips import trip_events
    from courierflow.report.summary import summarize, summarize_ledger

    _run_through_every_transition(ledger)
    records = ledger.orders()
    for source in (None, "s3://b/one.csv", "s3://b/two.csv"):
        mine = [r for r in records if source is None or r.source == source]
        streamed = sorted(ledger.iter_orders(source), key=lambda r: r.order_id)
        assert streamed == mine, source
        assert list(ledger.trip_events(source)) == list(trip_events(mine)), source
        if source is not None:
            summary = summarize_ledger(ledger, None, source, 100.0)
            assert summary == summarize(None, mine, 100.0), source
    one = summarize_ledger(ledger, None, "s3://b/one.csv", 100.0)
    assert (one.delivered, one.failed, one.lost, one.duplicates) == (6, 0, 5, 1)
    assert one.peak_concurrency == 2 and one.makespan_s == 8.2


def test_counts_follow_a_race_that_loses(ledger: Ledger) -> None:
    """A change whose condition fails (someone got there first) counts nothing."""
    ledger.add_queued(["A"], "s", 0.0)
    assert ledger.claim_delivery("A", "r1", 30, 1.0) is ClaimResult.CLAIMED
    assert ledger.claim_delivery("A", "r2", 30, 2.0) is ClaimResult.IN_PROGRESS
    assert not ledger.complete_delivery("A", "r2", 1, 2.0, 3.0)
    ledger.release_claim("A", "r2", "not mine", 3.0)
    assert ledger.complete_delivery("A", "r1", 1, 1.0, 4.0)
    ledger.mark_failed("A", "late", 5.0)
    expected = dict.fromkeys(OrderState, 0) | {OrderState.DELIVERED: 1}
    assert ledger.counts() == ledger.counts("s") == expected


def test_both_backends_claim_as_the_rule_in_base_says(ledger: Ledger) -> None:
    """ledger.base states the claim rule once; each backend's conditional write obeys it,
    for an order in every state, with a live or an expired claim, by its holder or not."""
    from courierflow.ledger.base import may_claim

    cases = 0
    for n, state in enumerate(OrderState):
        for holder in ("holder", "other"):
            for now in (5.0, 50.0):  # the claim below expires at 30
                order_id = f"{state.value}-{holder}-{int(now)}-{n}"
                ledger.add_queued([order_id], "s", 0.0)
                if state is not OrderState.QUEUED:
                    ledger.mark_dispatched({order_id: 0.5})
                if state in (OrderState.DELIVERING, OrderState.DELIVERED):
                    ledger.claim_delivery(order_id, "holder", 29, 1.0)
                if state is OrderState.DELIVERED:
                    ledger.complete_delivery(order_id, "holder", 1, 1.0, 2.0)
                if state is OrderState.FAILED:
                    ledger.mark_failed(order_id, "lost", 2.0)
                before = ledger.get_order(order_id)
                assert before is not None and before.state is state
                expected = may_claim(before, holder, now)
                got = ledger.claim_delivery(order_id, holder, 30, now)
                assert (got is ClaimResult.CLAIMED) == expected, (state, holder, now)
                cases += 1
    assert cases == 20
    assert may_claim(None, "anyone", 0.0)
