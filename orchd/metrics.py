"""Prometheus metrics of the daemons, served when ``[metrics] listen`` (or ``--metrics-listen``) is set.

Counters and histograms count what this process saw, through ``Metrics``, the observer the
daemons are given (``orchd.observer``): a worker's claims, heartbeats and runs, a scheduler's
ticks.  What describes the whole queue (runs by state and pool, queue depth) is read
from the database by the leading scheduler alone, at most every ``REFRESH`` seconds from its own
loop, so each database has one such series however many daemons are scraped, a scrape never
waits for a query, and a standby or a stalled leader stops reporting instead of reporting stale
numbers.  README, "Metrics", lists every name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from orchd.db.store import Store
from orchd.errors import OrchdError
from orchd.models import ClaimedRun, TickReport
from orchd.observer import Observer
from orchd.states import LIVE, RunState

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: nobody graphs when a counter was created

#: Seconds between two reads of the queue by the leader, and after which a reading is dropped.
REFRESH = 15.0
STALE = 60.0
_SECONDS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)
#: For database round trips: a claim or a tick takes milliseconds, and its p99 matters.
_FAST = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5)

RUNS_CLAIMED = Counter("orchd_runs_claimed", "Runs claimed by this worker.")
HEARTBEATS = Counter("orchd_heartbeats", "Heartbeats of this worker (each extends all its leases).")
CLAIM_SECONDS = Histogram(
    "orchd_claim_seconds", "Duration of this worker's claims (one transaction each).", buckets=_FAST
)
RUNS_FENCED = Counter(
    "orchd_runs_fenced", "Runs this worker stopped because it could not renew their lease in time."
)
SCHEDULE_LAG = Histogram(
    "orchd_schedule_lag_seconds",
    "From a run's scheduled time to its start (first attempts only).",
    ["deployment"],
    buckets=_SECONDS,
)
RUN_DURATION = Histogram(
    "orchd_run_duration_seconds",
    "Duration of runs executed by this worker, by outcome (COMPLETED, FAILED, TIMED_OUT).",
    ["deployment", "state"],
    buckets=_SECONDS,
)
LEADER = Gauge("orchd_scheduler_leader", "1 while this scheduler is the leader, 0 while it stands by.")
TICKS = Counter("orchd_scheduler_ticks", "Scheduler ticks done as leader.")
TICK_SECONDS = Histogram("orchd_scheduler_tick_seconds", "Duration of the leader's ticks.", buckets=_FAST)
RUNS_MATERIALIZED = Counter("orchd_runs_materialized", "Runs created from schedules by this scheduler.")
RUNS_REAPED = Counter("orchd_runs_reaped", "Runs CRASHED by this scheduler because their lease expired.")
RUNS_MISSED = Counter("orchd_runs_missed", "Runs marked MISSED by this scheduler (past misfire_grace).")
DATABASE_ERRORS = Counter(
    "orchd_database_errors", "Database operations that failed (the daemon retries).", ["daemon"]
)


@dataclass(frozen=True)
class _Reading:
    at: float
    pools: list[str]
    live: dict[tuple[str, str], int]
    queue: dict[str, tuple[int, float]]


class QueueCollector(Collector):
    """The leader's latest reading of the queue, exported while it is fresh: every pool and live
    state has a series, zero included, so an alert needs no ``absent()``."""

    def __init__(self) -> None:
        self._reading: _Reading | None = None
        self._lock = threading.Lock()

    def refresh(self, store: Store, now: datetime) -> None:
        if self._reading is not None and time.monotonic() - self._reading.at < REFRESH:
            return
        queue = {pool: (n, (now - oldest).total_seconds()) for pool, (n, oldest) in store.queue(now).items()}
        reading = _Reading(time.monotonic(), store.pool_names(), store.live_runs(), queue)
        with self._lock:
            self._reading = reading

    def clear(self) -> None:
        with self._lock:
            self._reading = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            reading = self._reading
        if reading is None or time.monotonic() - reading.at > STALE:
            return
        runs = GaugeMetricFamily(
            "orchd_runs",
            "Runs waiting or working, by state and pool (from the leader).",
            labels=["state", "pool"],
        )
        depth = GaugeMetricFamily(
            "orchd_queue_depth",
            "Runs due now and not yet claimed, by pool (from the leader).",
            labels=["pool"],
        )
        oldest = GaugeMetricFamily(
            "orchd_queue_oldest_seconds",
            "How long the oldest due, unclaimed run of a pool has waited (from the leader).",
            labels=["pool"],
        )
        for pool in reading.pools:
            for state in LIVE:
                runs.add_metric([state, pool], reading.live.get((state, pool), 0))
            count, age = reading.queue.get(pool, (0, 0.0))
            depth.add_metric([pool], count)
            oldest.add_metric([pool], max(0.0, age))
        yield from (runs, depth, oldest)


QUEUE = QueueCollector()
REGISTRY.register(QUEUE)
#: Is /metrics served by this process (``serve``)?  Only then does the leader read the queue.
_served = False


class Metrics(Observer):
    """The daemons' observer that counts for Prometheus; the leading scheduler's ticks also
    refresh the queue reading from ``store`` (at most every ``REFRESH`` seconds)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def database_error(self, daemon: str, reason: str) -> None:
        DATABASE_ERRORS.labels(daemon).inc()

    def leading(self, leader: bool) -> None:
        LEADER.set(int(leader))
        if not leader:
            QUEUE.clear()

    def ticked(self, report: TickReport, now: datetime) -> None:
        TICKS.inc()
        TICK_SECONDS.observe(report.seconds)
        RUNS_MATERIALIZED.inc(report.created)
        RUNS_REAPED.inc(report.crashed)
        RUNS_MISSED.inc(report.missed)
        if _served:  # three queries every REFRESH seconds that nobody would read
            QUEUE.refresh(self.store, now)

    def claimed(self, runs: int, seconds: float) -> None:
        RUNS_CLAIMED.inc(runs)
        CLAIM_SECONDS.observe(seconds)

    def fenced(self) -> None:
        RUNS_FENCED.inc()

    def heartbeat(self) -> None:
        HEARTBEATS.inc()

    def run_started(self, run: ClaimedRun, now: datetime) -> None:
        """Schedule lag of a first attempt (a retry's lag would count its retry delay)."""
        if run.attempt == 1:
            SCHEDULE_LAG.labels(run.deployment).observe(max(0.0, (now - run.scheduled_for).total_seconds()))

    def run_ended(self, deployment: str, outcome: RunState, seconds: float) -> None:
        RUN_DURATION.labels(deployment, outcome.value).observe(seconds)


def serve(listen: str) -> WSGIServer:
    """Serve /metrics on ``HOST:PORT`` from a daemon thread; an empty HOST means all IPv4 interfaces."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        server, _thread = start_http_server(int(port), host)
    except OSError as exc:
        raise OrchdError(f"metrics: cannot listen on {listen}: {exc.strerror or exc}") from None
    global _served
    _served = True
    return server
