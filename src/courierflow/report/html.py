"""The run report: one self-contained ``report.html`` (inline CSS and SVG, no URLs) and a
timeline PNG, both built from the ledger records of one uploaded file.

The figures come from :func:`courierflow.report.summary.summarize`; the time series are
sampled from the records' timestamps only (queued, started, finished), so the report can
be written after the stack is gone.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from courierflow.errors import ConfigError
from courierflow.ledger.base import Ledger, OrderRecord
from courierflow.orders import OrderState
from courierflow.report.summary import RunSummary, summarize

#: points sampled across the run for each time-series chart
SERIES_POINTS = 160
#: width of the SVG drawings, in user units (they scale to the page width)
CHART_WIDTH = 960
#: most rejected rows / failures listed in the report (the rest are counted)
MAX_LISTED = 500
#: fill colour per outcome, shared by the HTML timeline and the PNG
OUTCOME_COLOURS = {
    "delivered": "#2f9e6b",
    "failed": "#d64545",
    "delivering": "#e0a526",
    "other": "#8a94a6",
}


@dataclass(frozen=True, slots=True)
class Bar:
    """One delivery attempt on the timeline: an order on a courier lane."""

    order_id: str
    lane: int
    start: float
    end: float
    outcome: str


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles of one measure, in seconds (None when there is no sample)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


def outcome_of(record: OrderRecord) -> str:
    """The colour class of an order: delivered, failed, delivering, or other."""
    if record.state in (OrderState.DELIVERED, OrderState.FAILED, OrderState.DELIVERING):
        return record.state.value
    return "other"


def assign_lanes(records: Iterable[OrderRecord], now: float | None = None) -> list[Bar]:
    """Put every started delivery on a courier lane, greedily by start time.

    Deliveries are taken in order of start; each goes to the lowest-numbered lane free at
    its start (a lane frees at the instant its delivery ends), so the number of lanes is
    the peak concurrency. A delivery with no end yet ends at ``now`` (or at its start).
    """
    started = sorted(
        (r for r in records if r.started_at is not None),
        key=lambda r: (r.started_at or 0.0, r.order_id),
    )
    busy: list[tuple[float, int]] = []  # (end, lane) of deliveries on the road
    free: list[int] = []  # lanes free again, smallest first
    lanes = 0
    bars: list[Bar] = []
    for r in started:
        start = r.started_at or 0.0
        end = r.finished_at if r.finished_at is not None else (now if now is not None else start)
        end = max(end, start)
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, lanes = lanes, lanes + 1
        heapq.heappush(busy, (end, lane))
        bars.append(Bar(r.order_id, lane, start, end, outcome_of(r)))
    return bars


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks.

    Returns None for no values. ``percentile([1, 2, 3, 4], 50) == 2.5``.
    """
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def percentiles(values: Sequence[float]) -> Percentiles:
    """p50, p95 and p99 of ``values``."""
    return Percentiles(
        len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99)
    )


def latencies(records: Iterable[OrderRecord]) -> dict[str, Percentiles]:
    """Queue-to-start (``started_at - queued_at``) and start-to-end percentiles."""
    waits: list[float] = []
    trips: list[float] = []
    for r in records:
        if r.started_at is not None and r.queued_at is not None:
            waits.append(max(0.0, r.started_at - r.queued_at))
        delivered = r.state is OrderState.DELIVERED
        if delivered and r.started_at is not None and r.finished_at is not None:
            trips.append(max(0.0, r.finished_at - r.started_at))
    return {"queue to start": percentiles(waits), "start to end": percentiles(trips)}


def _count_between(enter: list[float], leave: list[float], t: float) -> int:
    """How many intervals (sorted enter and leave times) hold ``t``: enter <= t < leave."""
    return bisect.bisect_right(enter, t) - bisect.bisect_right(leave, t)


def time_span(records: Sequence[OrderRecord], started_at: float | None) -> tuple[float, float]:
    """First and last instants worth drawing: the upload start (or first queue) to the
    last recorded time."""
    times = [
        t
        for r in records
        for t in (r.queued_at, r.started_at, r.finished_at, r.dispatched_at)
        if t is not None
    ]
    first = started_at if started_at is not None else min(times, default=0.0)
    if times:
        first = min(first, min(times))
    last = max(times, default=first)
    return first, max(last, first + 1e-3)


def in_flight_series(
    records: Sequence[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, int]]:
    """Deliveries on the road at ``points`` evenly spaced instants of [t0, t1]."""
    enter = sorted(r.started_at for r in records if r.started_at is not None)
    leave = sorted(
        (r.finished_at if r.finished_at is not None else math.inf)
        for r in records
        if r.started_at is not None
    )
    return [(t, _count_between(enter, leave, t)) for t in _instants(t0, t1, points)]


