"""The live dashboard: one page that follows the ledger while a run goes on.

``GET /`` is the page, ``GET /api/snapshot`` one JSON snapshot, and ``GET /events`` a
server-sent event stream with one snapshot per second (the page uses ``EventSource``).
Snapshots are built by the pure :func:`build_snapshot`; the server computes at most one
per interval however many pages are open, so many viewers never multiply ledger reads.

It binds to 127.0.0.1 by default. Any other host needs a token, given by clients as
``?token=`` or an ``Authorization: Bearer`` / ``X-Courierflow-Token`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from courierflow.errors import ConfigError, CourierflowError
from courierflow.ledger.activity import Activity, activity_of
from courierflow.ledger.base import Ledger, OrderRecord, open_ledger
from courierflow.orders import OrderState

log = logging.getLogger(__name__)

#: seconds between two snapshots pushed on /events
SNAPSHOT_INTERVAL_S = 1.0
#: how many latest state changes a snapshot lists
LATEST_EVENTS = 20
#: window of the "throughput now" figure, in seconds
THROUGHPUT_WINDOW_S = 5.0
#: dead letters are counted by reading the DLQ, so less often than the rest
DEAD_LETTER_EVERY_S = 5.0
#: most dead letters counted (the count shows "1000+" beyond)
DEAD_LETTER_LIMIT = 1000


def build_snapshot(records: Sequence[OrderRecord], now: float, **readings: Any) -> dict[str, Any]:
    """What the dashboard shows at ``now``, from ledger records (one pass over them);
    ``readings`` are the probes' values, as :func:`snapshot_of` takes them."""
    figures = activity_of(records, now, THROUGHPUT_WINDOW_S, LATEST_EVENTS)
    return snapshot_of(figures, now, **readings)


