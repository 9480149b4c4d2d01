"""Run chains (`make bench`, step "triggers"): how soon a triggered run starts after the run it
follows ended.  The downstream run is created in the transaction that records the upstream's end,
so the figure is that commit, the wake-up of a worker, its claim, the spawn and the start's
record.  Two layouts: one worker serves both deployments (it claims the downstream run in the
loop turn that recorded the upstream's end), and the downstream in a pool of its own served by
another worker (woken by NOTIFY on PostgreSQL, a wake-up datagram on SQLite).

Real parts: orchd-worker processes, ad-hoc upstream runs created one at a time (so each
measures an idle worker's reaction, not a queue), times taken from the database (upstream
``finished_at`` and downstream ``started_at`` are each the recording process's clock: one host,
one clock).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from orchd.db.schema import runs
from orchd.db.store import Store
from tests import test_triggers
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

CHAIN = "[worker]\nconcurrency = 4\n" + test_triggers.CHAIN
#: The same chain with the downstream deployment in a pool of its own.
SPLIT = CHAIN.replace('name = "load"\n', 'name = "load"\n    pool = "down"\n')


def _downstream_started(store: Store, upstream: int) -> bool:
    with store.read() as conn:
        return (
            conn.execute(
                select(runs.c.started_at).where(
                    runs.c.upstream_run_id == upstream, runs.c.state == "COMPLETED"
                )
            ).scalar()
            is not None
        )


def _latencies(store: Store, upstreams: list[int]) -> tuple[list[float], list[float]]:
    """Milliseconds from each upstream run's recorded end to its downstream run's claim, and to
    its recorded start (the claim, the spawn of its process and the record of it)."""
    up = runs.alias("up")
    with store.read() as conn:
        rows = conn.execute(
            select(up.c.finished_at, runs.c.claimed_at, runs.c.started_at)
            .join(up, up.c.id == runs.c.upstream_run_id)
            .where(up.c.id.in_(upstreams))
        ).all()
    claimed = [(r.claimed_at - r.finished_at).total_seconds() * 1000 for r in rows]
    return claimed, [(r.started_at - r.finished_at).total_seconds() * 1000 for r in rows]


def _measure(
    dbs: Databases, backend: str, tmp: Path, body: str, pools: list[str], chains: int
) -> list[float]:
    """``chains`` chains, one at a time, with one worker per entry of ``pools``; the
    (end -> claim, end -> start) latencies of each chain, in ms."""
    url = dbs.new(backend)
    path = tmp / f"triggers-{backend}.toml"
    config = write_config(path, url, body)
    store = store_for(url)
    store.sync(config, datetime.now(UTC))
    with daemons(tmp) as procs:
        for pool in pools:
            start(procs, tmp, "orchd-worker", "--config", str(path), "--pool", pool)
        upstreams = []
        for _ in range(chains):
            upstream = store.create_run("extract", datetime.now(UTC))
            upstreams.append(upstream)
            wait_until(lambda: _downstream_started(store, upstream), 30, "the downstream run")  # noqa: B023
            time.sleep(0.05)  # an idle worker again, not one still recording
    claimed, started = _latencies(store, upstreams)
    store.engine.dispose()
    assert len(started) == chains, f"{len(started)} of {chains} chains have a downstream run"
    return claimed, started


def bench_triggers(dbs: Databases, backend: str, tmp: Path, repeats: int, chains: int) -> list[Figure]:
    figures = []
    layouts = (("one worker", CHAIN, ["default"]), ("another worker", SPLIT, ["default", "down"]))
    for label, body, pools in layouts:
        p50s, p99s, claims = [], [], []
        for _ in range(repeats):
            claimed, started = _measure(dbs, backend, tmp, body, pools, chains)
            claims.append(percentile(claimed, 50))
            p50s.append(percentile(started, 50))
            p99s.append(percentile(started, 99))
        target = backend == "postgresql"
        figures += [
            Figure(
                f"trigger latency p50, {label} (upstream end -> downstream start)",
                backend,
                "ms",
                p50s,
                "<= 50 ms" if target else "",
                (lambda v: v <= 50) if target else None,
            ),
            Figure(f"trigger latency p99, {label}", backend, "ms", p99s),
            Figure(f"trigger latency p50, {label}: end -> claim", backend, "ms", claims),
        ]
    return figures