def queue_depth_series(
    records: Sequence[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, int]]:
    """Estimated queue depth: orders published but not started (queued_at <= t < started_at;
    an order never started leaves when it is given up on, or never)."""
    queued = [r for r in records if r.queued_at is not None]
    enter = sorted(r.queued_at for r in queued if r.queued_at is not None)
    leave = sorted(
        r.started_at
        if r.started_at is not None
        else (r.finished_at if r.finished_at is not None else math.inf)
        for r in queued
    )
    return [(t, _count_between(enter, leave, t)) for t in _instants(t0, t1, points)]


def throughput_series(
    records: Sequence[OrderRecord], t0: float, t1: float, points: int = SERIES_POINTS
) -> list[tuple[float, float]]:
    """Deliveries completed per second, in ``points`` equal bins of [t0, t1] (each point
    at its bin's end)."""
    width = (t1 - t0) / points
    bins = [0] * points
    for r in records:
        if r.state is OrderState.DELIVERED and r.finished_at is not None:
            index = min(points - 1, max(0, int((r.finished_at - t0) / width)))
            bins[index] += 1
    return [(t0 + width * (i + 1), n / width) for i, n in enumerate(bins)]


def _instants(t0: float, t1: float, points: int) -> list[float]:
    step = (t1 - t0) / max(1, points - 1)
    return [t0 + step * i for i in range(points)]


def read_rejects(text: str) -> list[tuple[int, str]]:
    """(line, reason) rows of a rejects report (``line,reason,raw`` CSV, as written to
    ``s3://BUCKET/rejects/KEY``); malformed lines are skipped."""
    rows: list[tuple[int, str]] = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[0].isdigit():
            rows.append((int(row[0]), row[1]))
    return rows


# --- drawing -------------------------------------------------------------------------------

_e = html.escape


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _tick_step(span: float, target: int = 8) -> float:
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _x_axis(t0: float, t1: float, left: int, width: int, y: int, grid_top: int) -> str:
    step = _tick_step(t1 - t0)
    parts = []
    k = 0
    while k * step <= (t1 - t0) + 1e-9:
        x = left + width * (k * step) / (t1 - t0)
        label = f"{k * step:g} s"
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{grid_top}" x2="{x:.1f}" y2="{y}"/>'
            f'<text class="tick" x="{x:.1f}" y="{y + 14}" text-anchor="middle">{label}</text>'
        )
        k += 1
    return "".join(parts)


def timeline_svg(bars: Sequence[Bar], t0: float, t1: float) -> str:
    """The courier timeline: one lane per concurrently busy courier, one ``rect.delivery``
    per delivery, coloured by outcome, with the order id as a tooltip."""
    lanes = max((b.lane for b in bars), default=-1) + 1
    lane_h = max(2.0, min(14.0, 560 / max(1, lanes)))
    left, top, width = 56, 8, CHART_WIDTH - 72
    height = int(top + lanes * lane_h + 28)
    span = t1 - t0
    rects = []
    for b in bars:
        x = left + width * (b.start - t0) / span
        w = max(1.0, width * (b.end - b.start) / span)
        y = top + b.lane * lane_h
        tip = f"{b.order_id}: {b.outcome}, {b.start - t0:.2f}-{b.end - t0:.2f} s"
        rects.append(
            f'<rect class="delivery {b.outcome}" data-order-id="{_e(b.order_id)}" '
            f'x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{max(1.0, lane_h - 1):.2f}">'
            f"<title>{_e(tip)}</title></rect>"
        )
    axis_y = int(top + lanes * lane_h + 4)
    return (
        f'<svg class="timeline" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-label="delivery timeline, {len(bars)} deliveries on {lanes} lanes">'
        f"{_x_axis(t0, t1, left, width, axis_y, top)}"
        f'<text class="tick" x="{left - 6}" y="{top + 10}" text-anchor="end">lane 1</text>'
        f'<text class="tick" x="{left - 6}" y="{axis_y - 2}" text-anchor="end">{lanes}</text>'
        f"{''.join(rects)}</svg>"
    )