def snapshot_of(
    figures: Activity,
    now: float,
    queue_depth: int | None = None,
    dead_letters: int | None = None,
    lambda_event_queue: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """What the dashboard shows at ``now``, from the ledger's running figures
    (``Ledger.activity``) and optional probes.

    Pure: the same arguments give the same snapshot. ``queue_depth`` is the transport's
    count of ready messages; when None the depth is estimated from the ledger as orders
    queued or dispatched whose delivery has not started (``queue_depth_source`` says which).
    """
    counts = {state.value: n for state, n in figures.counts.items()}
    first, last = figures.first_queued_at, figures.last_finished_at
    elapsed = (last - first) if first is not None and last is not None else 0.0
    return {
        "at": now,
        "source": source or "all files",
        "total": figures.total,
        "counts": counts,
        "in_flight": counts[OrderState.DELIVERING.value],
        "throughput_per_s": round(figures.recent_deliveries / THROUGHPUT_WINDOW_S, 2),
        "average_throughput_per_s": (
            round(counts[OrderState.DELIVERED.value] / elapsed, 2) if elapsed > 0 else 0.0
        ),
        "queue_depth": queue_depth if queue_depth is not None else figures.waiting,
        "queue_depth_source": "transport" if queue_depth is not None else "ledger estimate",
        "dead_letters": dead_letters,
        "lambda_event_queue": lambda_event_queue,
        "latest": [
            {"at": e.at, "order_id": e.order_id, "event": e.event, "reason": e.reason}
            for e in figures.latest
        ],
    }


@dataclass
class Probes:
    """Optional live readings beside the ledger; each returns None when unavailable."""

    queue_depth: Callable[[], int | None] = lambda: None
    dead_letters: Callable[[], int | None] = lambda: None
    lambda_event_queue: Callable[[], int | None] = lambda: None
    #: the broker's management console, linked from the page (the lab checks the queue there)
    console_url: str = ""


class Snapshotter:
    """Builds snapshots, at most one per ``interval_s``; concurrent callers share it."""

    def __init__(
        self,
        ledger: Ledger,
        probes: Probes | None = None,
        source: str | None = None,
        interval_s: float = SNAPSHOT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.probes = probes or Probes()
        self.source = source
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._last_at = -1e18
        self._dead: int | None = None
        self._dead_at = -1e18

    def snapshot(self) -> dict[str, Any]:
        """The current snapshot (a cached one when younger than the interval)."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last_at < self.interval_s * 0.9:
                return self._last
            if now - self._dead_at >= DEAD_LETTER_EVERY_S:
                self._dead, self._dead_at = _safe(self.probes.dead_letters), now
            self._last = snapshot_of(
                self.ledger.activity(now, THROUGHPUT_WINDOW_S, LATEST_EVENTS, self.source),
                now,
                queue_depth=_safe(self.probes.queue_depth),
                dead_letters=self._dead,
                lambda_event_queue=_safe(self.probes.lambda_event_queue),
                source=self.source,
            )
            self._last["console_url"] = self.probes.console_url
            self._last_at = now
            return self._last


def _safe(probe: Callable[[], int | None]) -> int | None:
    """A probe's reading, or None when it fails (logged, never raised into the page)."""
    try:
        return probe()
    except (CourierflowError, OSError, ValueError) as exc:
        log.debug("probe failed: %r", exc)
        return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorised(request: Request, token: str | None) -> bool:
    if not token:
        return True
    given = request.query_params.get("token") or request.headers.get("x-courierflow-token", "")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(
    snapshotter: Snapshotter, token: str | None = None, interval_s: float = SNAPSHOT_INTERVAL_S
) -> Starlette:
    """The dashboard's Starlette application (page, snapshot API, event stream)."""
    stopping = asyncio.Event()

    def refuse() -> Response:
        return JSONResponse({"error": "a valid token is required"}, status_code=401)

    async def page(request: Request) -> Response:
        if not _authorised(request, token):
            return refuse()
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def snapshot(request: Request) -> Response:
        if not _authorised(request, token):
            return refuse()
        return JSONResponse(await run_in_threadpool(snapshotter.snapshot))

    async def events(request: Request) -> Response:
        if not _authorised(request, token):
            return refuse()

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {int(interval_s * 3000)}\n\n"
            while not stopping.is_set() and not await request.is_disconnected():
                doc = await run_in_threadpool(snapshotter.snapshot)
                yield f"data: {json.dumps(doc, separators=(',', ':'))}\n\n"
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=interval_s)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        stopping.set()  # end the event streams so the server can stop

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/snapshot", snapshot),
            Route("/events", events),
        ],
        lifespan=lifespan,
    )


def stack_probes(stack_home: Path) -> tuple[Probes, str | None]:
    """Probes reading the stack under ``stack_home`` (its queue, DLQ and Lambda service),
    and that stack's ledger URL; no probes when no stack is described there."""
    from courierflow.local import stack
    from courierflow.transports.base import open_transport

    info = stack.load(stack_home)
    if info is None:
        return Probes(), None
    url = info.queue_url or info.amqp_url
    queue = info.queue

    def depth() -> int | None:
        transport = open_transport(url, queue)
        try:
            return transport.depth()
        finally:
            transport.close()

    def dead() -> int | None:
        transport = open_transport(url, queue)
        try:
            return len(transport.dead_letters(limit=DEAD_LETTER_LIMIT))
        finally:
            transport.close()

    def lambda_queue() -> int | None:
        with urllib.request.urlopen(f"{info.lambda_url}/health", timeout=1) as resp:
            doc = json.load(resp)
        functions = doc.get("functions", {})
        return int(sum(int(f.get("event_queue", 0)) for f in functions.values()))

    return Probes(depth, dead, lambda_queue, info.console_url), info.ledger_url or None


