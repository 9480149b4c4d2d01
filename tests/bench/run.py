"""`make bench`: orchd's speed and memory figures on a throwaway PostgreSQL and on SQLite.

Prints a table (median and spread over repeats, the target, met or not) and writes
tests/bench/results/latest.json.  Each section first waits (``--settle``) for a quiet machine, then
records the load average and the CPU time other processes used during it (tests/bench/quiet.py):
figures of a section where others used more than a tenth of a core are marked unreliable.
Never part of `make test`: pass/fail tests do not time things.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text

from orchd.config import load_config
from orchd.config.model import ContainerConfig
from orchd.db.schema import deployments, runs, schedulers
from orchd.db.store import Store
from orchd.errors import DatabaseUnavailable
from orchd.logging import configure
from orchd.scheduler.daemon import Scheduler
from orchd.states import RunState
from tests.bench.common import (
    BIN,
    RESULTS,
    Databases,
    Figure,
    cpu_seconds,
    daemons,
    percentile,
    report,
    rss_mb,
    start,
    store_for,
    wait_until,
    write_config,
)
from tests.bench.notifications import bench_notifications
from tests.bench.quiet import Meter, postmaster_pid
from tests.bench.triggers import bench_triggers
from tests.bench.web import bench_web
from tests.containers import images
from tests.pg import postgres_server

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
NOOP = '[[deployments]]\nname = "noop"\ncommand = ["true"]\n'


def _now() -> datetime:
    return datetime.now(UTC)


def _runs(store: Store, state: str | None = None) -> list:  # type: ignore[type-arg]
    stmt = select(runs.c.id, runs.c.scheduled_for, runs.c.started_at, runs.c.finished_at, runs.c.state)
    if state:
        stmt = stmt.where(runs.c.state == state)
    with store.read() as conn:
        return list(conn.execute(stmt).all())


def _count_done(store: Store, ids: set[int]) -> int:
    with store.read() as conn:
        return int(
            conn.execute(
                select(func.count()).where(runs.c.id.in_(ids), runs.c.state == "COMPLETED")
            ).scalar_one()
        )


def _leader(store: Store) -> bool:
    with store.read() as conn:
        return bool(conn.execute(select(func.count()).where(schedulers.c.role == "leader")).scalar_one())


def _count(store: Store, state: str) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).where(runs.c.state == state)).scalar_one())


# 1 ---------------------------------------------------------------------------------------------


def bench_latency(dbs: Databases, backend: str, tmp: Path, repeats: int, seconds: float) -> list[Figure]:
    """Runs becoming due while a worker idles: started_at - scheduled_for.  The worker claims a
    claim's duration ahead of a due time it knows (worker.daemon.Ahead), and starts the run when
    it comes due (never before: test_worker checks by the run's clock)."""
    scheduled: list[float] = []
    created: list[float] = []
    p50s, p99s = [], []
    for _ in range(repeats):
        url = dbs.new(backend)
        body = "".join(
            f'[[deployments]]\nname = "tick{i}"\ncommand = ["true"]\n'
            f'schedules = [{{ interval = "1s", anchor = 2026-01-01T00:00:00.{i * 250:03d}Z }}]\n'
            for i in range(4)
        )
        body += NOOP
        path = tmp / f"latency-{backend}.toml"
        write_config(
            path,
            url,
            '[scheduler]\nhorizon = "30s"\nloop_interval = "1s"\n[worker]\nconcurrency = 8\n' + body,
        )
        store = store_for(url)
        with daemons(tmp) as procs:
            start(procs, tmp, "orchd-scheduler", "--config", str(path))
            start(procs, tmp, "orchd-worker", "--config", str(path))
            wait_until(lambda: _count(store, "COMPLETED") > 0, 30, "the first run")  # noqa: B023 (called now)
            begin = _now()
            deadline = time.monotonic() + seconds
            ad_hoc = []
            while time.monotonic() < deadline:
                ad_hoc.append(store.create_run("noop", _now()))
                time.sleep(0.2)
            end = _now()
            pending = set(ad_hoc)
            wait_until(lambda: _count_done(store, pending) == len(pending), 30, "the ad-hoc runs")  # noqa: B023
        rows = [r for r in _runs(store, "COMPLETED") if begin <= r.scheduled_for <= end]
        ad = set(ad_hoc)
        sched = [(r.started_at - r.scheduled_for).total_seconds() * 1000 for r in rows if r.id not in ad]
        made = [(r.started_at - r.scheduled_for).total_seconds() * 1000 for r in rows if r.id in ad]
        scheduled += sched
        created += made
        p50s.append(percentile(sched, 50))
        p99s.append(percentile(sched, 99))
        store.engine.dispose()
    return [
        Figure("schedule-to-start p50 (scheduled runs)", backend, "ms", p50s, "<= 5 ms", lambda v: v <= 5),
        Figure("schedule-to-start p95 (scheduled runs)", backend, "ms", [percentile(scheduled, 95)]),
        Figure("schedule-to-start p99 (scheduled runs)", backend, "ms", p99s, "<= 20 ms", lambda v: v <= 20),
        Figure(
            "create-to-start p50 (orchd run create)",
            backend,
            "ms",
            [percentile(created, 50)],
            "<= 20 ms",
            lambda v: v <= 20,
        ),
        Figure("create-to-start p99 (orchd run create)", backend, "ms", [percentile(created, 99)]),
    ]


# 2 ---------------------------------------------------------------------------------------------


def queue_runs(store: Store, count: int, deployment: str = "noop") -> None:
    """Insert ``count`` due runs of ``deployment`` in one statement (the benchmark measures the
    workers, not run creation)."""
    now = _now()
    with store.engine.begin() as conn:
        dep = conn.execute(select(deployments.c.id).where(deployments.c.name == deployment)).scalar_one()
        conn.execute(
            insert(runs),
            [
                {
                    "deployment_id": dep,
                    "pool": "default",
                    "state": "SCHEDULED",
                    "priority": 0,
                    "scheduled_for": now,
                    "due_at": now,
                    "attempt": 1,
                    "max_attempts": 1,
                    "parameters": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for _ in range(count)
            ],
        )


def bench_throughput(dbs: Databases, backend: str, tmp: Path, repeats: int, count: int) -> list[Figure]:
    figures = []
    for workers, target in ((1, 600), (2, 800), (4, 800)):
        rates = []
        for _ in range(repeats):
            url = dbs.new(backend)
            path = tmp / f"throughput-{backend}.toml"
            config = write_config(path, url, "[worker]\nconcurrency = 8\n" + NOOP)
            store = store_for(url)
            store.sync(config, _now())
            queue_runs(store, count)
            with daemons(tmp) as procs:
                for i in range(workers):
                    start(procs, tmp, "orchd-worker", "--config", str(path), "--burst", "--name", f"w{i}")
                for proc in procs:
                    proc.wait(timeout=600)
            rows = _runs(store, "COMPLETED")
            assert len(rows) == count, f"{len(rows)} of {count} completed"
            span = (max(r.finished_at for r in rows) - min(r.started_at for r in rows)).total_seconds()
            rates.append(count / span)
            store.engine.dispose()
        figures.append(
            Figure(
                f"{count} x `true`, {workers} worker(s) x 8",
                backend,
                "runs/s",
                rates,
                f">= {target} runs/s",
                lambda v, t=target: v >= t,
            )
        )
    return figures


# 3 ---------------------------------------------------------------------------------------------


def _retrying(step: Callable[[], list[int]]) -> list[int]:
    """``step`` again after a moment while SQLite is too busy for it, as a worker does."""
    while True:
        try:
            return step()
        except DatabaseUnavailable:
            time.sleep(0.01)


def bench_queue_only(dbs: Databases, backend: str, tmp: Path, repeats: int, count: int) -> list[Figure]:
    """Claim + start + complete with no child process: the cost of the queue itself, in the
    worker's transactions (a batch's completions recorded in the claim of the next batch)."""
    figures = []
    for claimers in (1, 4, 16):
        rates = []
        for _ in range(repeats):
            url = dbs.new(backend)
            config = write_config(tmp / f"queue-{backend}.toml", url, NOOP)
            setup = store_for(url)
            setup.sync(config, _now())
            queue_runs(setup, count)
            stores = [store_for(url, f"c{i}") for i in range(claimers)]

            def drain(store: Store) -> None:
                started: list[int] = []
                while True:
                    now = _now()
                    try:
                        _, claimed = store.complete_and_claim(
                            started, store.actor, ["default"], 16, now, now + timedelta(minutes=1)
                        )
                    except DatabaseUnavailable:  # SQLite with many writers: back off like a worker does
                        time.sleep(0.01)
                        continue
                    if not claimed:
                        return
                    # retried alone: a start retried after it succeeded moves nothing, and its
                    # runs were left RUNNING (the count failed on a busy SQLite)
                    started = _retrying(
                        partial(store.start_many, {r.id: 0 for r in claimed}, store.actor, now)
                    )

            began = time.perf_counter()
            threads = [threading.Thread(target=drain, args=(s,)) for s in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            rates.append(count / (time.perf_counter() - began))
            assert _count(setup, "COMPLETED") == count
            for s in [setup, *stores]:
                s.engine.dispose()
        figures.append(
            Figure(
                f"queue only, {claimers} claimer(s)",
                backend,
                "runs/s",
                rates,
                ">= 5000 runs/s",
                lambda v: v >= 5000,
            )
        )
    return figures


# 4 ---------------------------------------------------------------------------------------------


class Clock:
    """A settable clock, so a tick can be timed with a chosen share of the schedules due."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _scale_config(size: int) -> str:
    """``size`` hourly schedules spread over the hour, 10 per deployment."""
    parts = ['[scheduler]\nhorizon = "10m"\nmax_scheduled_runs = 10\n']
    for d in range(size // 10):
        anchors = [ANCHOR + timedelta(seconds=(d * 10 + s) % 3600) for s in range(10)]
        schedules = ", ".join(f'{{ interval = "1h", anchor = {a:%Y-%m-%dT%H:%M:%SZ} }}' for a in anchors)
        parts.append(f'[[deployments]]\nname = "d{d}"\ncommand = ["true"]\nschedules = [{schedules}]\n')
    return "".join(parts)


def bench_scale(dbs: Databases, backend: str, tmp: Path, sizes: list[int]) -> list[Figure]:
    figures = []
    for size in sizes:
        url = dbs.new(backend)
        path = tmp / f"scale-{backend}-{size}.toml"
        path.write_text(f'[database]\nurl = "{url}"\n[logging]\nlevel = "warning"\n' + _scale_config(size))
        began = time.perf_counter()
        child = subprocess.Popen(
            [str(BIN / "orchd-scheduler"), "--config", str(path), "--once"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak = 0.0
        while child.poll() is None:  # VmHWM: its peak RSS since exec (wait4's would count the fork)
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                peak = max(peak, rss_mb(child.pid, "VmHWM"))
            time.sleep(0.05)
        first = time.perf_counter() - began
        assert child.returncode == 0, "orchd-scheduler --once failed"
        figures.append(
            Figure(
                f"{size} schedules: start + first materialization",
                backend,
                "s",
                [first],
                "<= 60 s" if size == 100_000 else "",
                (lambda v: v <= 60) if size == 100_000 else None,
            )
        )
        figures.append(
            Figure(
                f"{size} schedules: scheduler peak RSS",
                backend,
                "MB",
                [peak],
                "<= 120 MB" if size == 100_000 else "",
                (lambda v: v <= 120) if size == 100_000 else None,
            )
        )
        # steady state: advance a clock by 1% of the hour, so 1% of the schedules come due
        config = load_config(path)
        store = store_for(url)
        clock = Clock(_now())
        scheduler = Scheduler(config, store, clock=clock)
        scheduler.tick()
        ticks = []
        for _ in range(5):
            clock.now += timedelta(seconds=36)
            began = time.perf_counter()
            scheduler.tick()
            ticks.append(time.perf_counter() - began)
        figures.append(
            Figure(
                f"{size} schedules: tick with 1% due",
                backend,
                "s",
                ticks,
                "<= 1 s" if size == 100_000 else "",
                (lambda v: v <= 1) if size == 100_000 else None,
            )
        )
        store.engine.dispose()
    return figures


# 5 ---------------------------------------------------------------------------------------------


def bench_idle(
    dbs: Databases, backend: str, tmp: Path, seconds: float, pg_admin: Callable[[str], int] | None
) -> list[Figure]:
    url = dbs.new(backend)
    path = tmp / f"idle-{backend}.toml"
    write_config(
        path,
        url,
        '[[deployments]]\nname = "hourly"\ncommand = ["true"]\nschedules = [{ cron = "0 * * * *" }]\n',
    )
    store = store_for(url)
    with daemons(tmp) as procs:
        sched = start(procs, tmp, "orchd-scheduler", "--config", str(path))
        worker = start(procs, tmp, "orchd-worker", "--config", str(path))
        wait_until(lambda: _leader(store), 30, "the scheduler")
        time.sleep(3)
        cpu0 = (cpu_seconds(sched.pid), cpu_seconds(worker.pid))
        tx0 = pg_admin(url) if pg_admin else 0
        time.sleep(seconds)
        cpu1 = (cpu_seconds(sched.pid), cpu_seconds(worker.pid))
        tx1 = pg_admin(url) if pg_admin else 0
        rss = (rss_mb(sched.pid), rss_mb(worker.pid))
    store.engine.dispose()
    per_minute = 60 / seconds
    figures = [
        Figure(
            "idle CPU, scheduler + worker",
            backend,
            "CPU-s/min",
            [(sum(cpu1) - sum(cpu0)) * per_minute],
            "<= 0.1 CPU-s/min",
            lambda v: v <= 0.1,
        ),
        Figure("idle CPU, scheduler alone", backend, "CPU-s/min", [(cpu1[0] - cpu0[0]) * per_minute]),
        Figure("idle CPU, worker alone", backend, "CPU-s/min", [(cpu1[1] - cpu0[1]) * per_minute]),
        Figure("idle RSS, scheduler", backend, "MB", [rss[0]], "<= 60 MB", lambda v: v <= 60),
        Figure("idle RSS, worker", backend, "MB", [rss[1]], "<= 60 MB", lambda v: v <= 60),
    ]
    if pg_admin:
        figures.append(
            Figure(
                "idle transactions, scheduler + worker", backend, "per min", [(tx1 - tx0 - 1) * per_minute]
            )
        )
    return figures


# 6 ---------------------------------------------------------------------------------------------


def _history(store: Store, count: int) -> None:
    """``count`` finished runs, inserted by the database itself."""
    long_ago = _now() - timedelta(days=1)
    with store.engine.begin() as conn:
        dep = conn.execute(select(deployments.c.id).where(deployments.c.name == "noop")).scalar_one()
        params = {"dep": dep, "n": count}
        if store.engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "INSERT INTO runs (deployment_id, pool, state, priority, scheduled_for, due_at, attempt, "
                    "max_attempts, parameters, finished_at, created_at, updated_at) "
                    "SELECT :dep, 'default', 'COMPLETED', 0, :t, :t, 1, 1, '{}', :t, :t, :t "
                    "FROM generate_series(1, :n)"
                ),
                {**params, "t": long_ago},
            )

        else:
            stamp = long_ago.replace(tzinfo=None).isoformat(sep=" ")
            conn.execute(
                text(
                    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
                    "INSERT INTO runs (deployment_id, pool, state, priority, scheduled_for, due_at, attempt, "
                    "max_attempts, parameters, finished_at, created_at, updated_at) "
                    "SELECT :dep, 'default', 'COMPLETED', 0, :t, :t, 1, 1, '{}', :t, :t, :t FROM s"
                ),
                {**params, "t": stamp},
            )
            conn.execute(text("ANALYZE"))


def _settle(store: Store) -> None:
    """After a bulk insert, let the database reach the steady state a long-lived table is in
    (statistics, visibility map, no checkpoint pending), so autovacuum does not compete with the
    claims being timed on a 2-core machine."""
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))


def bench_claim_vs_history(dbs: Databases, backend: str, tmp: Path, samples: int) -> list[Figure]:
    medians = {}
    for history in (1_000, 1_000_000):
        url = dbs.new(backend)
        config = write_config(tmp / f"history-{backend}.toml", url, NOOP)
        store = store_for(url)
        store.sync(config, _now())
        _history(store, history)
        _settle(store)
        timings = []
        for _ in range(samples):
            run_id = store.create_run("noop", _now())
            now = _now()
            began = time.perf_counter()
            claimed = store.claim("w", ["default"], 1, now, now + timedelta(minutes=1))
            timings.append((time.perf_counter() - began) * 1000)
            assert [c.id for c in claimed] == [run_id]
            store.finish(run_id, "w", RunState.FAILED, now, source=RunState.PENDING)
        medians[history] = percentile(timings, 50)
        store.engine.dispose()
    ratio = medians[1_000_000] / medians[1_000]
    return [
        Figure("claim latency, 1,000 finished runs", backend, "ms", [medians[1_000]]),
        Figure("claim latency, 1,000,000 finished runs", backend, "ms", [medians[1_000_000]]),
        Figure("claim latency ratio 1M / 1k history", backend, "x", [ratio], "<= 1.2", lambda v: v <= 1.2),
    ]


# 7 ---------------------------------------------------------------------------------------------


def bench_crash(dbs: Databases, backend: str, tmp: Path, lease: float) -> list[Figure]:
    url = dbs.new(backend)
    path = tmp / f"crash-{backend}.toml"
    config = write_config(
        path,
        url,
        f"""
    [worker]
    heartbeat = "1s"
    lease_timeout = "{lease}s"
    [[deployments]]
    name = "victim"
    command = ["sleep", "60"]
    retries = 1
    retry_delay = "0s"
    """,
    )
    store = store_for(url)
    store.sync(config, _now())
    run_id = store.create_run("victim", _now())
    with daemons(tmp) as procs:
        start(procs, tmp, "orchd-scheduler", "--config", str(path))
        worker = start(procs, tmp, "orchd-worker", "--config", str(path))
        wait_until(lambda: store.get_run(run_id).state == "RUNNING", 30, "RUNNING")
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: store.get_run(run_id).attempt == 2, 120, "the re-queue", interval=0.02)
        detected = time.monotonic() - killed
    store.engine.dispose()
    return [
        Figure(
            f"SIGKILLed worker -> CRASHED + re-queued (lease {lease:g}s)",
            backend,
            "s",
            [detected],
            "<= lease + 2 s",  # the scheduler's upkeep runs every 2 s
            lambda v: v <= lease + 2,
        )
    ]


#: The least any program built on the libraries DESIGN.md chose pays to answer from a database:
#: start Python, import SQLAlchemy and the backend's driver, connect, one query.
LIBRARY_FLOOR = (
    "import sys\n"
    "from sqlalchemy import create_engine, text\n"
    "with create_engine(sys.argv[1]).connect() as conn:\n"
    "    conn.execute(text('SELECT 1'))\n"
)


def bench_cli(dbs: Databases, backend: str, tmp: Path, repeats: int) -> list[Figure]:
    """How long a person waits for the CLI: --version and --help import no command (the same on
    either backend, measured once), a database command (`orchd run ls` of 50 runs) needs the
    config, SQLAlchemy and its driver.  Wall time of the whole process, as a shell sees it.

    Next to `run ls`, in turn with it (this machine kind's speed drifts by a third within
    minutes), the library floor: what SQLAlchemy and the driver alone take to start and answer,
    and `run ls`'s time above it, the part orchd's own code can change."""
    url = dbs.new(backend)
    config = write_config(tmp / f"cli-{backend}.toml", url, NOOP)
    store = store_for(url)
    store.sync(config, _now())
    for _ in range(50):
        store.create_run("noop", _now())
    store.engine.dispose()
    # as on a user's machine: byte code cached (a first run writes it), no ORCHD_* of ours
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ORCHD_") and k != "PYTHONDONTWRITEBYTECODE"
    }

    def timed(argv: list[str]) -> float:
        began = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - began

    def figure(name: str, samples: list[float], limit: float | None = None) -> Figure:
        if limit is None:
            return Figure(name, backend, "s", samples)
        return Figure(name, backend, "s", samples, f"<= {limit} s", lambda v: v <= limit)

    orchd = str(BIN / "orchd")
    figures = []
    if backend == "sqlite":
        for flag in ("--version", "--help"):
            timed([orchd, flag])
            figures.append(
                figure(f"orchd {flag}: start to exit", [timed([orchd, flag]) for _ in range(repeats)], 0.15)
            )
    ls = [orchd, "run", "ls", "--config", str(config.path)]
    floor = [str(BIN / "python"), "-c", LIBRARY_FLOOR, url]
    for argv in (ls, floor):  # a first run writes the byte code, as on a user's machine
        timed(argv)
    pairs = [(timed(floor), timed(ls)) for _ in range(repeats)]
    return [
        *figures,
        figure("orchd run ls: start to exit", [b for _, b in pairs], 0.3),
        figure("SQLAlchemy + driver: start, SELECT 1", [a for a, _ in pairs]),
        figure("orchd run ls above that floor", [b - a for a, b in pairs]),
    ]


def bench_containers(dbs: Databases, backend: str, tmp: Path, runs_each: int) -> list[Figure]:
    """A container run against a process run of the same `true`: time from RUNNING to finished at
    concurrency 1 (p50/p95), runs/s at concurrency 4, the worker's RSS while 8 containers run, and
    where a container run's time goes (the engine's commands timed alone)."""
    engine = images.podman_or_none()
    if engine is None:
        return []
    figures = []
    with images.built(engine, images.busybox_image, "bench-busybox") as image:
        boxed = (
            f'[[deployments]]\nname = "boxed"\nimage = "{image}"\ncommand = ["true"]\n'
            'container = { pull = "never", network = "none" }\n'
            f'[[deployments]]\nname = "sleeper"\nimage = "{image}"\ncommand = ["sleep", "5"]\n'
            'container = { pull = "never", network = "none" }\n'
        )
        for name, concurrency in (("noop", 1), ("boxed", 1), ("noop", 4), ("boxed", 4)):
            url = dbs.new(backend)
            path = tmp / f"containers-{backend}.toml"
            config = write_config(path, url, f"[worker]\nconcurrency = {concurrency}\n" + NOOP + boxed)
            store = store_for(url)
            store.sync(config, _now())
            for _ in range(runs_each):
                store.create_run(name, _now())
            with daemons(tmp) as procs:
                start(procs, tmp, "orchd-worker", "--config", str(path), "--burst").wait(timeout=600)
            rows = _runs(store, "COMPLETED")
            assert len(rows) == runs_each, f"{len(rows)} of {runs_each} completed"
            kind = "container" if name == "boxed" else "process"
            if concurrency == 1:
                spans = [(r.finished_at - r.started_at).total_seconds() * 1000 for r in rows]
                for q in (50, 95):
                    figures.append(
                        Figure(f"{kind} `true`: start to end, p{q}", backend, "ms", [percentile(spans, q)])
                    )
            else:
                span = (max(r.finished_at for r in rows) - min(r.started_at for r in rows)).total_seconds()
                figures.append(Figure(f"{kind} `true`, concurrency 4", backend, "runs/s", [runs_each / span]))
            store.engine.dispose()
        url = dbs.new(backend)
        path = tmp / f"containers-rss-{backend}.toml"
        config = write_config(path, url, "[worker]\nconcurrency = 8\n" + NOOP + boxed)
        store = store_for(url)
        store.sync(config, _now())
        ids = [store.create_run("sleeper", _now()) for _ in range(8)]
        with daemons(tmp) as procs:
            worker = start(procs, tmp, "orchd-worker", "--config", str(path), "--burst")
            wait_until(lambda: _count(store, "RUNNING") == 8, 60, "8 running containers")
            time.sleep(1.0)  # every client attached
            figures.append(Figure("worker RSS, 8 containers running", backend, "MB", [rss_mb(worker.pid)]))
            children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            clients = [  # not the guardian
                int(pid)
                for pid in children
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(engine.binary.encode())
            ]
            client_rss = sum(rss_mb(pid) for pid in clients if Path(f"/proc/{pid}").exists())
            figures.append(Figure("its 8 podman clients' RSS, summed", backend, "MB", [client_rss]))
            worker.wait(timeout=120)
        assert _count_done(store, set(ids)) == 8
        store.engine.dispose()
        if backend == "sqlite":  # the engine's own share, timed alone (no database involved)
            figures += _engine_costs(engine, image)
    return figures


def _engine_costs(engine: Any, image: str) -> list[Figure]:
    """Where a container run's time goes: the client's start, `run` of `true`, and the `rm` the
    worker does afterwards on a thread of its own (not on the run's path)."""

    def timed(*args: str) -> float:
        began = time.perf_counter()
        subprocess.run([engine.binary, *args], capture_output=True, check=False, timeout=60)
        return (time.perf_counter() - began) * 1000

    name = f"orchd-bench-{os.getpid()}"
    version, runs_, removes = [], [], []
    for i in range(10):
        version.append(timed("version", "--format", "{{.Client.Version}}"))
        argv = engine.run_argv(
            f"{name}-{i}",
            image,
            ["true"],
            ContainerConfig(pull="never", network="none"),
            labels={},
            env_names=(),
        )
        runs_.append(timed(*argv[1:]))
        removes.append(timed(*engine.remove_argv()[1:], f"{name}-{i}"))
    return [
        Figure("podman client start (`podman version`)", "-", "ms", version),
        Figure("`podman run` of `true` (create, start, attach, wait)", "-", "ms", runs_),
        Figure("`podman rm` afterwards (off the run's path)", "-", "ms", removes),
    ]


STEPS = (
    "latency",
    "throughput",
    "queue",
    "scale",
    "idle",
    "history",
    "crash",
    "cli",
    "containers",
    "web",
    "triggers",
    "notifications",
)


def run_step(
    name: str,
    dbs: Databases,
    backend: str,
    tmp: Path,
    quick: bool,
    transactions: Callable[[str], int] | None,
    settle: float,
) -> list[Figure]:
    if name == "latency":
        return bench_latency(dbs, backend, tmp, 1 if quick else 3, 5 if quick else 15)
    if name == "throughput":
        return bench_throughput(dbs, backend, tmp, 1 if quick else 3, 500 if quick else 2000)
    if name == "queue":
        return bench_queue_only(dbs, backend, tmp, 1 if quick else 3, 1000 if quick else 5000)
    if name == "scale":
        return bench_scale(dbs, backend, tmp, [1_000] if quick else [1_000, 10_000, 100_000])
    if name == "idle":
        return bench_idle(dbs, backend, tmp, 10 if quick else 60, transactions)
    if name == "history":
        return bench_claim_vs_history(dbs, backend, tmp, 50 if quick else 200)
    if name == "cli":
        return bench_cli(dbs, backend, tmp, 5 if quick else 20)
    if name == "containers":
        return bench_containers(dbs, backend, tmp, 10 if quick else 40)
    if name == "web":
        return bench_web(dbs, backend, tmp, quick, settle)
    if name == "triggers":
        return bench_triggers(dbs, backend, tmp, 1 if quick else 3, 20 if quick else 100)
    if name == "notifications":
        return bench_notifications(dbs, backend, tmp, quick)
    return bench_crash(dbs, backend, tmp, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help=" ".join(STEPS),
    )
    parser.add_argument("--backend", nargs="*", default=["postgresql", "sqlite"])
    parser.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="wait up to this many seconds for a quiet machine before each section (default 30)",
    )
    args = parser.parse_args()
    configure("warning")
    quick = args.quick
    chosen = set(args.only) or set(STEPS)
    figures: list[Figure] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="orchd-bench-") as tmp_name, postgres_server() as pg:
        tmp = Path(tmp_name)
        dbs = Databases(tmp, pg)
        meter = Meter(lambda: postmaster_pid(pg.data_dir))

        def transactions(url: str) -> int:
            name = url.rsplit("/", 1)[1]
            engine = store_for(pg.admin_url).engine
            with engine.connect() as conn:
                value = conn.execute(
                    text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
                    {"d": name},
                ).scalar_one()
            engine.dispose()
            return int(value)

        try:
            for backend in args.backend:
                for name in [n for n in STEPS if n in chosen]:
                    if not meter.settle(args.settle):
                        print(f"[bench] the machine stayed busy for {args.settle:.0f}s: going on", flush=True)
                    before = meter.begin()
                    step: list[Figure] = []
                    try:
                        step = run_step(
                            name,
                            dbs,
                            backend,
                            tmp,
                            quick,
                            transactions if backend == "postgresql" else None,
                            args.settle,
                        )
                    except Exception as exc:  # one broken step must not lose the other figures
                        failed.append(f"{name} on {backend}: {exc!r}")
                    section = meter.end(name, backend, before)
                    for figure in step:
                        if figure.quiet is None:  # a step may have judged a part of itself
                            figure.section, figure.quiet = name, section.quiet
                    figures += step
                    print(f"[bench] {section.line()}", flush=True)
        finally:
            dbs.drop_all()
    print(report(figures, meter.sections, RESULTS / "latest.json"))
    for failure in failed:
        print(f"[bench] FAILED {failure}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