def line_chart_svg(
    series: Sequence[tuple[float, float]], t0: float, t1: float, label: str, colour: str
) -> str:
    """A small filled step chart of one series over [t0, t1]."""
    left, top, width, height = 56, 10, CHART_WIDTH - 72, 120
    peak = max((v for _, v in series), default=0.0)
    y_max = peak if peak > 0 else 1.0
    span = t1 - t0

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + width * (t - t0) / span, top + height - height * v / y_max

    points: list[str] = []
    for i, (t, v) in enumerate(series):
        x, y = xy(t, v)
        if i:
            points.append(f"{x:.1f},{points[-1].split(',')[1]}")
        points.append(f"{x:.1f},{y:.1f}")
    base = top + height
    area = ""
    if points:
        first_x = points[0].split(",")[0]
        last_x = points[-1].split(",")[0]
        area = f"{first_x},{base} {' '.join(points)} {last_x},{base}"
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {base + 24}" role="img" '
        f'aria-label="{_e(label)}">'
        f"{_x_axis(t0, t1, left, width, base, top)}"
        f'<line class="axis" x1="{left}" y1="{base}" x2="{left + width}" y2="{base}"/>'
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">{peak:.3g}</text>'
        f'<text class="tick" x="{left - 6}" y="{base}" text-anchor="end">0</text>'
        f'<polygon points="{area}" fill="{colour}" fill-opacity="0.18"/>'
        f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
        f'stroke-width="1.6"/></svg>'
    )


_CSS = """
:root { color-scheme: light; --ink:#1d2433; --muted:#5d6778; --line:#e3e7ee; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:#f4f6fa; }
main { max-width:1040px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:16px; margin:28px 0 10px; }
.sub { color:var(--muted); margin:0 0 18px; word-break:break-all; }
.figures { display:grid; grid-template-columns:repeat(auto-fill,minmax(140px,1fr)); gap:10px; }
.figure { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:10px 12px; }
.figure .v { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.figure .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.figure.bad .v { color:#c23030; } .figure.good .v { color:#1f7a50; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:12px 14px; margin-top:12px; }
svg { width:100%; height:auto; display:block; }
svg .grid { stroke:var(--line); stroke-width:1; } svg .axis { stroke:#9aa3b2; }
svg .tick { font-size:11px; fill:var(--muted); }
rect.delivery.delivered { fill:#2f9e6b; } rect.delivery.failed { fill:#d64545; }
rect.delivery.delivering { fill:#e0a526; } rect.delivery.other { fill:#8a94a6; }
rect.delivery:hover { fill:#1d2433; }
.legend span { display:inline-block; margin-right:14px; color:var(--muted); font-size:13px; }
.legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:5px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; } th.n { text-align:right; }
td.n { text-align:right; font-variant-numeric:tabular-nums; }
.note { color:var(--muted); font-size:13px; }
.banner { background:#fff4e5; border:1px solid #f0c58a; padding:8px 12px; border-radius:6px; }
"""


def _figure(key: str, value: str, tone: str = "") -> str:
    return (
        f'<div class="figure {tone}" data-figure="{_e(key)}">'
        f'<div class="v">{_e(value)}</div><div class="k">{_e(key)}</div></div>'
    )


def _figures(s: RunSummary) -> str:
    return "".join(
        [
            _figure("rows", str(s.rows)),
            _figure("rejected", str(s.rejected), "bad" if s.rejected else ""),
            _figure("published", str(s.published)),
            _figure("delivered", str(s.delivered), "good" if s.delivered else ""),
            _figure("failed", str(s.failed), "bad" if s.failed else ""),
            _figure("lost", str(s.lost), "bad" if s.lost else ""),
            _figure("duplicates", str(s.duplicates)),
            _figure("makespan", f"{s.makespan_s:.2f} s"),
            _figure("peak concurrency", str(s.peak_concurrency)),
            _figure("throughput", f"{s.throughput_per_s:.1f}/s"),
        ]
    )


def _latency_table(stats: dict[str, Percentiles]) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=n>{p.count}</td><td class=n>{_fmt_s(p.p50)}</td>"
        f"<td class=n>{_fmt_s(p.p95)}</td><td class=n>{_fmt_s(p.p99)}</td></tr>"
        for name, p in stats.items()
    )
    return (
        '<table class="latency"><tr><th>measure</th><th class=n>samples</th><th class=n>p50</th>'
        f"<th class=n>p95</th><th class=n>p99</th></tr>{rows}</table>"
    )