def serve_dashboard(
    ledger_url: str | None,
    stack_home: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    source: str | None = None,
) -> None:
    """Serve the dashboard until interrupted.

    Parameters:
        ledger_url: the ledger to follow; None takes the stack's.
        stack_home: the local stack folder (COURIERFLOW_HOME), for live queue depth, dead
            letters and the Lambda event queue; None follows the ledger only.
        host, port: where to listen (127.0.0.1 by default).
        token: required from clients; mandatory when ``host`` is not a loopback address.
        source: follow only this file's orders (``s3://bucket/key``).

    Raises:
        ConfigError: a non-loopback host without a token, or no ledger to follow.
    """
    import uvicorn

    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without a token: pass one, "
            "or bind to 127.0.0.1"
        )
    probes, stack_ledger = stack_probes(stack_home) if stack_home else (Probes(), None)
    url = ledger_url or stack_ledger
    if not url:
        raise ConfigError("no ledger to follow: give a ledger URL or a running stack's home")
    snapshotter = Snapshotter(open_ledger(url), probes, source)
    app = create_app(snapshotter, token)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>courierflow dashboard</title>
<style>
:root { --ink:#1d2433; --muted:#5d6778; --line:#e3e7ee; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:#f4f6fa; }
main { max-width:1080px; margin:0 auto; padding:22px 20px 40px; }
header { display:flex; align-items:baseline; gap:14px; flex-wrap:wrap; }
h1 { font-size:22px; margin:0; } h2 { font-size:15px; margin:0 0 8px; }
#status { font-size:13px; padding:2px 10px; border-radius:10px; background:#e3e7ee; }
#status.live { background:#d9f2e5; color:#1f7a50; }
#status.down { background:#fde2e2; color:#c23030; }
#source { color:var(--muted); font-size:13px; word-break:break-all; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px;
  margin-top:16px; }
