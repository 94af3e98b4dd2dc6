"""CPU seconds and peak RSS of each process of a run, by role, sampled with psutil.

A background thread looks at the processes every ``interval_s``: each role's processes
are found again at every sample (environments come and go), each process's CPU time
(user + system) is kept from the first and last time it was seen, and each role's
largest single RSS and largest RSS sum are kept. A process that ends between two samples
loses at most its last interval, so the figures are a slight undercount.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

#: seconds between two looks at the processes
SAMPLE_EVERY_S = 0.5

#: a role's processes, found again at every sample
Finder = Callable[[], Iterable[psutil.Process]]


@dataclass
class _Seen:
    role: str
    first: tuple[float, float]
    last: tuple[float, float]


@dataclass
class _Peak:
    rss_mb: float = 0.0
    rss_sum_mb: float = 0.0
    processes: int = 0


def _cpu_s(proc: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds."""
    times = proc.cpu_times()
    return float(times.user), float(times.system)


@dataclass
class ProcessSampler:
    """Samples the processes of named roles between ``start()`` and ``stop()``.

    ``roles`` maps a role's name to a function that returns its processes now. A process
    already running at ``start()`` counts from the CPU time it had then; one that starts
    later counts from zero (all its life is in the run)."""

    roles: dict[str, Finder]
    interval_s: float = SAMPLE_EVERY_S
    _seen: dict[tuple[int, float], _Seen] = field(default_factory=dict)
    _peaks: dict[str, _Peak] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0
    _elapsed: float = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop sampling; returns ``wall_s`` and ``roles``: ``{role: {cpu_s (user +
        system), system_cpu_s, rss_mb (largest process), rss_sum_mb, processes}}``."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample(first=False)
        self._elapsed = time.monotonic() - self._started
        return self.figures()

    def figures(self) -> dict[str, Any]:
        cpu: dict[str, float] = dict.fromkeys(self.roles, 0.0)
        system: dict[str, float] = dict.fromkeys(self.roles, 0.0)
        for seen in self._seen.values():
            cpu[seen.role] += sum(seen.last) - sum(seen.first)
            system[seen.role] += seen.last[1] - seen.first[1]
        roles = {
            role: {
                "cpu_s": round(cpu[role], 3),
                "system_cpu_s": round(system[role], 3),
                "rss_mb": round(self._peaks.get(role, _Peak()).rss_mb, 1),
                "rss_sum_mb": round(self._peaks.get(role, _Peak()).rss_sum_mb, 1),
                "processes": self._peaks.get(role, _Peak()).processes,
            }
            for role in self.roles
        }
        return {"wall_s": round(self._elapsed, 3), "roles": roles}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(first=False)

    def _sample(self, first: bool) -> None:
        for role, find in self.roles.items():
            rss_sum = 0.0
            count = 0
            procs: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                procs = list(find())
            for proc in procs:
                try:
                    with proc.oneshot():
                        cpu = _cpu_s(proc)
                        rss = proc.memory_info().rss / 2**20
                        key = (proc.pid, proc.create_time())
                except psutil.Error:
                    continue
                seen = self._seen.get(key)
                if seen is None:
                    self._seen[key] = _Seen(role, cpu if first else (0.0, 0.0), cpu)
                else:
                    seen.last = cpu
                peak = self._peaks.setdefault(role, _Peak())
                peak.rss_mb = max(peak.rss_mb, rss)
                rss_sum += rss
                count += 1
            peak = self._peaks.setdefault(role, _Peak())
            peak.rss_sum_mb = max(peak.rss_sum_mb, rss_sum)
            peak.processes = max(peak.processes, count)


def per_order_ms(figures: dict[str, Any], orders: int) -> dict[str, float]:
    """CPU milliseconds per order of each role, and their ``total``."""
    roles = figures["roles"]
    out = {role: 1000 * v["cpu_s"] / orders for role, v in roles.items()}
    out["total"] = sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}


# --- finding the processes ---------------------------------------------------------------


def one(pid: int) -> Finder:
    """The process ``pid`` alone (none once it ended)."""

    def find() -> list[psutil.Process]:
        return [psutil.Process(pid)] if psutil.pid_exists(pid) else []

    return find


def tree(pid: int) -> Finder:
    """The process ``pid`` and all its descendants."""

    def find() -> list[psutil.Process]:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]

    return find


def children_matching(pid: int, text: str, present: bool = True) -> Finder:
    """Descendants of ``pid`` whose command line contains ``text`` (or, with
    ``present=False``, does not): the Lambda service's environments of one function are
    forked from a zygote whose command line names the function."""

    def find() -> list[psutil.Process]:
        found = []
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if (text in " ".join(proc.cmdline())) == present:
                    found.append(proc)
        return found

    return find


def broker_processes(amqp_url: str, node_pid: int = 0) -> Finder:
    """RabbitMQ's Erlang VM (beam.smp): among the descendants of the node we started, or
    else the process listening on the AMQP URL's port."""
    port = urlsplit(amqp_url).port or 5672
    pids: list[int] = []
    if node_pid:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(node_pid)
            pids = [p.pid for p in [root, *root.children(recursive=True)] if "beam" in p.name()]
    if not pids:
        with contextlib.suppress(psutil.Error):
            pids = [
                c.pid
                for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
            ]

    def find() -> list[psutil.Process]:
        return [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]

    return find


def current_thread_cpu() -> Callable[[], float]:
    """A stopwatch of this thread's CPU seconds (the harness's own work, e.g. Celery's
    producer, without the sampler thread)."""
    started = time.thread_time()
    return lambda: time.thread_time() - started
