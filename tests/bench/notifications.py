"""Notification figures (`make bench`, step "notifications"): how soon a run's end reaches a local
webhook through real scheduler and worker processes, and how many events per second the outbox
matches against 20 rules."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select

from orchd.db.schema import deployments, event_cursors, notifications, run_states, runs
from orchd.notifications import CURSOR
from orchd.scheduler.notifications import rules_of
from tests.bench.common import (
    Databases,
    Figure,
    daemons,
    percentile,
    start,
    store_for,
    wait_until,
    write_config,
)
from tests.notify_support import http_receiver

RULES = 20


def bench_notifications(dbs: Databases, backend: str, tmp: Path, quick: bool) -> list[Figure]:
    return [*_latency(dbs, backend, tmp, 20 if quick else 100), *_matching(dbs, backend, tmp, quick)]


def _latency(dbs: Databases, backend: str, tmp: Path, count: int) -> list[Figure]:
    """Failed runs (an ad-hoc run of `false` every 100 ms), each told to a local webhook: the time
    from the run's end (finished_at) to the message's arrival, with the default 1 s tick."""
    url = dbs.new(backend)
    with http_receiver() as hook:
        config = write_config(
            tmp / f"notify-{backend}.toml",
            url,
            f"""
            [worker]
            concurrency = 8
            [[deployments]]
            name = "fails"
            command = ["false"]
            [[notifications]]
            name = "hook"
            on = ["FAILED"]
            webhook = "{hook.url}/"
            """,
        )
        store = store_for(url)
        path = str(config.path)
        with daemons(tmp) as procs:
            start(procs, tmp, "orchd-scheduler", "--config", path)
            wait_until(lambda: store.notification_cursor() is not None, 60, "the leader's first match")
            start(procs, tmp, "orchd-worker", "--config", path)
            for _ in range(count):
                store.create_run("fails", datetime.now(UTC))
                time.sleep(0.1)
            wait_until(lambda: len(hook.received) >= count, 60, "every message")
        finished = {r.id: r.finished_at for r in store.list_runs(limit=count * 2) if r.finished_at}
        store.engine.dispose()
        latencies = [
            (r.at - finished[body["run_id"]].timestamp()) * 1000
            for r, body in zip(hook.received, hook.bodies(), strict=True)
        ]
    target, check = ("<= 1000 ms", (lambda v: v <= 1000)) if backend == "postgresql" else ("", None)
    return [
        Figure("run end -> webhook p50", backend, "ms", [percentile(latencies, 50)], target, check),
        Figure("run end -> webhook p99", backend, "ms", [percentile(latencies, 99)]),
    ]


def _matching(dbs: Databases, backend: str, tmp: Path, quick: bool) -> list[Figure]:
    """20 deployments and 20 rules (globs, states; one in ten runs fails): the history of N runs
    (4 events each: created, claimed, started, ended) matched from the start of the log, in the
    passes the scheduler makes (500 events each, messages queued for the matches)."""
    runs_count = 1_000 if quick else 5_000
    url = dbs.new(backend)
    body = "".join(f'[[deployments]]\nname = "dep-{i:02d}"\ncommand = ["true"]\n' for i in range(RULES))
    body += "".join(
        f'[[notifications]]\nname = "rule-{i:02d}"\non = ["FAILED", "CRASHED", "TIMED_OUT", "RECOVERED"]\n'
        f'deployments = ["dep-{i:02d}", "other-*"]\ncommand = ["true"]\n'
        for i in range(RULES)
    )
    config = write_config(tmp / f"matching-{backend}.toml", url, body)
    store = store_for(url)
    now = datetime.now(UTC)
    store.sync(config, now)
    _history(store, runs_count, now)
    rules = [rules_of(n, {}) for n in config.notifications]
    samples = []
    for _ in range(1 if quick else 3):
        with store.engine.begin() as conn:  # from the start of the log again, an empty outbox
            conn.execute(delete(event_cursors))
            conn.execute(insert(event_cursors).values(name=CURSOR, position=0, gaps=[], updated_at=now))
            conn.execute(delete(notifications))
        began, events, queued = time.perf_counter(), 0, 0
        while (report := store.match_events(rules, now)).events:
            events, queued = events + report.events, queued + report.queued
        samples.append(events / (time.perf_counter() - began))
    store.engine.dispose()
    return [
        Figure(
            f"matching, {RULES} rules ({queued} of {events} events told)",
            backend,
            "events/s",
            samples,
            ">= 2000/s",
            lambda v: v >= 2000,
        )
    ]


def _history(store, count: int, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """``count`` finished runs spread over the 20 deployments, each with its 4 history rows."""
    with store.engine.begin() as conn:
        ids = dict(conn.execute(select(deployments.c.name, deployments.c.id)).all())
        for start_at in range(0, count, 1000):
            batch = range(start_at, min(count, start_at + 1000))
            rows = [
                {
                    "deployment_id": ids[f"dep-{i % RULES:02d}"],
                    "pool": "default",
                    "state": "FAILED" if i % 10 == 0 else "COMPLETED",
                    "priority": 0,
                    "scheduled_for": now - timedelta(seconds=count - i),
                    "due_at": now,
                    "attempt": 1,
                    "max_attempts": 1,
                    "parameters": {},
                    "exit_code": 1 if i % 10 == 0 else 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in batch
            ]
            run_ids = [r.id for r in conn.execute(insert(runs).returning(runs.c.id), rows)]
            steps = [(None, "SCHEDULED"), ("SCHEDULED", "PENDING"), ("PENDING", "RUNNING")]
            conn.execute(
                insert(run_states),
                [
                    {"run_id": rid, "from_state": a, "to_state": b, "attempt": 1, "at": now, "actor": "bench"}
                    for rid, row in zip(run_ids, rows, strict=True)
                    for a, b in [*steps, ("RUNNING", row["state"])]
                ],
            )
