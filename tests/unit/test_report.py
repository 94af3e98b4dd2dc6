"""report.html, the timeline PNG and the dashboard's snapshot: pure code, no services."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import html
import itertools
import json
import re
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from courierflow.errors import ConfigError
from courierflow.ledger.activity import Activity
from courierflow.ledger.base import OrderRecord
from courierflow.ledger.sqlite import SQLiteLedger
from courierflow.orders import OrderState
from courierflow.report import dashboard
from courierflow.report.aggregate import DENSITY_BINS, DETAIL_LIMIT, MAX_LISTED, assign_lanes
from courierflow.report.html import plot_timeline, read_rejects, render_report, write_report
from courierflow.report.series import (
    Occupancy,
    in_flight_series,
    queue_depth_series,
    throughput_series,
)
from courierflow.report.stats import LatencySketch, Percentiles, latencies, percentiles
from courierflow.report.summary import peak_concurrency, summarize
from tests.reportdata import SLOW_EVERY, SyntheticRun

pytestmark = pytest.mark.unit
T0 = 1_700_000_000.0


def delivered(order_id: str, queued: float, start: float, end: float) -> OrderRecord:
    return OrderRecord(
        order_id,
        OrderState.DELIVERED,
        source="s3://b/orders.csv",
        queued_at=T0 + queued,
        dispatched_at=T0 + queued,
        started_at=T0 + start,
        finished_at=T0 + end,
        attempts=1,
    )


def sample_run(n: int = 40) -> list[OrderRecord]:
    """n deliveries, 4 s each, one starting every second: at most 4 on the road at once
    (a trip ending at the instant another starts frees its courier)."""
    return [delivered(f"ORD-{i:03d}", 0.0, 1.0 + i, 5.0 + i) for i in range(n)]


# --- lanes ----------------------------------------------------------------------------------


def test_lanes_are_reused_as_soon_as_a_trip_ends_so_lanes_equal_peak_concurrency() -> None:
    records = sample_run()
    bars = assign_lanes(records)
    assert len(bars) == len(records)
    assert max(b.lane for b in bars) + 1 == peak_concurrency(records) == 4
    assert [b.lane for b in bars[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_no_two_trips_on_a_lane_overlap_and_the_lowest_free_lane_is_taken() -> None:
    records = [
        delivered("a", 0, 0, 10),
        delivered("b", 0, 1, 3),
        delivered("c", 0, 2, 4),
        delivered("d", 0, 3.5, 5),  # b's lane (1) is free again, c's (2) is not
        delivered("e", 0, 11, 12),  # every lane free: back to lane 0
    ]
    lanes = {b.order_id: b.lane for b in assign_lanes(records)}
    assert lanes == {"a": 0, "b": 1, "c": 2, "d": 1, "e": 0}
    by_lane: dict[int, list[tuple[float, float]]] = {}
    for b in assign_lanes(records):
        by_lane.setdefault(b.lane, []).append((b.start, b.end))
    for trips in by_lane.values():
        trips.sort()
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(trips))


def test_orders_never_started_get_no_bar_and_unfinished_ones_run_to_now() -> None:
    waiting = OrderRecord("w", OrderState.QUEUED, queued_at=T0)
    on_road = OrderRecord("r", OrderState.DELIVERING, queued_at=T0, started_at=T0 + 1)
    bars = assign_lanes([waiting, on_road], now=T0 + 5)
    assert [(b.order_id, b.end - T0, b.outcome) for b in bars] == [("r", 5.0, "delivering")]


# --- percentiles and series -----------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentiles([]) == Percentiles(0, None, None, None)
    assert percentiles([7.0]) == Percentiles(1, 7.0, 7.0, 7.0)
    assert percentiles([1.0, 2.0, 3.0, 4.0]).p50 == 2.5
    values = [float(v) for v in range(1, 101)]
    for ordered in (values, list(reversed(values))):
        p = percentiles(ordered)
        assert (p.count, p.p50) == (100, pytest.approx(50.5))
        assert p.p95 == pytest.approx(95.05) and p.p99 == pytest.approx(99.01)


def test_latency_is_split_into_queue_wait_and_trip() -> None:
    records = [delivered(f"o{i}", 0.0, float(i), float(i) + 2.0) for i in range(1, 11)]
    stats = latencies(records)
    assert stats["queue to start"].count == 10
    assert stats["queue to start"].p50 == pytest.approx(5.5)
    assert stats["start to end"].p99 == pytest.approx(2.0)


def test_series_count_trips_on_the_road_and_orders_waiting_in_the_queue() -> None:
    records = sample_run(10)  # all queued at 0; trip i runs [1+i, 5+i)
    flight = dict(in_flight_series(records, T0, T0 + 14, points=15))
    depth = dict(queue_depth_series(records, T0, T0 + 14, points=15))
    assert flight[T0 + 0] == 0 and flight[T0 + 4.5 - 0.5] == 4 and flight[T0 + 14] == 0
    assert depth[T0 + 0] == 10 and depth[T0 + 3] == 7 and depth[T0 + 10] == 0
    tput = throughput_series(records, T0, T0 + 14, points=14)
    assert sum(rate * 1.0 for _, rate in tput) == pytest.approx(10)


def test_rejects_report_rows_are_read_as_line_and_reason() -> None:
    text = 'line,reason,raw\n3,empty order_id,";nobody;1"\n4,"quantity ""zero""",x\n'
    assert read_rejects(text) == [(3, "empty order_id"), (4, 'quantity "zero"')]


