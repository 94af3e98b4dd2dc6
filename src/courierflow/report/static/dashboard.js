"use strict";
// The live dashboard: one snapshot a second arrives on /events (server-sent events); each
// redraws the figures, the progress bar, the two-minute sparkline and the latest events.
const token = new URLSearchParams(location.search).get("token");
const suffix = token ? "?token=" + encodeURIComponent(token) : "";
const history = [];

function setText(id, value) { document.getElementById(id).textContent = String(value); }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function clock(at) {
  const d = new Date(at * 1000);
  const ms = String(d.getMilliseconds()).padStart(3, "0");
  return d.toLocaleTimeString([], {hour12: false}) + "." + ms;
}

function line(values, max, series) {
  if (values.length < 2) return "";
  const pts = values.map((v, i) =>
    (600 - (values.length - 1 - i) * 5).toFixed(1) + "," + (88 - 84 * v / max).toFixed(1));
  return '<polyline class="line ' + series + '" points="' + pts.join(" ") + '"/>';
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
    span.className = k;
    span.title = k + ": " + s.counts[k];
    bar.appendChild(span);
  }
  history.push(s);
  if (history.length > 120) history.shift();
  const inflight = history.map(h => h.in_flight), tput = history.map(h => h.throughput_per_s);
  const depth = history.map(h => h.queue_depth);
  const max = Math.max(1, ...inflight, ...tput, ...depth);
  setText("sparkmax", max.toFixed(1));
  document.getElementById("spark").innerHTML =
    line(depth, max, "s-depth") + line(inflight, max, "s-in-flight") +
    line(tput, max, "s-throughput");
  const body = document.getElementById("latest");
  body.replaceChildren();
  for (const e of s.latest) {
    const row = document.createElement("tr");
    cell(row, clock(e.at), "t");
    cell(row, e.order_id);
    cell(row, e.event, "ev-" + e.event);
    cell(row, e.reason);
    body.appendChild(row);
  }
}

const status = document.getElementById("status");
const stream = new EventSource("events" + suffix);
stream.onopen = () => { status.textContent = "live"; status.className = "live"; };
stream.onerror = () => { status.textContent = "reconnecting…"; status.className = "down"; };
stream.onmessage = (msg) => render(JSON.parse(msg.data));