def _rows_table(headers: Sequence[str], rows: Sequence[Sequence[object]], cls: str) -> str:
    if not rows:
        return '<p class="note">none</p>'
    shown = rows[:MAX_LISTED]
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(str(cell))}</td>" for cell in row) + "</tr>" for row in shown
    )
    more = (
        f'<p class="note">{len(rows) - len(shown)} more not listed</p>'
        if len(rows) > len(shown)
        else ""
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>{more}'


def _throughput_bins(delivered: int) -> int:
    """Bins for the throughput chart: about five deliveries per bin, 10 to 60 bins, so the
    rate reads as a trend rather than noise."""
    return max(10, min(60, delivered // 5))


def _floats(series: Sequence[tuple[float, int]]) -> list[tuple[float, float]]:
    return [(t, float(v)) for t, v in series]


def render_report(
    summary: RunSummary,
    records: Sequence[OrderRecord],
    started_at: float | None = None,
    rejects: Sequence[tuple[int, str]] = (),
) -> str:
    """The whole report as one HTML document with no external reference.

    Parameters:
        summary: the run's figures (from :func:`summarize`).
        records: the ledger records of the file's orders.
        started_at: when the upload began (time zero of the charts); else the first time.
        rejects: (line, reason) of each rejected row.
    """
    t0, t1 = time_span(records, started_at)
    bars = assign_lanes(records, now=t1)
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{name}</span>'
        for name, colour in OUTCOME_COLOURS.items()
    )
    failures = sorted(
        (r.order_id, r.attempts, r.reason or "(no reason recorded)")
        for r in records
        if r.state is OrderState.FAILED
    )
    notes = "".join(
        f'<p class="banner">{_e(text)}</p>' for text in (summary.refused, summary.note) if text
    )
    charts: list[tuple[str, Sequence[tuple[float, float]], str]] = [
        ("Deliveries in flight", _floats(in_flight_series(records, t0, t1)), "#3b6fd8"),
        ("Throughput (deliveries completed per second)",
         throughput_series(records, t0, t1, _throughput_bins(summary.delivered)), "#2f9e6b"),
        ("Queue depth (estimated: published, not yet started)",
         _floats(queue_depth_series(records, t0, t1)), "#9b59b6"),
    ]  # fmt: skip
    chart_html = "".join(
        f'<section class="card"><h2>{_e(title)}</h2>'
        f"{line_chart_svg(series, t0, t1, title, colour)}</section>"
        for title, series, colour in charts
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>courierflow report: {_e(summary.file or 'run')}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>courierflow run report</h1><p class='sub'>{_e(summary.file or '(no file)')}"
        f" · {len(records)} orders in the ledger</p>{notes}"
        f'<div class="figures">{_figures(summary)}</div>'
        f'<section class="card"><h2>Timeline: {len(bars)} deliveries on '
        f"{max((b.lane for b in bars), default=-1) + 1} courier lanes</h2>"
        f'<div class="legend">{legend}</div>{timeline_svg(bars, t0, t1)}</section>'
        f"{chart_html}"
        f'<section class="card"><h2>Latency</h2>{_latency_table(latencies(records))}</section>'
        f'<section class="card"><h2>Failures ({len(failures)})</h2>'
        f"{_rows_table(('order', 'attempts', 'reason'), failures, 'failures')}</section>"
        f'<section class="card"><h2>Rejected rows ({len(rejects)})</h2>'
        f"{_rows_table(('line', 'reason'), list(rejects), 'rejects')}</section>"
        "</main></body></html>"
    )


def write_report(
    ledger: Ledger,
    source: str,
    started_at: float | None,
    out: Path,
    rejects: Sequence[tuple[int, str]] = (),
) -> Path:
    """Write ``report.html`` for the orders of ``source`` (``s3://bucket/key``) to ``out``.

    ``started_at`` is when the upload began (None: the first recorded time); returns ``out``.
    """
    records = ledger.orders(source)
    bucket, _, key = source.removeprefix("s3://").partition("/")
    file = ledger.get_file(bucket, key) if key else None
    t0 = started_at if started_at is not None else time_span(records, None)[0]
    summary = summarize(file, records, t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(summary, records, t0, rejects), encoding="utf-8")
    return out


def plot_timeline(
    records: Sequence[OrderRecord], out_png: Path, started_at: float | None = None
) -> Path:
    """Draw the courier timeline (one lane per concurrent courier) to a PNG with
    matplotlib's Agg backend; returns ``out_png``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'courierflow[plot]' (report.html needs "
            "nothing more)"
        ) from None

    t0, t1 = time_span(records, started_at)
    bars = assign_lanes(records, now=t1)
    lanes = max((b.lane for b in bars), default=-1) + 1
    fig = Figure(figsize=(11, max(3.0, min(12.0, 1.5 + lanes * 0.06))), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for outcome, colour in OUTCOME_COLOURS.items():
        mine = [b for b in bars if b.outcome == outcome]
        if mine:
            ax.barh(
                [b.lane + 1 for b in mine],
                [max(b.end - b.start, (t1 - t0) / 2000) for b in mine],
                left=[b.start - t0 for b in mine],
                height=0.8,
                color=colour,
                linewidth=0,
            )
    ax.set_xlim(0, t1 - t0)
    ax.set_ylim(lanes + 0.5, 0.5)
    ax.set_xlabel("seconds since upload")
    ax.set_ylabel("courier lane")
    ax.set_title(f"{len(bars)} deliveries on {lanes} lanes")
    ax.legend(
        handles=[Patch(color=c, label=n) for n, c in OUTCOME_COLOURS.items()],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