# --- report.html ----------------------------------------------------------------------------


def render(records: list[OrderRecord], rejects: list[tuple[int, str]] | None = None) -> str:
    return render_report(summarize(None, records, T0), records, T0, rejects or [])


def test_report_has_one_delivery_rect_per_trip_with_its_order_id() -> None:
    records = sample_run(25)
    page = render(records)
    ids = re.findall(r'<rect class="delivery delivered" data-order-id="([^"]*)"', page)
    assert sorted(ids) == [r.order_id for r in records]
    assert 'data-figure="delivered"><div class="v">25<' in page


def test_user_text_is_escaped_everywhere_in_the_report() -> None:
    evil = '<script>alert("x")</script>&"\''
    records = [
        delivered(evil, 0, 1, 2),
        OrderRecord(
            "bad<b>", OrderState.FAILED, queued_at=T0, finished_at=T0 + 3, reason="<img src=x>"
        ),
    ]
    page = render(records, [(7, "<iframe>")])
    assert "<script>" not in page and "<img" not in page and "<iframe>" not in page
    assert "bad<b>" not in page
    # the attribute holds the id exactly: no quote of it ended the attribute early
    (attribute,) = re.findall(r'<rect class="delivery delivered" data-order-id="([^"]*)"', page)
    assert "&lt;script&gt;" in attribute and html.unescape(attribute) == evil
    assert "&lt;img src=x&gt;" in page and "&lt;iframe&gt;" in page


def test_report_is_self_contained_with_no_url_at_all() -> None:
    page = render(sample_run(), [(2, "empty order_id")])
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""\b(src|href)\s*=""", page)
    assert "@import" not in page and "url(" not in page


def test_write_report_reads_the_files_orders_and_figures_from_the_ledger(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    source = "s3://b/orders.csv"
    ledger.begin_file("b", "orders.csv", "etag", now=T0)
    ids = ledger.add_queued([f"o{i}" for i in range(5)], source, now=T0 + 0.1)
    for i, order_id in enumerate(ids):
        ledger.claim_delivery(order_id, f"req{i}", 60, now=T0 + 1 + i)
        ledger.complete_delivery(order_id, f"req{i}", 2.0, T0 + 1 + i, T0 + 3 + i)
    ledger.finish_file("b", "orders.csv", "etag", _done(), rows=6, published=5, rejected=1,
                       now=T0 + 0.2)  # fmt: skip
    out = write_report(ledger, source, T0, tmp_path / "out" / "report.html", [(4, "no id")])
    page = out.read_text()
    assert page.count('<rect class="delivery delivered"') == 5
    assert 'data-figure="rows"><div class="v">6<' in page
    assert 'data-figure="rejected"><div class="v">1<' in page
    assert "no id" in page


def test_rejected_rows_that_cannot_be_read_are_said_to_be_unlisted_not_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After `courierflow down` the local bucket is gone: the page keeps the ledger's count
    of rejected rows and says they are not listed, rather than "Rejected rows (0) none"."""
    from courierflow.config import Settings
    from courierflow.local.processes import free_port
    from courierflow.report.run import write_run_report

    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.begin_file("b", "orders.csv", "etag", now=T0)
    ledger.add_queued(["o1"], "s3://b/orders.csv", now=T0 + 0.1)
    ledger.finish_file("b", "orders.csv", "etag", _done(), rows=3, published=1, rejected=2,
                       now=T0 + 0.2)  # fmt: skip
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: the stack is down
    settings = Settings.from_env({"COURIERFLOW_HOME": str(tmp_path)})
    settings = dataclasses.replace(settings, local_aws_url=nobody)
    page = write_run_report(ledger, tmp_path / "report.html", settings=settings).read_text()
    assert "Rejected rows (2)</h2>" in page
    assert 'data-rejects="unread"' in page and "none</p>" not in page.split("Rejected rows")[1]
    assert "s3://b/rejects/orders.csv cannot be read" in caplog.text


