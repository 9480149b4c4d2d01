"""`make bench-scale`: a fleet of worker hosts on one PostgreSQL, behind PgBouncer, under a mixed load
with workers SIGKILLed at random, then audited by the chaos checks.

    python -m tests.bench.scale                       # 100 workers x 8 slots, 10,000 schedules, 180 s
    python -m tests.bench.scale --workers 6 --slots 4 --schedules 400 --seconds 40 --burst 300   # smoke

Each worker is a host of its own: a network namespace (needs root) with a veth pair to this machine
and a host name of its own; it reaches PgBouncer (transaction pooling) and, for LISTEN, PostgreSQL
itself over that link (``--mode pgbouncer``), or polls without LISTEN (``--mode poll``), or goes
straight to PostgreSQL (``--mode direct``).  One scheduler (on this machine) has the schedules: a
few fast ones (every 2-10 s, up to 2 s of work), some every few minutes, some failing with a
retry, and most idle (every 6 h: present, rarely due), plus a burst of runs queued at once half way.
Every run's command appends start and end lines to a ledger, as in the chaos harness, and a tenth of
the workers are SIGKILLed at random moments and restarted.

Measured: claim latency p50/p99 (the workers' orchd_claim_seconds histograms: the claim's
transaction as the worker sees it) in the steady load, during the burst and in the catch-up after
it apart (the window opens once the fleet has settled after its start: see Settling), the CPU each
kind of process used in each (and whether other processes used the machine meanwhile: the
figures are then unreliable), schedule-to-start lag, runs/s steady and for the burst, the
server's connections (all, orchd's, per worker) and transactions per second, lock waits
(PostgreSQL logs every wait past deadlock_timeout = 100 ms; pg_stat_activity is sampled too),
the scheduler's tick time, workers' start time and memory; then the chaos checks (nothing lost,
nothing doubled, no run twice at once, no orphan).  The drain waits as long as runs keep
finishing, and reports a queue that stands still for ``--stall`` seconds as stuck.  Prints a
table and writes tests/bench/results/scale.json.  Figures mean something only on a quiet
machine (take the quiet lock, see the helpers' notes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import tomli_w
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from orchd.db import migrate
from orchd.db.schema import deployments, runs, workers
from orchd.db.store import Store
from orchd.durations import parse_duration
from orchd.states import FINISHED, RunState
from tests import netns
from tests.bench.common import RESULTS, engine_for, percentile, rss_mb
from tests.bench.quiet import QUIET_CORES, busy_seconds, postmaster_pid
from tests.bench.run import queue_runs
from tests.chaos import checks
from tests.chaos.checks import Job, Observed, Violation, read_ledger
from tests.chaos.fleet import Daemon, Fleet
from tests.chaos.harness import JOB_SCRIPT, database_rows
from tests.chaos.settle import wait_settled
from tests.pg import PgServer, postgres_server
from tests.pgbouncer import PgBouncer, pgbouncer

S = RunState
LEASE = 10.0
METRICS_PORT = 9464
MODES = ("pgbouncer", "poll", "direct")
#: The server logs each statement slower than this (ms): the claim-latency target is 20 ms.
SLOW_STATEMENT_MS = 15
BURST = Job("burst", "1h", 0, 0, retries=0, outcome=S.COMPLETED)
#: The machine counts as saturated with more than this share of its CPUs busy (the steady load
#: keeps about half of two busy).
SATURATED = 0.8


@dataclass(frozen=True)
class Settings:
    workers: int = 100
    slots: int = 8
    schedules: int = 10_000
    #: How many of the schedules fire every 2-10 s (the rest of the load is fixed shares).  30:
    #: about 21 runs/s in all, what a 2-core machine runs beside a hundred idle-ish workers, their
    #: PostgreSQL and PgBouncer at about two thirds of its CPU; with 100 (36 runs/s) it was
    #: saturated, and the claim latency measured the run queue of the CPUs, not the claim.
    fast: int = 30
    seconds: float = 180.0
    kill_fraction: float = 0.1
    burst: int = 5_000
    mode: str = "pgbouncer"
    #: The drain fails when no run finished for this long (slow is fine, stuck is not).
    stall: float = 60.0
    seed: int | None = None
    results: Path | None = RESULTS / "scale.json"
    keep: bool = False


class Settling:
    """Is the fleet in its steady state again after a transient (its start, the burst)?  When no
    run waits a second past its due time and the CPUs were not saturated at the last two looks
    (a look every second or so).  Caught up alone was not enough: as the last of a hundred
    workers came online the queue kept up, but the machine was still saturated by their start,
    every claim took 200-500 ms, and the steady figures measured that for five seconds."""

    def __init__(self, caught_up: Callable[[], bool]) -> None:
        self.caught_up = caught_up
        self.last = (time.monotonic(), busy_seconds())
        self.calm = 0

    def look(self) -> bool:
        now, busy = time.monotonic(), busy_seconds()
        cores = (busy - self.last[1]) / max(now - self.last[0], 1e-3)
        self.last = (now, busy)
        self.calm = self.calm + 1 if cores < SATURATED * (os.cpu_count() or 1) else 0
        return self.calm >= 2 and self.caught_up()


def mixed_jobs(total: int, fast: int, rng: random.Random) -> list[Job]:
    """``total`` deployments of one schedule each: ``fast`` ones every 2-10 s (up to 2 s of work),
    0.1 % failing (one retry), 10 % every one to three minutes, the rest idle (every 6 h).

    Each interval counts from an anchor of its own, at random within the interval: anchored at
    the epoch (orchd's default), every minute schedule fired in the same second, a burst of up
    to a thousand runs at each minute that the steady figures (claim latency, schedule-to-start
    lag) measured instead of the steady load."""

    def job(name: str, seconds: int, work: float, status: int, retries: int, outcome: RunState) -> Job:
        anchor = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, seconds))
        return Job(name, f"{seconds}s", work, status, retries, outcome, anchor=anchor.isoformat())

    failing = max(1, total // 1000)
    minutes = max(1, total // 10)
    idle = max(0, total - fast - failing - minutes)
    jobs = [
        job(f"fast-{i:04d}", rng.randint(2, 10), round(rng.uniform(0.2, 2.0), 1), 0, 1, S.COMPLETED)
        for i in range(fast)
    ]
    jobs += [job(f"failing-{i:04d}", 5, 0.1, 3, 1, S.FAILED) for i in range(failing)]
    jobs += [job(f"minute-{i:05d}", rng.choice((60, 120, 180)), 0, 0, 1, S.COMPLETED) for i in range(minutes)]
    jobs += [job(f"idle-{i:05d}", 6 * 3600, 0, 0, 0, S.COMPLETED) for i in range(idle)]
    return jobs


def expected_rate(jobs: list[Job]) -> float:
    """Runs per second the schedules start in the steady state (a failing job's retry included)."""
    return sum((1 + (j.retries if j.outcome == S.FAILED else 0)) / parse_duration(j.every) for j in jobs)


def deployment(job: Job, script: Path, ledger: Path, tag: str, scheduled: bool = True) -> dict[str, Any]:
    return {
        "name": job.name,
        "command": ["sh", str(script), str(ledger), f"{job.seconds:g}", str(job.status)],
        "env": {"CHAOS_TAG": tag},
        "retries": job.retries,
        "retry_delay": "1s",
        "retry_backoff": 1.0,
        "schedules": [job.schedule] if scheduled else [],
    }


# ------------------------------------------------------------------ the database and the network


@contextmanager
def reachable_server(hosts: list[netns.Host]) -> Iterator[PgServer]:
    """A throwaway cluster that the namespaces reach over their veth pairs and that logs every lock
    wait longer than 100 ms and every statement slower than SLOW_STATEMENT_MS."""
    with postgres_server() as server:
        if server.data_dir is None:
            raise SystemExit("bench-scale needs the throwaway cluster (unset ORCHD_TEST_DATABASE_URL)")
        server.stop()
        with (server.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '*'\nmax_connections = 600\nlog_lock_waits = on\n"
                "deadlock_timeout = '100ms'\nshared_buffers = '256MB'\n"
                f"log_min_duration_statement = '{SLOW_STATEMENT_MS}ms'\n"
            )
        with (server.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.0.0.0/8 trust\n")
        server.start()
        yield server


class HostFleet(Fleet):
    """The chaos fleet, each worker in the namespace of its host, under its own host name."""

    hosts: dict[int, netns.Host]
    configs: dict[int, Path]

    def command(self, daemon: Daemon) -> list[str]:
        if daemon.kind != "worker":
            return super().command(daemon)
        host = self.hosts[daemon.slot]
        argv = [str(Path(sys.executable).parent / "orchd-worker"), "--config", str(self.configs[daemon.slot])]
        return host.command(argv, hostname=f"worker-host-{daemon.slot:03d}")


# ------------------------------------------------------------------ measuring


@dataclass
class Samples:
    """What the sampler saw, once a second."""

    clients: list[int] = field(default_factory=list)
    orchd: list[int] = field(default_factory=list)
    lock_waiting: list[int] = field(default_factory=list)
    longest_lock_wait: float = 0.0
    xacts: list[tuple[float, int]] = field(default_factory=list)
    by_application: Counter[str] = field(default_factory=Counter)
    bouncer: list[dict[str, Any]] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, server: PgServer, database: str, bouncer: PgBouncer | None) -> None:
        super().__init__(name="sampler", daemon=True)
        self.url = server.url_for("postgres").replace("+psycopg", "")
        self.database, self.bouncer = database, bouncer
        self.samples = Samples()
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="bench-sampler") as conn:
            while not self.stopping.wait(1.0):
                with suppress(psycopg.Error):
                    self._sample(conn)

    def _sample(self, conn: psycopg.Connection[Any]) -> None:
        s = self.samples
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE backend_type = 'client backend'),"
            " count(*) FILTER (WHERE application_name LIKE 'orchd%'),"
            " count(*) FILTER (WHERE wait_event_type = 'Lock'),"
            " coalesce(max(extract(epoch FROM clock_timestamp() - query_start))"
            "   FILTER (WHERE wait_event_type = 'Lock'), 0)"
            " FROM pg_stat_activity"
        ).fetchone()
        assert row is not None
        s.clients.append(row[0])
        s.orchd.append(row[1])
        s.lock_waiting.append(row[2])
        s.longest_lock_wait = max(s.longest_lock_wait, float(row[3]))
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (self.database,)
        ).fetchone()
        assert xacts is not None
        s.xacts.append((time.monotonic(), int(xacts[0])))
        if row[1] >= max(s.orchd):
            s.by_application = Counter(
                dict(
                    conn.execute(
                        "SELECT application_name, count(*) FROM pg_stat_activity"
                        " WHERE backend_type = 'client backend' GROUP BY 1"
                    ).fetchall()
                )
            )
        if self.bouncer is not None:
            with suppress(psycopg.Error):
                s.bouncer += [p for p in self.bouncer.show("POOLS") if p["database"] == self.database]


