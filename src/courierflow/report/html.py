"""The run report: one self-contained ``report.html`` (inline CSS and SVG, no script, no
URL) and a timeline PNG, both built from the ledger records of one uploaded file.

The figures are those of :func:`courierflow.report.summary.summarize_ledger`; the drawings
come from :func:`courierflow.report.aggregate.aggregate_run`, which reads the records'
timestamps only (queued, started, finished), so the report can be written after the stack
is gone. The ledger's records are streamed a page at a time (:class:`LedgerOrders`), in
two passes: the first sums the summary's totals and the drawings' span together.
Past :data:`~courierflow.report.aggregate.DETAIL_LIMIT` deliveries the timeline is drawn
as a density strip, so the page stays small however large the run. The markup is in
``templates/report.html.j2``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from courierflow.errors import ConfigError
from courierflow.ledger.base import Ledger, OrderRecord, split_source
from courierflow.report import charts
from courierflow.report.aggregate import (
    DENSITY_BINS,
    DETAIL_LIMIT,
    HISTOGRAM_BINS,
    MAX_LISTED,
    OUTCOMES,
    RunAggregate,
    RunExtent,
    aggregate_run,
    assign_lanes,
)
from courierflow.report.pages import palette, render
from courierflow.report.series import chunks, time_span
from courierflow.report.stats import EXACT_SAMPLES, LatencySketch
from courierflow.report.summary import RunSummary, Totals, summarize_totals


def read_rejects(text: str) -> list[tuple[int, str]]:
    """(line, reason) rows of a rejects report (``line,reason,raw`` CSV, as written to
    ``s3://BUCKET/rejects/KEY``); malformed lines are skipped."""
    rows: list[tuple[int, str]] = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[0].isdigit():
            rows.append((int(row[0]), row[1]))
    return rows


def _figures(s: RunSummary) -> list[tuple[str, str, str]]:
    """(name, value, tone) of each summary figure."""
    return [
        ("rows", str(s.rows), ""),
        ("rejected", str(s.rejected), "bad" if s.rejected else ""),
        ("published", str(s.published), ""),
        ("delivered", str(s.delivered), "good" if s.delivered else ""),
        ("failed", str(s.failed), "bad" if s.failed else ""),
        ("lost", str(s.lost), "bad" if s.lost else ""),
        ("duplicates", str(s.duplicates), ""),
        ("makespan", f"{s.makespan_s:.2f} s", ""),
        ("peak concurrency", str(s.peak_concurrency), ""),
        ("throughput", f"{s.throughput_per_s:.1f}/s", ""),
    ]


def _throughput_bins(delivered: int) -> int:
    """Bins for the throughput chart: about five deliveries per bin, 10 to 60 bins, so the
    rate reads as a trend rather than noise."""
    return max(10, min(60, delivered // 5))


def _floats(series: Sequence[tuple[float, int]]) -> list[tuple[float, float]]:
    return [(t, float(v)) for t, v in series]


def _histogram(sketch: LatencySketch, title: str, what: str) -> tuple[str, charts.Histogram]:
    """A histogram of one measure up to twice its p99 (a few very long ones would squeeze
    every other bar into the first), the rest counted in the last bar."""
    p99 = sketch.percentiles().p99 or 0.0
    upper = min(sketch.largest, 2 * p99) if p99 > 0 else sketch.largest
    title = f"{title} ({sketch.count} {what}"
    if upper < sketch.largest:
        title += f"; the last bar holds all over {upper:.3g} s, up to {sketch.largest:.3g} s"
    counts = sketch.histogram(HISTOGRAM_BINS, upper)
    return title + ")", charts.histogram(counts, upper)


def _drawings(run: RunAggregate) -> dict[str, object]:
    """The template's drawings: the per-delivery timeline, or the density strip and the
    histograms of an aggregated run."""
    t0, t1 = run.t0, run.t1
    line_charts = [
        ("Deliveries in flight", _floats(run.in_flight), "s-in-flight"),
        ("Throughput (deliveries completed per second)", run.throughput, "s-throughput"),
        ("Queue depth (estimated: published, not yet started)",
         _floats(run.queue_depth), "s-depth"),
    ]  # fmt: skip
    drawn: dict[str, object] = {
        "line_charts": [
            (title, charts.line_chart(series, t0, t1), cls) for title, series, cls in line_charts
        ],
        "timeline": charts.timeline(run.bars, t0, t1) if run.bars is not None else None,
        "density": None,
        "histograms": [],
        "slowest": [],
    }
    if run.bars is None:
        drawn["density"] = charts.density(run.density, t0, t1)
        drawn["histograms"] = [_histogram(run.trips, "Trip times", "delivered"),
                               _histogram(run.waits, "Waits in the queue", "started")]  # fmt: skip
        drawn["slowest"] = [
            (t.order_id, f"{t.seconds:.3f}", f"{t.start:.2f}", t.outcome) for t in run.slowest
        ]
    return drawn


def render_report(
    summary: RunSummary,
    records: Collection[OrderRecord],
    started_at: float | None = None,
    rejects: Sequence[tuple[int, str]] | None = (),
    extent: RunExtent | None = None,
) -> str:
    """The whole report as one HTML document with no external reference.

    Parameters:
        summary: the run's figures (from :func:`summarize`).
        records: the ledger records of the file's orders (read twice, never copied; once
            when ``extent`` is given).
        started_at: when the upload began (time zero of the charts); else the first time.
        rejects: (line, reason) of each rejected row; None: unknown (the rejects report
            could not be read), and the page says so.
        extent: the records' span and counts when the caller has passed over them.
    """
    bins = _throughput_bins(summary.delivered)
    run = aggregate_run(records, started_at, bins, extent)
    return render(
        "report.html.j2",
        summary=summary,
        run=run,
        figures=_figures(summary),
        outcomes=OUTCOMES,
        width=charts.CHART_WIDTH,
        left=charts.LEFT,
        right=charts.LEFT + charts.PLOT_WIDTH,
        detail_limit=DETAIL_LIMIT,
        column_s=(run.t1 - run.t0) / DENSITY_BINS,
        latency={"queue to start": run.waits.percentiles(),
                 "start to end": run.trips.percentiles()},
        exact=run.waits.exact and run.trips.exact,
        exact_samples=EXACT_SAMPLES,
        rejects=None if rejects is None else list(rejects),
        max_listed=MAX_LISTED,
        **_drawings(run),
    )  # fmt: skip


@dataclass(frozen=True)
class LedgerOrders(Collection[OrderRecord]):
    """The orders of one file, read afresh from the ledger a page at a time whenever they
    are iterated: the report passes over a million orders twice without holding them."""

    ledger: Ledger
    source: str

    def __iter__(self) -> Iterator[OrderRecord]:
        return self.ledger.iter_orders(self.source)

    def __len__(self) -> int:
        return sum(self.ledger.counts(self.source).values())

    def __contains__(self, item: object) -> bool:
        return any(item == r for r in self)


def write_report(
    ledger: Ledger,
    source: str,
    started_at: float | None,
    out: Path,
    rejects: Sequence[tuple[int, str]] | None = (),
    summary: RunSummary | None = None,
) -> Path:
    """Write ``report.html`` for the orders of ``source`` (``s3://bucket/key``) to ``out``.

    ``started_at`` is when the upload began (None: the first recorded time); ``summary``
    the run's figures when the caller has them (None: summarised from the ledger). The
    records are streamed from the ledger twice: a first pass finds their span and counts
    and, without a summary, sums the summary's totals too; the second draws. Returns
    ``out``.
    """
    records = LedgerOrders(ledger, source)
    extent, totals = RunExtent(), Totals()
    summing = summary is None
    for chunk in chunks(records):
        extent.add_many(chunk)
        if summing:
            totals.add_many(chunk)
    bucket, key = split_source(source)
    file = ledger.get_file(bucket, key) if key and summary is None else None
    # The upload's start is also what the summary's makespan counts from. Unknown (a
    # report written after the run), the publisher's start on the file is the nearest;
    # the first recorded order comes after it, and a start later than the file's would
    # make the run read as a repeated upload.
    t0 = started_at
    if t0 is None:
        t0 = file.started_at if file and file.started_at else extent.span.bounds(None)[0]
    if summary is None:
        summary = summarize_totals(ledger, file, source, totals, t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(summary, records, t0, rejects, extent), encoding="utf-8")
    return out


def plot_timeline(
    records: Sequence[OrderRecord], out_png: Path, started_at: float | None = None
) -> Path:
    """Draw the courier timeline (one lane per concurrent courier) to a PNG with
    matplotlib's Agg backend, in the stylesheet's outcome colours; returns ``out_png``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'courierflow[plot]' (report.html needs "
            "nothing more)"
        ) from None

    colours = {outcome: palette()[outcome] for outcome in OUTCOMES}
    t0, t1 = time_span(records, started_at)
    bars = assign_lanes(records, now=t1)
    lanes = max((b.lane for b in bars), default=-1) + 1
    fig = Figure(figsize=(11, max(3.0, min(12.0, 1.5 + lanes * 0.06))), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for outcome, colour in colours.items():
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
        handles=[Patch(color=c, label=n) for n, c in colours.items()],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