def _done() -> Any:
    from courierflow.ledger.base import FileState

    return FileState.DONE


def test_timeline_png_is_written(tmp_path: Path) -> None:
    out = plot_timeline(sample_run(), tmp_path / "png" / "timeline.png", started_at=T0)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# --- dashboard ------------------------------------------------------------------------------


def test_snapshot_counts_states_flight_throughput_and_estimates_depth() -> None:
    records = [
        *sample_run(6),  # finished at 5..10
        OrderRecord("q1", OrderState.QUEUED, queued_at=T0 + 1),
        OrderRecord("q2", OrderState.DISPATCHED, queued_at=T0 + 1, dispatched_at=T0 + 2),
        OrderRecord("r1", OrderState.DELIVERING, queued_at=T0 + 1, started_at=T0 + 9),
        OrderRecord("f1", OrderState.FAILED, queued_at=T0, finished_at=T0 + 11, reason="gone"),
    ]
    snap = dashboard.build_snapshot(records, now=T0 + 11, dead_letters=2)
    assert snap["counts"] == {
        "queued": 1,
        "dispatched": 1,
        "delivering": 1,
        "delivered": 6,
        "failed": 1,
    }
    assert snap["in_flight"] == 1 and snap["total"] == 10
    assert snap["throughput_per_s"] == pytest.approx(
        4 / dashboard.THROUGHPUT_WINDOW_S
    )  # ends 7..10 in (6, 11]
    assert (snap["queue_depth"], snap["queue_depth_source"]) == (2, "ledger estimate")
    assert snap["dead_letters"] == 2
    assert snap["latest"][0] == {"at": T0 + 11, "order_id": "f1", "event": "failed",
                                 "reason": "gone"}  # fmt: skip
    assert len(snap["latest"]) == dashboard.LATEST_EVENTS
    assert [e["at"] for e in snap["latest"]] == sorted(
        (e["at"] for e in snap["latest"]), reverse=True
    )
    assert dashboard.build_snapshot(records, T0 + 11, dead_letters=2) == snap
    json.dumps(snap)  # what /events sends


def test_snapshot_prefers_the_transport_depth_when_it_has_one() -> None:
    snap = dashboard.build_snapshot(sample_run(3), now=T0, queue_depth=17)
    assert (snap["queue_depth"], snap["queue_depth_source"]) == (17, "transport")


class CountingLedger(SQLiteLedger):
    reads = 0

    def activity(
        self, now: float, window_s: float, latest: int, source: str | None = None
    ) -> Activity:
        self.reads += 1
        return super().activity(now, window_s, latest, source)