Scraped = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class Mark:
    """One moment of the window: when, the process table, and the daemons' histograms."""

    at: float
    procs: dict[int, Proc]
    scraped: list[Scraped | None]


@dataclass(frozen=True)
class Proc:
    """A process as /proc/PID/stat shows it: its own CPU time and that of its reaped children."""

    comm: str
    parent: int
    own: float
    reaped: float


_TICK = os.sysconf("SC_CLK_TCK")
#: What a process of ours is, by its command name; the kind its reaped children's time goes to.
_KIND = {"postgres": "postgres", "pgbouncer": "pgbouncer", "orchd-worker": "workers"}
_KIND["orchd-scheduler"] = "scheduler"
_KTHREADD = 2
_REAPED_KIND = {"workers": "run children", "bench": "workers (killed, reaped by the bench)"}


def processes() -> dict[int, Proc]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                head, rest = Path(entry.path, "stat").read_text().rsplit(")", 1)
                fields = rest.split()
                table[int(entry.name)] = Proc(
                    head.split("(", 1)[1],
                    int(fields[1]),
                    (int(fields[11]) + int(fields[12])) / _TICK,
                    (int(fields[13]) + int(fields[14])) / _TICK,
                )
    return table


def cpu_by_kind(before: dict[int, Proc], after: dict[int, Proc], roots: set[int]) -> dict[str, float]:
    """CPU-seconds spent between two process tables, by kind: PostgreSQL (this bench's cluster),
    PgBouncer, the workers, the runs they spawned, the scheduler, the bench itself, and everything
    that is not this bench's: kernel threads (their softirq work is mostly this bench's packets
    over the veth pairs) and "other" (other users' processes: they make the figures
    unreliable).  The time of a process that ended in between moves to its parent's reaped
    time and is counted there; that of one that ended unreaped (rare here) is lost."""

    def kind(pid: int) -> str:
        proc, seen = after[pid], 0
        if pid == os.getpid():
            return "bench"
        if pid == _KTHREADD or proc.parent == _KTHREADD:
            return "kernel threads"
        ancestor = proc.parent
        while ancestor in after and seen < 64:
            if after[ancestor].comm == "orchd-worker":
                return "run children"
            if ancestor in roots:
                return _KIND.get(proc.comm, "bench")
            ancestor, seen = after[ancestor].parent, seen + 1
        return _KIND.get(proc.comm, "other") if pid in roots else "other"

    spent: Counter[str] = Counter()
    for pid, proc in after.items():
        was = before.get(pid)
        if was is not None and was.comm != proc.comm:
            was = None  # the pid was reused (or exec'd: its time counts from here)
        mine = kind(pid)
        spent[mine] += proc.own - (was.own if was else 0.0)
        spent[_REAPED_KIND.get(mine, mine)] += proc.reaped - (was.reaped if was else 0.0)
    return dict(spent)


