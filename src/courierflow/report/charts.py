"""Geometry of the report's SVG drawings: where each mark goes, in user units. The markup
itself is in ``templates/charts.html.j2``; these functions only compute what it places."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from courierflow.report.aggregate import Bar

#: width of the SVG drawings, in user units (they scale to the page width)
CHART_WIDTH = 960
#: left margin (room for the y labels) and plot width shared by every drawing
LEFT, PLOT_WIDTH = 56, CHART_WIDTH - 72
#: height of a line chart's plot and of one density row
LINE_HEIGHT, DENSITY_ROW = 120, 22


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A rectangle: a delivery, a density cell or a histogram bar."""

    x: float
    y: float
    width: float
    height: float
    cls: str = ""
    title: str = ""
    order_id: str = ""
    opacity: float = 1.0


def _tick_step(span: float, target: int = 8) -> float:
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def ticks(span: float, unit: str = "s") -> list[Tick]:
    """Round ticks along [0, span] on the plot's width, labelled in ``unit``."""
    step = _tick_step(span)
    out: list[Tick] = []
    k = 0
    while k * step <= span + 1e-9:
        out.append(Tick(LEFT + PLOT_WIDTH * (k * step) / span, f"{k * step:g} {unit}"))
        k += 1
    return out


@dataclass(frozen=True, slots=True)
class Timeline:
    marks: list[Mark]
    lanes: int
    top: int
    axis_y: int
    height: int
    ticks: list[Tick]


def timeline(bars: Sequence[Bar], t0: float, t1: float) -> Timeline:
    """One lane per concurrently busy courier, one mark per delivery."""
    lanes = max((b.lane for b in bars), default=-1) + 1
    lane_h = max(2.0, min(14.0, 560 / max(1, lanes)))
    top, span = 8, t1 - t0
    marks = [
        Mark(
            x=LEFT + PLOT_WIDTH * (b.start - t0) / span,
            y=top + b.lane * lane_h,
            width=max(1.0, PLOT_WIDTH * (b.end - b.start) / span),
            height=max(1.0, lane_h - 1),
            cls=b.outcome,
            title=f"{b.order_id}: {b.outcome}, {b.start - t0:.2f}-{b.end - t0:.2f} s",
            order_id=b.order_id,
        )
        for b in bars
    ]
    axis_y = int(top + lanes * lane_h + 4)
    return Timeline(marks, lanes, top, axis_y, int(top + lanes * lane_h + 28), ticks(span))


@dataclass(frozen=True, slots=True)
class LineChart:
    points: str
    area: str
    peak: float
    top: int
    base: int
    ticks: list[Tick]


def line_chart(series: Sequence[tuple[float, float]], t0: float, t1: float) -> LineChart:
    """A filled step chart of one series over [t0, t1]."""
    top = 10
    base = top + LINE_HEIGHT
    peak = max((v for _, v in series), default=0.0)
    y_max = peak if peak > 0 else 1.0
    span = t1 - t0
    coords: list[tuple[str, str]] = []
    for t, v in series:
        x = f"{LEFT + PLOT_WIDTH * (t - t0) / span:.1f}"
        y = f"{base - LINE_HEIGHT * v / y_max:.1f}"
        if coords:
            coords.append((x, coords[-1][1]))  # a step: across first, then up or down
        coords.append((x, y))
    points = " ".join(f"{x},{y}" for x, y in coords)
    area = f"{coords[0][0]},{base} {points} {coords[-1][0]},{base}" if coords else ""
    return LineChart(points, area, peak, top, base, ticks(span))


@dataclass(frozen=True, slots=True)
class DensityRow:
    outcome: str
    peak: float
    y: float


@dataclass(frozen=True, slots=True)
class Density:
    rows: list[DensityRow]
    marks: list[Mark]
    axis_y: int
    height: int
    ticks: list[Tick]


def density(rows: dict[str, list[float]], t0: float, t1: float) -> Density:
    """A heat strip per outcome: one cell per time bin, as opaque as the mean number of
    that outcome's deliveries in flight in the bin against the row's peak; empty bins
    are left out."""
    top = 8
    marks: list[Mark] = []
    shown: list[DensityRow] = []
    for outcome, values in rows.items():
        peak = max(values, default=0.0)
        if peak <= 0:
            continue
        y = top + len(shown) * (DENSITY_ROW + 4)
        shown.append(DensityRow(outcome, peak, y))
        width = PLOT_WIDTH / len(values)
        for i, v in enumerate(values):
            if v > 0:
                marks.append(
                    Mark(LEFT + i * width, y, width + 0.05, DENSITY_ROW, outcome,
                         opacity=0.08 + 0.92 * v / peak)
                )  # fmt: skip
    axis_y = top + len(shown) * (DENSITY_ROW + 4)
    return Density(shown, marks, axis_y, axis_y + 24, ticks(t1 - t0))


@dataclass(frozen=True, slots=True)
class Histogram:
    marks: list[Mark]
    peak: int
    base: int
    ticks: list[Tick]


def histogram(counts: Sequence[int], largest: float) -> Histogram:
    """Bars of ``counts`` over [0, largest] seconds."""
    base = 10 + LINE_HEIGHT
    peak = max(counts, default=0)
    width = PLOT_WIDTH / max(1, len(counts))
    step = largest / max(1, len(counts))
    marks = [
        Mark(LEFT + i * width, base - LINE_HEIGHT * n / peak, max(1.0, width - 1),
             LINE_HEIGHT * n / peak, "bin", f"{i * step:.3g}-{(i + 1) * step:.3g} s: {n}")
        for i, n in enumerate(counts)
        if n
    ]  # fmt: skip
    return Histogram(marks, peak, base, ticks(largest if largest > 0 else 1.0))