def test_a_request_never_reads_the_ledger_after_the_first_snapshot(tmp_path: Path) -> None:
    """A request answers with the latest snapshot, whatever its age: only the snapshot
    thread (each interval of real time, here longer than the test) reads the ledger
    again. A failed probe reads as None."""
    now = [T0]
    ledger = CountingLedger(tmp_path / "l.db")

    def broken() -> int | None:
        raise OSError("no broker")

    snapper = dashboard.Snapshotter(
        ledger, dashboard.Probes(queue_depth=broken), clock=lambda: now[0], interval_s=600
    )
    first = snapper.snapshot()
    now[0] += 1000.0  # older than an interval: still the one a request gets
    assert snapper.snapshot() is first and ledger.reads == 1
    assert first["queue_depth_source"] == "ledger estimate"


def test_the_snapshot_thread_rebuilds_each_interval(tmp_path: Path) -> None:
    ledger = CountingLedger(tmp_path / "l.db")
    snapper = dashboard.Snapshotter(ledger, interval_s=0.1)
    first = snapper.snapshot()
    deadline = time.monotonic() + 10
    while ledger.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger.reads >= 3
    assert snapper.snapshot() is not first and snapper.snapshot()["at"] > first["at"]


def test_a_snapshot_never_waits_for_a_probe_read_in_the_background(tmp_path: Path) -> None:
    """The server's snapshots take the probes' latest readings: a probe stuck on a busy
    broker holds up nothing, and its reading shows once it answers."""
    now = [T0]
    release = threading.Event()
    asked = threading.Event()

    def stuck_depth() -> int | None:
        asked.set()
        release.wait(30)
        return 17

    snapper = dashboard.Snapshotter(
        SQLiteLedger(tmp_path / "l.db"),
        dashboard.Probes(queue_depth=stuck_depth),
        clock=lambda: now[0],
        interval_s=0.05,
    )
    first = snapper.snapshot()  # returns while the probe is still blocked
    assert asked.wait(10) and not release.is_set()
    assert (first["queue_depth"], first["queue_depth_source"]) == (0, "ledger estimate")
    release.set()
    deadline = time.monotonic() + 10
    snap = first
    while snap["queue_depth_source"] != "transport" and time.monotonic() < deadline:
        now[0] += 1.0
        snap = snapper.snapshot()
        time.sleep(0.01)
    assert (snap["queue_depth"], snap["queue_depth_source"]) == (17, "transport")