#: The histograms the bench reads, and all it asks a daemon for (prometheus_client's name[]
#: filter): a worker that ran a thousand deployments has tens of thousands of per-deployment
#: histogram lines, and writing them all took it a few tenths of a CPU-second per scrape (a
#: hundred workers scraped during the burst skewed the very claims measured).
MEASURED = ("orchd_claim_seconds_bucket", "orchd_scheduler_tick_seconds_bucket")


def scrape(address: str, port: int = METRICS_PORT) -> Scraped | None:
    """name -> [(labels, value)] of the MEASURED samples of a daemon's /metrics, or None when it
    does not answer (killed, or too slow)."""
    query = "&".join(f"name[]={name}" for name in MEASURED)
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/metrics?{query}", timeout=30) as answer:
            body = answer.read().decode()
    except OSError:
        return None
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """The q-quantile of a cumulative histogram (upper bound -> count), linear within a bucket."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0
    if not total:
        return float("nan")
    rank, low, below = q * total, 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if edge == float("inf"):
                return low
            share = (rank - below) / max(buckets[edge] - below, 1e-9)
            return low + (edge - low) * share
        low, below = edge, buckets[edge]
    return low


def _since(before: Scraped | None, after: Scraped | None) -> Scraped:
    """What a daemon counted between two scrapes.  A daemon restarted in between (killed by the
    bench) counts from zero again: then its second scrape alone (as when the first found it
    down); nothing when the second found it down."""
    if after is None:
        return {}
    if before is None:
        return after
    old = {
        (name, tuple(sorted(labels.items()))): v for name, samples in before.items() for labels, v in samples
    }
    restarted = any(
        v < old.get((name, tuple(sorted(labels.items()))), 0)
        for name, samples in after.items()
        for labels, v in samples
    )
    if restarted:
        return after
    return {
        name: [(labels, v - old.get((name, tuple(sorted(labels.items()))), 0)) for labels, v in samples]
        for name, samples in after.items()
    }


def merged_buckets(scrapes: list[Scraped], name: str) -> dict[float, float]:
    merged: dict[float, float] = defaultdict(float)
    for found in scrapes:
        for labels, value in found.get(f"{name}_bucket", []):
            merged[float(labels["le"])] += value
    return dict(merged)


# ------------------------------------------------------------------ the run


class Scale:
    def __init__(self, settings: Settings, work: Path, stack: ExitStack) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.work = work
        self.t0 = time.monotonic()
        self.figures: dict[str, Any] = {}
        self.violations: list[Violation] = []
        self.hosts = stack.enter_context(netns.hosts(settings.workers))
        self.say(f"{len(self.hosts)} hosts (network namespaces) up")
        self.server = stack.enter_context(reachable_server(self.hosts))
        self.database = self.server.create_database()
        stack.callback(self.server.drop_database, self.database)
        self.url = self.server.url_for(self.database)
        engine = engine_for(self.url)
        migrate.upgrade(engine)
        engine.dispose()
        # the harness's own connection is not orchd's: it must not count as a worker's
        self.store = Store(create_engine(self.url, connect_args={"application_name": "bench"}), "bench")
        stack.callback(self.store.engine.dispose)
        self.bouncer = None
        if settings.mode in ("pgbouncer", "poll"):
            pool = max(20, settings.workers // 4)
            self.bouncer = stack.enter_context(
                pgbouncer(self.server, pool_size=pool, max_clients=4 * settings.workers + 100, listen="*")
            )
        self.jobs = mixed_jobs(settings.schedules, settings.fast, self.rng)
        self.tag = uuid.uuid4().hex
        self.ledger = work / "ledger"
        self.ledger.touch()
        self.fleet = self._fleet()
        stack.callback(self.fleet.cleanup)

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    def _fleet(self) -> HostFleet:
        settings, work = self.settings, self.work
        script = work / "job.sh"
        script.write_text(JOB_SCRIPT)
        (work / "logs").mkdir()
        (work / "runs").mkdir()
        scheduler_dir = work / "scheduler"
        (scheduler_dir / "deployments.d").mkdir(parents=True)
        body = {
            "database": {"url": self.url},
            # a short horizon, as in the chaos harness: once the scheduler stops at the drain, the
            # runs it materialized stop coming due within seconds (with the default 10 minutes
            # the fast schedules' runs kept coming due, and the fleet never stood idle)
            "scheduler": {"loop_interval": "1s", "horizon": "10s", "catchup": "all", "misfire_grace": "30m"},
            "logging": {"level": "info"},
            "metrics": {"listen": f"127.0.0.1:{_free_port()}"},
        }
        self.scheduler_metrics = body["metrics"]["listen"]
        (scheduler_dir / "orchd.toml").write_text(tomli_w.dumps(body))
        listed = [deployment(j, script, self.ledger, self.tag) for j in self.jobs]
        listed.append(deployment(BURST, script, self.ledger, self.tag, scheduled=False))
        for start in range(0, len(listed), 1000):
            part = scheduler_dir / "deployments.d" / f"part-{start // 1000:03d}.toml"
            part.write_text(tomli_w.dumps({"deployments": listed[start : start + 1000]}))
        fleet = HostFleet.of(scheduler_dir / "orchd.toml", work / "logs", self.tag, 1, settings.workers)
        fleet.hosts = {i + 1: host for i, host in enumerate(self.hosts)}
        fleet.configs = {slot: self._worker_config(slot, host) for slot, host in fleet.hosts.items()}
        return fleet

    def _worker_config(self, slot: int, host: netns.Host) -> Path:
        """A worker host's config: the database through its own link; no deployments (workers
        need none, and each would parse all 10,000 at start)."""
        mode, server_port = self.settings.mode, make_url(self.url).port
        url = make_url(self.url).set(host=host.gateway)
        database: dict[str, Any] = {"url": url.render_as_string(hide_password=False)}
        if mode in ("pgbouncer", "poll"):
            assert self.bouncer is not None
            database["url"] = url.set(port=self.bouncer.port).render_as_string(hide_password=False)
            database["pooler"] = "transaction"
            if mode == "pgbouncer":
                database["direct_url"] = f"postgresql://{host.gateway}:{server_port}"
        worker = {
            "concurrency": self.settings.slots,
            "heartbeat": "2s",
            "lease_timeout": f"{LEASE:g}s",
            "poll_interval": "1s" if mode == "poll" else "30s",
            "shutdown_grace": "20s",
            "kill_grace": "2s",
            "work_dir": str(self.work / "runs"),
        }
        path = self.work / f"worker-{slot:03d}.toml"
        body = {
            "database": database,
            "worker": worker,
            "logging": {"level": "warning"},
            "metrics": {"listen": f"{host.address}:{METRICS_PORT}"},
        }
        path.write_text(tomli_w.dumps(body))
        return path

    # -------------------------------------------------------------- phases

    def run(self) -> None:
        settings, fleet = self.settings, self.fleet
        [scheduler] = fleet.of_kind("scheduler")
        began = time.monotonic()
        fleet.start(scheduler)
        self._wait("the scheduler to sync and lead", self._leading, 600)
        self.figures["scheduler sync of the deployments (s)"] = round(time.monotonic() - began, 1)
        self.say(f"scheduler leads ({len(self.jobs)} schedules); starting {settings.workers} workers")
        self.figures["mixed load: runs/s the schedules start"] = round(expected_rate(self.jobs), 1)
        began = time.monotonic()
        for daemon in fleet.of_kind("worker"):
            fleet.start(daemon)
        self._wait("every worker online", lambda: self._online() >= settings.workers, 900)
        self.figures["fleet start, all workers online (s)"] = round(time.monotonic() - began, 1)
        self.unanswered = 0
        self.marks: dict[str, Mark] = {}
        self._mark("all online")
        self._wait("the fleet to settle", Settling(self._caught_up).look, 300)
        self.figures["fleet start, settled (s)"] = round(time.monotonic() - began, 1)
        rss = [rss_mb(d.pid) for d in fleet.alive("worker") if d.pid is not None]
        self.figures["worker RSS median / max (MB)"] = [round(percentile(rss, 50)), round(max(rss))]
        self.say("fleet up: load begins")
        sampler = Sampler(self.server, self.database, self.bouncer)
        sampler.start()
        self._mark("window start")  # the histograms count from here
        self.window = (datetime.now(UTC), datetime.now(UTC))
        self._load()
        self.window = (self.window[0], datetime.now(UTC))
        self.say("load over: scraping metrics")
        self._mark("window end")
        sampler.stopping.set()
        sampler.join(timeout=10)
        drained = self._drain()
        self._measure(sampler.samples)
        self._audit(drained)

    def _mark(self, name: str) -> None:
        """A moment the figures are split at: the process table and every daemon's histograms."""
        self.marks[name] = Mark(time.monotonic(), processes(), self._scrape_all())

    def _scrape_all(self) -> list[Scraped | None]:
        """The scheduler's metrics, then each worker host's, scraped at once (one after the other,
        a hundred workers busy with runs took minutes to answer)."""
        began = time.monotonic()
        host, port = self.scheduler_metrics.rsplit(":", 1)
        with ThreadPoolExecutor(max_workers=32, thread_name_prefix="scrape") as pool:
            found = [scrape(host, int(port)), *pool.map(lambda h: scrape(h.address), self.hosts)]
        down = sum(1 for f in found if f is None)
        self.say(f"scraped {len(found)} daemons' metrics in {time.monotonic() - began:.1f}s ({down} down)")
        self.unanswered += down
        return found

    def _segment(self, first: str, last: str) -> tuple[list[Scraped], Scraped]:
        """What the workers and the scheduler counted between two marks."""
        a, b = self.marks[first].scraped, self.marks[last].scraped
        return [_since(x, y) for x, y in zip(a[1:], b[1:], strict=True)], _since(a[0], b[0])

    def _segments(self) -> dict[str, list[tuple[str, str]]]:
        """The window's parts: the burst, from its queueing until its last run finished; the
        catch-up, from then until the fleet settled (Settling: the runs the burst held back, a
        machine still saturated); the steady load, the rest.  And, for the whole picture, the
        settling of the fleet's start (from all workers online until it settled, before the
        window) and the whole window."""
        context = {
            "fleet start settling (all online -> window start)": [("all online", "window start")],
            "whole window (steady, burst and catch-up)": [("window start", "window end")],
        }
        if "burst queued" not in self.marks:
            return {"steady (window)": [("window start", "window end")], **context}
        if "burst done" not in self.marks:
            return {
                "steady (window less burst)": [("window start", "burst queued")],
                "burst (queued -> window end)": [("burst queued", "window end")],
                **context,
            }
        resumed = "settled" if "settled" in self.marks else "window end"
        parts = {
            "steady (window less burst and catch-up)": [("window start", "burst queued")],
            "burst (queued -> done)": [("burst queued", "burst done")],
            f"catch-up (burst done -> {resumed})": [("burst done", resumed)],
        }
        if resumed == "settled":
            parts["steady (window less burst and catch-up)"].append(("settled", "window end"))
        return {**parts, **context}

    def _load(self) -> None:
        """The window: the schedules run, the burst is queued half way, a tenth of the workers are
        SIGKILLed at random moments and restarted 1 to 4 s later."""
        settings, fleet = self.settings, self.fleet
        start = time.monotonic()
        end = start + settings.seconds
        victims = self.rng.sample(fleet.of_kind("worker"), round(settings.kill_fraction * settings.workers))
        kills = sorted((start + self.rng.uniform(0.1, 0.8) * settings.seconds, v) for v in victims)
        burst_at = start + settings.seconds / 2
        self.burst: tuple[datetime, float] | None = None
        settling: Settling | None = None  # from the burst's end
        next_look = 0.0
        while (now := time.monotonic()) < end:
            fleet.tend()
            fleet.watch_orphans()
            if kills and now >= kills[0][0]:
                _, victim = kills.pop(0)
                if victim.alive():
                    kill = fleet.kill(victim, False, self.rng.uniform(1.0, 4.0))
                    self.say(f"SIGKILL {victim.label} (pid {kill.pid}, {len(kill.run_groups)} runs)")
            if self.burst is None and now >= burst_at and settings.burst:
                self._mark("burst queued")
                queued, began = datetime.now(UTC), time.monotonic()
                queue_runs(self.store, settings.burst, BURST.name)
                with self.store.engine.begin() as conn:
                    conn.execute(text("SELECT pg_notify('orchd', 'default')"))
                self.burst = (queued, time.monotonic() - began)
                self.say(f"burst: {settings.burst} runs queued in {self.burst[1]:.1f}s")
                next_look = time.monotonic() + 1.0
            elif self.burst is not None and "burst done" not in self.marks and now >= next_look:
                next_look = now + 1.0
                if not self._count(runs.c.deployment_id == self._burst_id(), _open()):
                    self.say("burst done")
                    self._mark("burst done")
                    settling = Settling(self._caught_up)
            elif settling is not None and "settled" not in self.marks and now >= next_look:
                next_look = now + 1.0
                if settling.look():
                    self.say("settled after the burst")
                    self._mark("settled")
            time.sleep(0.1)
        self.fleet.start_all_stopped()

    def _drain(self) -> datetime:
        """As the chaos harness: every worker up until the window's runs are done, then the
        scheduler stops, then the workers once nothing is due.  Each wait lasts as long as runs
        keep finishing (a backlog drains at the fleet's pace); one that stands still for
        ``settings.stall`` seconds is a stuck queue: a violation."""
        self.say("draining")
        fleet = self.fleet
        end = self.window[1]
        self._settle("the window's runs to finish", lambda: self._count(runs.c.scheduled_for <= end, _open()))
        self.figures["runs/s, burst"] = self._burst_rate()
        fleet.stop_kind("scheduler", 60)
        drained_at = datetime.now(UTC)

        def busy() -> int:
            nonlocal drained_at
            drained_at = datetime.now(UTC)
            due = (runs.c.state == S.SCHEDULED.value) & (runs.c.due_at <= drained_at)
            return self._count(due | runs.c.state.in_([S.PENDING.value, S.RUNNING.value]))

        self._settle("nothing due or running", busy)
        fleet.stop_kind("worker", 120)
        for pid, (kind, status) in sorted(fleet.stop_status.items()):
            if status != 0:
                self.violations.append(
                    Violation("daemon exit", f"{kind} pid {pid} exited {status} on SIGTERM")
                )
        fleet.watch_orphans(force=True)
        self.say("drained and stopped")
        return drained_at

    def _settle(self, what: str, outstanding: Callable[[], int]) -> None:
        settled = wait_settled(outstanding, self.settings.stall, tend=self.fleet.tend)
        self.say(f"{what}: {'done' if settled.done else 'STUCK'} after {settled.waited:.0f}s")
        if not settled.done:
            self.violations.append(
                Violation(
                    "drain",
                    f"stuck waiting for {what}: {settled.left} left, none finished in the last "
                    f"{settled.still:.0f}s ({settled.waited:.0f}s in all)",
                )
            )

    def _burst_id(self) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(select(deployments.c.id).where(deployments.c.name == BURST.name)).scalar_one()
            )

    def _burst_rate(self) -> float | None:
        if self.burst is None:
            return None
        queued, _ = self.burst
        with self.store.read() as conn:
            last = conn.execute(
                select(func.max(runs.c.finished_at)).where(runs.c.deployment_id == self._burst_id())
            ).scalar()
        return round(self.settings.burst / (last - queued).total_seconds(), 1) if last else None

    def _claim_figures(self, name: str, worker_scrapes: list[Scraped]) -> None:
        claims = merged_buckets(worker_scrapes, "orchd_claim_seconds")
        self.figures[f"claims measured, {name}"] = int(claims.get(float("inf"), 0))
        self.figures[f"claim p50 / p99 (ms), {name}"] = [
            round(histogram_quantile(claims, q) * 1000, 2) for q in (0.50, 0.99)
        ]

    def _measure(self, samples: Samples) -> None:
        """Claim latency in the steady load (the window less the burst) and during the burst
        (from its queueing until its last run finished, or the window's end), each from the
        workers' own histograms; the rest over the whole window."""
        f, settings = self.figures, self.settings
        for name, parts in self._segments().items():
            self._claim_figures(name, [w for a, b in parts for w in self._segment(a, b)[0]])
            self._cpu_figures(name, parts)
        scheduler_scrape = self._segment("window start", "window end")[1]
        ticks = merged_buckets([scheduler_scrape], "orchd_scheduler_tick_seconds")
        f["scheduler tick p50 (ms)"] = round(histogram_quantile(ticks, 0.50) * 1000, 2)
        f["scheduler tick p99 (ms)"] = round(histogram_quantile(ticks, 0.99) * 1000, 2)
        f["scheduler ticks measured / over 1 s"] = [
            int(ticks.get(float("inf"), 0)),
            int(ticks.get(float("inf"), 0) - ticks.get(1.0, 0)),
        ]
        lags = self._lags()
        f["schedule-to-start p50 / p99 (ms)"] = [round(percentile(lags, 50)), round(percentile(lags, 99))]
        f["runs finished in the window"] = self._count(
            runs.c.finished_at >= self.window[0], runs.c.finished_at <= self.window[1]
        )
        f["runs/s, steady (window, burst included)"] = round(
            f["runs finished in the window"] / settings.seconds, 1
        )
        f["server connections max: all / orchd"] = [
            max(samples.clients, default=0),
            max(samples.orchd, default=0),
        ]
        f["server connections by application at the peak"] = dict(samples.by_application)
        f["server connections per worker (orchd's, less the scheduler's 2)"] = round(
            (max(samples.orchd, default=0) - 2) / settings.workers, 2
        )
        rates = [
            (b[1] - a[1]) / (b[0] - a[0])
            for a, b in zip(samples.xacts, samples.xacts[1:], strict=False)
            if b[0] > a[0]
        ]
        f["transactions/s median / max"] = [round(percentile(rates, 50)), round(max(rates, default=0))]
        f["lock waits seen (samples with a waiter) / longest sampled (ms)"] = [
            sum(1 for n in samples.lock_waiting if n),
            round(samples.longest_lock_wait * 1000),
        ]
        f["lock waits over 100 ms (PostgreSQL log)"] = self._logged_lock_waits()
        f[f"statements over {SLOW_STATEMENT_MS} ms (PostgreSQL log)"] = self._slow_statements()
        if samples.bouncer:
            f["pgbouncer: client wait max (ms) / server connections max"] = [
                round(max(p["maxwait"] * 1000 + p["maxwait_us"] / 1000 for p in samples.bouncer)),
                max(p["sv_active"] + p["sv_idle"] + p["sv_used"] for p in samples.bouncer),
            ]

    def _cpu_figures(self, name: str, parts: list[tuple[str, str]]) -> None:
        """Where the machine's CPU went in a part of the window, and whether others used it."""
        roots = {os.getpid(), *postmaster_pid(self.server.data_dir)}
        cpu: Counter[str] = Counter()
        seconds = 0.0
        for a, b in parts:
            cpu.update(cpu_by_kind(self.marks[a].procs, self.marks[b].procs, roots))
            seconds += self.marks[b].at - self.marks[a].at
        ours = sum(v for k, v in cpu.items() if k != "other")
        other = cpu["other"] / seconds
        verdict = "quiet" if other <= QUIET_CORES else "BUSY: its figures are unreliable"
        self.figures[f"CPU, {name}: cores used of {os.cpu_count()} / others' ({verdict})"] = [
            round(ours / seconds, 2),
            round(other, 2),
        ]
        self.figures[f"CPU-s by process kind, {name} ({seconds:.0f} s)"] = {
            k: round(v, 1) for k, v in cpu.most_common()
        }

    def _lags(self) -> list[float]:
        """Start minus due time of first attempts of scheduled runs that started in the window, ms."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(runs.c.due_at, runs.c.started_at).where(
                    runs.c.attempt == 1,
                    runs.c.schedule_key.is_not(None),
                    runs.c.started_at >= self.window[0],
                    runs.c.started_at <= self.window[1],
                )
            ).all()
        return [(r.started_at - r.due_at).total_seconds() * 1000 for r in rows]

    def _server_log(self) -> str:
        return self.server.log_file.read_text(errors="replace") if self.server.log_file else ""

    def _slow_statements(self) -> dict[str, Any]:
        """The statements the server took longer than SLOW_STATEMENT_MS over, by their first words:
        what a claim's tail is made of when the server is the slow part (a read that grew with the
        active runs was found so)."""
        slow = re.findall(
            r"duration: [\d.]+ ms  (?:statement|execute|bind|parse)[^:]*: (.{1,60})", self._server_log()
        )
        kinds = Counter(" ".join(statement.split()[:4]) for statement in slow)
        return {"count": len(slow), "kinds": dict(kinds.most_common(5))}

    def _logged_lock_waits(self) -> dict[str, Any]:
        log = self._server_log()
        waits = re.findall(r"still waiting for (\w+) on (.+?) after ([\d.]+) ms", log)
        kinds = Counter(f"{lock} on {what.split(' of ')[0]}" for lock, what, _ in waits)
        return {"count": len(waits), "kinds": dict(kinds.most_common(5))}

    def _audit(self, drained_at: datetime) -> None:
        run_rows, history, schedule_rows = database_rows(self.store.engine)
        executions, problems = read_ledger(self.ledger)
        observed = Observed(
            jobs=[*self.jobs, BURST],
            runs=run_rows,
            history=history,
            schedules=schedule_rows,
            executions=executions,
            worker_kills={k.pid: k.at for k in self.fleet.kills},
            outages=[],
            window=self.window,
            drained_at=drained_at,
            lease=LEASE,
            orphans=self.fleet.orphans,
        )
        scheduled = replace(observed, jobs=self.jobs)
        self.violations += [
            *problems,
            *checks.check_settled(observed),
            *checks.check_unique(observed),
            *checks.check_fire_times(scheduled),
            *checks.check_executions(observed),
            *checks.check_retries(observed),
            *checks.check_orphans(observed),
        ]
        self.figures["runs / executions in the ledger"] = [len(run_rows), len(executions)]
        self.figures["runs by state"] = dict(Counter(r.state for r in run_rows))
        self.figures["workers killed"] = len(self.fleet.kills)
        self.figures["chaos violations"] = len(self.violations)

    # -------------------------------------------------------------- helpers

    def _leading(self) -> bool:
        with suppress(Exception), self.store.read() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM schedulers WHERE role = 'leader'")).scalar())
        return False

    def _online(self) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(workers).where(workers.c.status == "online")
                ).scalar_one()
            )

    def _caught_up(self) -> bool:
        """No run waits to be claimed a second after it came due (see Settling)."""
        late = datetime.now(UTC) - timedelta(seconds=1)
        return not self._count(runs.c.state == S.SCHEDULED.value, runs.c.due_at < late)

    def _count(self, *conditions: Any) -> int:
        with self.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(runs).where(*conditions)).scalar_one())

    def _wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        """Wait for the fleet to come up (not a check: a fleet that cannot start ends the bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.fleet.tend()
            if done():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}; {self.fleet.last_log()}")