.tile { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.tile .v { font-size:26px; font-weight:600; font-variant-numeric:tabular-nums; }
.tile .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.tile.delivered .v { color:#1f7a50; } .tile.failed .v { color:#c23030; }
.tile.delivering .v { color:#b7801a; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px;
  margin-top:14px; }
.bar { display:flex; height:14px; border-radius:7px; overflow:hidden; background:#eef1f6; }
.bar span { display:block; height:100%; transition:width .4s; }
svg { width:100%; height:90px; display:block; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; }
td.t { font-variant-numeric:tabular-nums; color:var(--muted); }
.ev-delivered { color:#1f7a50; } .ev-failed { color:#c23030; } .ev-delivering { color:#b7801a; }
.note { color:var(--muted); font-size:12px; }
</style></head>
<body><main>
<header><h1>courierflow</h1><span id="status">connecting…</span><span id="source"></span>
<a id="console" hidden target="_blank" rel="noopener">RabbitMQ console</a></header>
<div class="grid">
  <div class="tile"><div class="v" id="total">0</div><div class="k">orders</div></div>
  <div class="tile"><div class="v" id="queued">0</div><div class="k">queued</div></div>
  <div class="tile"><div class="v" id="dispatched">0</div><div class="k">dispatched</div></div>
  <div class="tile delivering"><div class="v" id="delivering">0</div>
    <div class="k">in flight</div></div>
  <div class="tile delivered"><div class="v" id="delivered">0</div>
    <div class="k">delivered</div></div>
  <div class="tile failed"><div class="v" id="failed">0</div><div class="k">failed</div></div>
  <div class="tile"><div class="v" id="throughput">0</div><div class="k">deliveries / s</div></div>
  <div class="tile"><div class="v" id="depth">0</div>
    <div class="k" id="depth-k">queue depth</div></div>
  <div class="tile"><div class="v" id="dead">-</div><div class="k">dead letters</div></div>
  <div class="tile"><div class="v" id="lambdaq">-</div><div class="k">lambda event queue</div></div>
</div>
<div class="card"><h2>Progress</h2><div class="bar" id="bar"></div>
  <p class="note" id="avg"></p></div>
<div class="card"><h2>In flight and throughput, last 2 minutes</h2>
  <svg id="spark" viewBox="0 0 600 90" preserveAspectRatio="none"></svg>
  <p class="note">one point per second, newest on the right, scaled to the largest
  (<span id="sparkmax">0</span>) &nbsp; <span style="color:#e0a526">■</span> in flight
  &nbsp; <span style="color:#2f9e6b">■</span> deliveries/s &nbsp;
  <span style="color:#9b59b6">■</span> queue depth</p></div>
<div class="card"><h2>Latest events</h2>
  <table><thead><tr><th>time</th><th>order</th><th>event</th><th>reason</th></tr></thead>
  <tbody id="latest"></tbody></table></div>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const suffix = token ? "?token=" + encodeURIComponent(token) : "";
const colours = {delivered:"#2f9e6b", delivering:"#e0a526", dispatched:"#3b6fd8",
  queued:"#9b59b6", failed:"#d64545"};
const history = [];
function setText(id, value) { document.getElementById(id).textContent = String(value); }
function cell(row, text, cls) {
  const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; row.appendChild(td);
}
function clock(at) {
  const d = new Date(at * 1000);
  const ms = String(d.getMilliseconds()).padStart(3, "0");
  return d.toLocaleTimeString([], {hour12: false}) + "." + ms;
}
function line(values, max, colour) {
  if (values.length < 2) return "";
  const pts = values.map((v, i) =>
    (600 - (values.length - 1 - i) * 5).toFixed(1) + "," + (88 - 84 * v / max).toFixed(1));
  return '<polyline fill="none" stroke-width="2" stroke="' + colour + '" points="' +
    pts.join(" ") + '"/>';
}
function render(s) {
  setText("source", s.source);
  const consoleLink = document.getElementById("console");
  if (s.console_url) { consoleLink.href = s.console_url; consoleLink.hidden = false; }
  setText("total", s.total);
  for (const k of ["queued", "dispatched", "delivering", "delivered", "failed"]) {
    setText(k, s.counts[k]);
  }
  setText("throughput", s.throughput_per_s.toFixed(1));
  setText("depth", s.queue_depth);
  setText("depth-k", "queue depth (" + s.queue_depth_source + ")");
  setText("dead", s.dead_letters === null ? "-" : s.dead_letters);
  setText("lambdaq", s.lambda_event_queue === null ? "-" : s.lambda_event_queue);
  setText("avg", "average " + s.average_throughput_per_s.toFixed(1) + " deliveries/s");
  const bar = document.getElementById("bar");
  bar.replaceChildren();
  for (const k of ["delivered", "failed", "delivering", "dispatched", "queued"]) {
    const span = document.createElement("span");
    span.style.width = (s.total ? 100 * s.counts[k] / s.total : 0) + "%";
    span.style.background = colours[k]; span.title = k + ": " + s.counts[k];
    bar.appendChild(span);
  }
  history.push(s); if (history.length > 120) history.shift();
  const inflight = history.map(h => h.in_flight), tput = history.map(h => h.throughput_per_s);
  const depth = history.map(h => h.queue_depth);
  const max = Math.max(1, ...inflight, ...tput, ...depth);
  setText("sparkmax", max.toFixed(1));
  document.getElementById("spark").innerHTML =
    line(depth, max, "#9b59b6") + line(inflight, max, "#e0a526") + line(tput, max, "#2f9e6b");
  const body = document.getElementById("latest");
  body.replaceChildren();
  for (const e of s.latest) {
    const row = document.createElement("tr");
    cell(row, clock(e.at), "t"); cell(row, e.order_id); cell(row, e.event, "ev-" + e.event);
    cell(row, e.reason); body.appendChild(row);
  }
}
const status = document.getElementById("status");
const stream = new EventSource("events" + suffix);
stream.onopen = () => { status.textContent = "live"; status.className = "live"; };
stream.onerror = () => { status.textContent = "reconnecting…"; status.className = "down"; };
stream.onmessage = (msg) => render(JSON.parse(msg.data));
</script>
</body></html>
"""