def asgi_get(app: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET through the ASGI app, without a server."""
    target, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": target,
        "raw_path": target.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_the_api_needs_the_token_by_query_or_header_when_one_is_set(tmp_path: Path) -> None:
    app = dashboard.create_app(dashboard.Snapshotter(SQLiteLedger(tmp_path / "l.db")), "s3cret")
    assert asgi_get(app, "/api/snapshot")[0] == 401
    assert asgi_get(app, "/api/snapshot?token=wrong")[0] == 401
    assert asgi_get(app, "/events")[0] == 401
    status, body = asgi_get(app, "/api/snapshot?token=s3cret")
    assert status == 200 and json.loads(body)["total"] == 0
    assert asgi_get(app, "/api/snapshot", {"Authorization": "Bearer s3cret"})[0] == 200
    assert asgi_get(app, "/", {"X-Courierflow-Token": "s3cret"})[0] == 200


def test_the_page_is_self_contained_and_listens_with_event_source(tmp_path: Path) -> None:
    app = dashboard.create_app(dashboard.Snapshotter(SQLiteLedger(tmp_path / "l.db")))
    status, body = asgi_get(app, "/")
    page = body.decode()
    assert status == 200 and "new EventSource(" in page
    assert "http://" not in page and "https://" not in page
    assert "setInterval" not in page and "fetch(" not in page  # no polling


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_dashboard_refuses_a_non_loopback_host_without_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        dashboard.serve_dashboard("sqlite:///unused.db", host=host, token=None)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True),
                                                ("::1", True), ("0.0.0.0", False)])  # fmt: skip
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert dashboard.is_loopback(host) is loopback


# --- bounded report: past DETAIL_LIMIT deliveries the timeline aggregates -------------------


def section(page: str, heading: str) -> str:
    """The text of the report's card whose heading starts with ``heading``."""
    start = page.index(f"<h2>{heading}")
    return page[start : page.index("</section>", start)]


def test_a_large_run_makes_a_report_under_5_mb_listing_its_failures_in_bounded_memory() -> None:
    small, large = SyntheticRun(20_000), SyntheticRun(200_000)
    small_size = len(render_report(small.summary(), small, T0).encode())
    tracemalloc.start()
    started = time.perf_counter()
    try:
        page = render_report(large.summary(), large, T0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    size = len(page.encode())
    print(f"\n200,000 orders: report {size / 1e6:.3f} MB in {elapsed:.1f} s (traced), "
          f"peak {peak / 1e6:.1f} MB; 20,000 orders: {small_size / 1e6:.3f} MB")  # fmt: skip
    assert size < 5_000_000
    assert size < 2 * small_size  # ten times the orders, not twice the bytes
    # the records are read a chunk at a time, never all held (they would take ~70 MB)
    assert peak < 30_000_000
    assert 'class="delivery' not in page and 'id="density"' in page
    assert not re.search(r"""\b(src|href)\s*=|url\(|https?://|<script""", page)  # self-contained
    failures = section(page, "Failures")
    ids = large.failed_ids()
    assert failures.startswith(f"<h2>Failures ({len(ids)})</h2>")
    listed = re.findall(r"<tr><td>(ORD-\d+)</td><td>3</td><td>gave up on \d+</td></tr>", failures)
    assert listed == ids[:MAX_LISTED] and len(ids) > MAX_LISTED
    assert f"{len(ids) - MAX_LISTED} more not listed" in failures
    slowest = section(page, "Slowest")
    planted = [f"ORD-{i:07d}" for i in range(1, 200_000, SLOW_EVERY)]
    assert re.findall(r"<tr><td>(ORD-\d+)</td><td>30.000</td>", slowest) == planted
    trips = f'start to end</td><td class="n">{200_000 - len(ids)}<'
    assert trips in page  # every delivered trip counted in the latency


def test_the_timeline_draws_each_delivery_up_to_the_limit_and_density_past_it() -> None:
    at_limit = render(sample_run(DETAIL_LIMIT))
    assert at_limit.count('<rect class="delivery delivered"') == DETAIL_LIMIT
    assert 'id="density"' not in at_limit and "Slowest" not in at_limit
    past = render(sample_run(DETAIL_LIMIT + 1))
    assert 'class="delivery' not in past
    density = section(past, "Timeline")
    # 4 on the road the whole run long: every column of the delivered row is drawn
    assert density.count('<rect class="cell delivered"') == DENSITY_BINS
    assert "<h2>Trip times (5001 delivered)" in past and "<h2>Slowest 50 deliveries" in past


def test_density_is_the_mean_number_in_flight_per_bin() -> None:
    occupancy = Occupancy(0.0, 4.0, 4)  # bins of 1 s
    occupancy.add_many([0.5, 1.0, 3.75], [2.5, 1.5, 9.0])  # the last runs past the end
    assert occupancy.averages() == pytest.approx([0.5, 1.5, 0.5, 0.25])


def test_percentiles_past_the_exact_samples_are_within_one_percent() -> None:
    values = [0.001 + (k * 7919 % 20011) ** 2 / 1e7 for k in range(20_000)]  # 1 ms to 40 s
    sketch = LatencySketch(exact_samples=1_000)
    for start in range(0, len(values), 3_000):
        sketch.add_many(values[start : start + 3_000])
    exact = percentiles(values)
    bucketed = sketch.percentiles()
    assert not sketch.exact and bucketed.count == exact.count == 20_000
    for got, want in ((bucketed.p50, exact.p50), (bucketed.p95, exact.p95),
                      (bucketed.p99, exact.p99)):  # fmt: skip
        assert got == pytest.approx(want, rel=0.01)
    assert sum(sketch.histogram(40, 10.0)) == 20_000  # those over 10 s in the last bin


def test_the_report_package_imports_nothing_from_the_local_stand_ins() -> None:
    package = Path(dashboard.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((module.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((module.name, alias.name) for alias in node.names)
    assert ("dashboard.py", "courierflow.ledger.base") in imported  # the walk sees imports
    assert not [(m, name) for m, name in imported if name.startswith("courierflow.local")]