def _open() -> Any:
    return runs.c.state.not_in([s.value for s in FINISHED])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "load average": [round(x, 2) for x in load],
        "memory (MB)": int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
    }


def run(settings: Settings) -> dict[str, Any]:
    problem = netns.usable()
    if problem:
        raise SystemExit(f"bench-scale: {problem}")
    work = Path(tempfile.mkdtemp(prefix="orchd-scale-"))
    before = machine()
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            scale = Scale(settings, work, stack)
            scale.run()
    finally:
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "finished_at": datetime.now(UTC).isoformat(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "seed": scale.seed,
        "machine before": before,
        "machine after": machine(),
        "wall seconds": round(time.monotonic() - began),
        "figures": scale.figures,
        "violations": [asdict(v) for v in scale.violations],
        "kept": str(work) if settings.keep else None,
    }
    if settings.results is not None:
        settings.results.parent.mkdir(parents=True, exist_ok=True)
        settings.results.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    before, after = report["machine before"], report["machine after"]
    lines = [
        f"bench-scale: {s['workers']} workers x {s['slots']} slots ({s['mode']}), "
        f"{s['schedules']} schedules ({s['fast']} fast), {s['seconds']:g}s, burst {s['burst']}; "
        f"seed {report['seed']}; "
        f"load {before['load average']} -> {after['load average']} on {before['cpus']} CPUs",
    ]
    lines += [f"  {name:<66} {value}" for name, value in report["figures"].items()]
    lines += [f"  [{v['check']}] {v['detail'][:400]}" for v in report["violations"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scale", description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--slots", type=int, default=d.slots, help="worker.concurrency of each worker")
    parser.add_argument("--schedules", type=int, default=d.schedules)
    parser.add_argument("--fast", type=int, default=d.fast, help="schedules firing every 2-10 s")
    parser.add_argument("--seconds", type=float, default=d.seconds, help="length of the load window")
    parser.add_argument("--kill-fraction", type=float, default=d.kill_fraction)
    parser.add_argument("--burst", type=int, default=d.burst, help="runs queued at once half way (0: none)")
    parser.add_argument("--mode", choices=MODES, default=d.mode)
    parser.add_argument(
        "--stall", type=float, default=d.stall, help="drain: stuck when no run finished for this long"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--results", type=Path, default=d.results)
    parser.add_argument("--keep", action="store_true", help="keep configs, ledger and daemon logs")
    args = parser.parse_args(argv)
    settings = Settings(
        args.workers,
        args.slots,
        args.schedules,
        args.fast,
        args.seconds,
        args.kill_fraction,
        args.burst,
        args.mode,
        args.stall,
        args.seed,
        args.results,
        args.keep,
    )
    report = run(settings)
    print(render(report))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
